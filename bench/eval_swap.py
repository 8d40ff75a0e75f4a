"""Evaluating K checkpoints: one base load + adapter swaps against reloading the base for each.

Usage:
    python bench/eval_swap.py --model tiny [--root ROOT] [--k 5] [--prompts 32] [--new-tokens 16]
    python bench/eval_swap.py --qwen-shape [--k 5] [--prompts 64] [--new-tokens 64] [--out DIR]
        [--generate auto|plain]

The swap side is exactly the evaluator's (evaluator.adapters.AdapterSwitcher: the first adapter
loaded by peft, the next ones hot-swapped into the same LoRA layers). Both strategies run in this one process, side by side, on the same K adapters and prompts, and
must give the same completions; the ratio of their wall times is printed. `--model tiny` uses
the built-in tiny model on the CPU; `--qwen-shape` builds a randomly initialised model of
Qwen2.5-1.5B's dimensions (bf16 on a GPU) with K random LoRA adapters (r=16, all linear layers).
Results are printed and, with --out, written to DIR/eval_swap.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from evaluator.adapters import AdapterSwitcher  # noqa: E402
from rltui.runs.localfs import resolve_root  # noqa: E402
from trainer.data import arith_split, build_prompt  # noqa: E402
from trainer.fast_generation import fast_or_plain  # noqa: E402
from trainer.generation import generate  # noqa: E402
from trainer.modeling import (  # noqa: E402
    load_adapter,
    load_model_and_tokenizer,
    load_tokenizer,
)

QWEN_1_5B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                 rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def evaluate_each(switcher, adapters: list[Path], tokenizer, prompts: list[str], batch: int, new_tokens: int,
                  device: str, chosen: list[str]) -> tuple[list[float], list[list[str]], list[list[str]]]:
    """Each adapter hot-swapped in (`switcher`: evaluator.adapters.AdapterSwitcher) and its greedy
    completions in batches of `batch`, as evaluator.scoring runs them on trainer.fast_generation
    (what fast_or_plain gives the evaluator on a GPU; also on a CPU here): per adapter the
    seconds, the completions and the decode steps chosen meanwhile (`chosen`: steps_chosen's)."""
    from trainer import fast_generation

    seconds, texts, steps = [], [], []
    for adapter in adapters:
        first_choice = len(chosen)
        model = switcher.activate(adapter)
        sync(device)
        started = time.perf_counter()
        done: list[str] = []
        for first in range(0, len(prompts), batch):
            out = fast_generation.generate(model, tokenizer, prompts[first:first + batch],
                                           max_new_tokens=new_tokens, do_sample=False, stop_at_eos=False)
            done += out.texts
        sync(device)
        seconds.append(round(time.perf_counter() - started, 3))
        texts.append(done)
        steps.append(chosen[first_choice:])
    return seconds, texts, steps


@contextlib.contextmanager
def steps_chosen():
    """Inside, each decode step choice (on a GPU, trainer.decode_graphs.choose_step as
    fast_generation calls it) is appended to the yielded list as `batch:step kept`."""
    from trainer import fast_generation

    chosen: list[str] = []
    real_choose = fast_generation.choose_step

    def choose(engine, kv_len):
        graph = real_choose(engine, kv_len)
        chosen.append(f"{engine.key.batch}:{engine.fused_timing.get('chosen', '?')}")
        return graph

    fast_generation.choose_step = choose
    try:
        yield chosen
    finally:
        fast_generation.choose_step = real_choose


def make_adapters(base: Path, out: Path, k: int, device: str, dtype, warmstart: Path | None) -> list[Path]:
    """K real peft adapters that differ: random LoRA B matrices (or noise on a warm start)."""
    from peft import LoraConfig, get_peft_model

    model, _ = load_model_and_tokenizer(base, device, dtype)
    if warmstart is not None:
        model = load_adapter(model, warmstart, is_trainable=True)
    else:
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    original = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    paths = []
    for i in range(k):
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in original:
                    noise = torch.randn(p.shape, generator=gen).to(p.device, p.dtype)
                    p.copy_(original[name] + (0.02 if warmstart else 0.01) * noise)
        paths.append(out / f"step_{i + 1}")
        model.save_pretrained(paths[-1])
    del model
    return paths


def evaluate(model, tokenizer, prompts: list[str], new_tokens: int, device: str,
             plain: bool) -> list[str]:
    gen = generate if plain else fast_or_plain(model)
    out = gen(model, tokenizer, prompts, max_new_tokens=new_tokens, do_sample=False,
              stop_at_eos=False)
    sync(device)
    return out.texts


def run_swap(base: Path, adapters: list[Path], prompts, new_tokens, device, dtype,
             plain: bool) -> tuple[dict, list]:
    """What the evaluator does: one base load, then evaluator.adapters.AdapterSwitcher."""
    times = {"base_load": 0.0, "adapter_load": 0.0, "generate": 0.0, "unload": 0.0}
    started = time.perf_counter()
    t = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(base, device, dtype)
    switcher = AdapterSwitcher(model, base, device)
    sync(device)
    times["base_load"] += time.perf_counter() - t
    texts = []
    for adapter in adapters:
        t = time.perf_counter()
        peft_model = switcher.activate(adapter)
        sync(device)
        times["adapter_load"] += time.perf_counter() - t
        t = time.perf_counter()
        texts.append(evaluate(peft_model, tokenizer, prompts, new_tokens, device, plain))
        times["generate"] += time.perf_counter() - t
    t = time.perf_counter()
    switcher.base()
    sync(device)
    times["unload"] += time.perf_counter() - t
    times["total"] = time.perf_counter() - started
    times["hotswaps"] = switcher.hotswaps
    del switcher, model
    return times, texts


def run_reload(base: Path, adapters: list[Path], prompts, new_tokens, device, dtype,
               plain: bool) -> tuple[dict, list]:
    times = {"base_load": 0.0, "adapter_load": 0.0, "generate": 0.0, "unload": 0.0}
    started = time.perf_counter()
    texts = []
    for adapter in adapters:
        t = time.perf_counter()
        model, tokenizer = load_model_and_tokenizer(base, device, dtype)
        sync(device)
        times["base_load"] += time.perf_counter() - t
        t = time.perf_counter()
        peft_model = load_adapter(model, adapter, adapter_name=adapter.name)
        sync(device)
        times["adapter_load"] += time.perf_counter() - t
        t = time.perf_counter()
        texts.append(evaluate(peft_model, tokenizer, prompts, new_tokens, device, plain))
        times["generate"] += time.perf_counter() - t
        del peft_model, model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    times["total"] = time.perf_counter() - started
    return times, texts


def _load_cost(times: dict) -> float:
    """Everything but generation: what the strategies differ in."""
    return times["base_load"] + times["adapter_load"] + times["unload"]


def build_qwen_shape(folder: Path, device: str) -> Path:
    """A random bf16 model of Qwen2.5-1.5B's dimensions with the tiny tokenizer (ids fit its vocab)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from trainer.tiny import TinySettings, build_tokenizer

    tokenizer = build_tokenizer(TinySettings())
    config = Qwen2Config(**QWEN_1_5B, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    return folder


def base_model(qwen_shape: bool, root: str | None, work: Path, device: str) -> tuple[Path, Path | None, torch.dtype]:
    """(base folder, warm-start adapter or None, dtype): a random Qwen2.5-1.5B-shaped model built
    in `work`, or the built-in tiny model with its warm start (reused from ROOT/models/tiny)."""
    if qwen_shape:
        return build_qwen_shape(work / "base", device), None, torch.bfloat16 if device != "cpu" else torch.float32
    from trainer.tiny import ensure_tiny

    paths = ensure_tiny(resolve_root(root))
    return paths.base, paths.warmstart, torch.float32


def emit(result: dict, out: Path | None, name: str) -> None:
    """Print the result as JSON, and write it to OUT/NAME with --out."""
    print(json.dumps(result, indent=2))
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(json.dumps(result, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--model", choices=["tiny"])
    group.add_argument("--qwen-shape", action="store_true")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=None)
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--generate", choices=["auto", "plain"], default="auto",
                        help="auto: what the evaluator uses (fast CUDA-graph decode on a GPU); plain")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="run both strategies this many times, interleaved; the best of each counts")
    parser.add_argument("--root", default=None,
                        help="localfs root whose models/tiny is reused or built (default: $LOCALFS_ROOT, else ~/localfs)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    work = Path(tempfile.mkdtemp(prefix="eval_swap."))
    try:
        t = time.perf_counter()
        base, warmstart, dtype = base_model(args.qwen_shape, args.root, work, device)
        n_prompts = args.prompts or (64 if args.qwen_shape else 32)
        new_tokens = args.new_tokens or (64 if args.qwen_shape else 16)
        adapters = make_adapters(base, work / "adapters", args.k, device, dtype, warmstart)
        setup = time.perf_counter() - t
        tokenizer = load_tokenizer(base)
        prompts = [build_prompt(tokenizer, e.question, "r1_template") for e in arith_split("test")[:n_prompts]]
        load_model_and_tokenizer(base, "cpu", dtype)  # warm the page cache for both strategies alike
        reload_runs, swap_runs = [], []
        for _ in range(args.repeat):
            plain = args.generate == "plain"
            reload_runs.append(run_reload(base, adapters, prompts, new_tokens, device, dtype, plain))
            swap_runs.append(run_swap(base, adapters, prompts, new_tokens, device, dtype, plain))
        reload_times, reload_texts = min(reload_runs, key=lambda r: r[0]["total"])
        swap_times, swap_texts = min(swap_runs, key=lambda r: r[0]["total"])
        result = {
            "model": "qwen2.5-1.5b-shape (random, bf16)" if args.qwen_shape else "tiny",
            "device": torch.cuda.get_device_name(0) if device != "cpu" else f"cpu ({os.cpu_count()} cores)",
            "python": platform.python_version(), "torch": torch.__version__, "k": args.k,
            "prompts": n_prompts, "new_tokens": new_tokens, "repeat": args.repeat,
            "generate": args.generate, "setup_s": round(setup, 1),
            "reload": {k: round(v, 3) for k, v in reload_times.items()},
            "swap": {k: round(v, 3) for k, v in swap_times.items()},
            "ratio_reload_over_swap": round(reload_times["total"] / swap_times["total"], 2),
            "load_ratio_reload_over_swap": round(_load_cost(reload_times) / _load_cost(swap_times), 2),
            "same_completions": reload_texts == swap_texts,
            "same_per_checkpoint": [r == w for r, w in zip(reload_texts, swap_texts)],
            "same_fraction_per_checkpoint": [
                round(sum(a == b for a, b in zip(r, w)) / len(r), 3) for r, w in zip(reload_texts, swap_texts)],
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    emit(result, args.out, "eval_swap.json")
    print(f"{result['model']} on {result['device']}: K={args.k} checkpoints, "
          f"reload base each time {reload_times['total']:.2f}s vs one load + swaps "
          f"{swap_times['total']:.2f}s -> {result['ratio_reload_over_swap']}x "
          f"(loading alone: {result['load_ratio_reload_over_swap']}x) "
          f"(same completions: {result['same_completions']})")
    return 0 if result["same_completions"] else 1


if __name__ == "__main__":
    sys.exit(main())
