"""Two evaluations of the same checkpoints, each in its own process with its own empty compile
caches (as on two machines of one card kind): do they give the same completions? Once with the
decode step, product shapes and attention configuration picked by timing (the trainer's way),
once with repeatable decoding (the evaluator's, trainer.triton_base.repeatable: nothing picked by
timing), and what each costs a checkpoint.

Usage:
    python bench/eval_repeat.py --qwen-shape [--k 3] [--prompts 70] [--new-tokens 64] [--out DIR]  # a GPU
    python bench/eval_repeat.py --model tiny [--k 2] [--prompts 34] [--new-tokens 8]                # a CPU: plumbing

The four processes run one after another, the two ways interleaved (timed, repeatable, timed,
repeatable). Each loads the base once and hot-swaps the K adapters into it (evaluator.adapters),
prompts in batches of `--batch-size`, greedy, as evaluator.scoring does. Printed per way: the
completions that differ between its two processes per checkpoint, the decode step each process
kept, and the seconds per checkpoint (the first carries the warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

WAYS = ("timed", "repeatable")


def child(args: argparse.Namespace) -> int:
    """One evaluation of every adapter, its completions and times written to `args.result`."""
    if args.child == "repeatable":
        from trainer.triton_base import decode_repeatably

        decode_repeatably()  # what evaluator.eval_batch does at its start
    import torch
    from eval_swap import evaluate_each, steps_chosen

    from evaluator.adapters import AdapterSwitcher
    from trainer.modeling import load_model_and_tokenizer

    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device != "cpu" and args.qwen_shape else torch.float32
    started = time.perf_counter()
    with steps_chosen() as chosen:
        model, tokenizer = load_model_and_tokenizer(Path(args.base), device, dtype)
        switcher = AdapterSwitcher(model, Path(args.base), device)
        prompts = json.loads(Path(args.prompts_file).read_text())
        adapters = [Path(a) for a in args.adapters.split(",")]
        seconds, texts, _ = evaluate_each(switcher, adapters, tokenizer, prompts, args.batch_size, args.new_tokens,
                                          device, chosen)
    Path(args.result).write_text(json.dumps({
        "way": args.child, "seconds_per_checkpoint": seconds, "texts": texts, "steps_chosen": chosen,
        "process_s": round(time.perf_counter() - started, 1)}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--model", choices=["tiny"])
    group.add_argument("--qwen-shape", action="store_true")
    parser.add_argument("--k", type=int, default=None, help="checkpoints (default 3 Qwen-shaped, 2 tiny)")
    parser.add_argument("--prompts", type=int, default=None, help="default 70 (2 x 32 + 6), tiny 34")
    parser.add_argument("--batch-size", type=int, default=32, help="the evaluator's default")
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--root", default=None, help="localfs root whose models/tiny is reused or built")
    parser.add_argument("--timeout-s", type=float, default=240.0, help="per process")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--adapters", help=argparse.SUPPRESS)
    parser.add_argument("--prompts-file", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    k, n_prompts, new_tokens = ((args.k or 3, args.prompts or 70, args.new_tokens or 64) if args.qwen_shape
                                else (args.k or 2, args.prompts or 34, args.new_tokens or 8))
    args.new_tokens = new_tokens
    if args.child:
        return child(args)

    import torch
    from eval_swap import base_model, emit, make_adapters

    from trainer.data import arith_split, build_prompt
    from trainer.modeling import load_tokenizer

    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    work = Path(tempfile.mkdtemp(prefix="eval_repeat."))
    try:
        base, warmstart, dtype = base_model(args.qwen_shape, args.root, work, device)
        adapters = make_adapters(base, work / "adapters", k, device, dtype, warmstart)
        tokenizer = load_tokenizer(base)
        prompts = [build_prompt(tokenizer, e.question, "r1_template") for e in arith_split("test")[:n_prompts]]
        (work / "prompts.json").write_text(json.dumps(prompts))
        del tokenizer
        runs: dict[str, list[dict]] = {way: [] for way in WAYS}
        for attempt in range(2):
            for way in WAYS:
                caches = work / f"caches_{way}_{attempt}"  # empty: as on another machine
                env = os.environ | {"TRITON_CACHE_DIR": str(caches / "triton"),
                                    "TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor"),
                                    "RLTUI_DECODE_REPEATABLE": "1" if way == "repeatable" else "0"}
                result = work / f"{way}_{attempt}.json"
                cmd = [sys.executable, __file__, "--qwen-shape" if args.qwen_shape else "--model=tiny",
                       f"--k={k}", f"--batch-size={args.batch_size}", f"--new-tokens={new_tokens}",
                       f"--child={way}", f"--base={base}", f"--adapters={','.join(map(str, adapters))}",
                       f"--prompts-file={work / 'prompts.json'}", f"--result={result}"]
                done = subprocess.run(cmd, env=env, timeout=args.timeout_s, check=False)
                if done.returncode != 0:
                    print(f"eval_repeat: the {way} process {attempt + 1} ended with {done.returncode}", flush=True)
                    return 1
                runs[way].append(json.loads(result.read_text()))
                print(f"[eval_repeat] {way} {attempt + 1}: {runs[way][-1]['seconds_per_checkpoint']} s per "
                      f"checkpoint, steps {runs[way][-1]['steps_chosen']}", flush=True)
        result = {
            "model": "qwen2.5-1.5b-shape (random, bf16)" if args.qwen_shape else "tiny",
            "device": torch.cuda.get_device_name(0) if device != "cpu" else f"cpu ({os.cpu_count()} cores)",
            "torch": torch.__version__, "k": k, "prompts": n_prompts, "batch_size": args.batch_size,
            "new_tokens": new_tokens,
        }
        for way, (one, two) in runs.items():
            result[way] = {
                "differing_completions": [sum(a != b for a, b in zip(x, y)) for x, y in zip(one["texts"], two["texts"])],
                "seconds_per_checkpoint": [one["seconds_per_checkpoint"], two["seconds_per_checkpoint"]],
                "steps_chosen": [one["steps_chosen"], two["steps_chosen"]],
                "process_s": [one["process_s"], two["process_s"]],
            }
        after_first = {way: [s for run in result[way]["seconds_per_checkpoint"] for s in run[1:]] for way in WAYS}
        if all(after_first.values()):
            means = {way: sum(v) / len(v) for way, v in after_first.items()}
            result["repeatable_over_timed_after_first"] = round(means["repeatable"] / means["timed"], 3)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    emit(result, args.out, "eval_repeat.json")
    for way in WAYS:
        print(f"{way}: differing completions per checkpoint between its two processes "
              f"{result[way]['differing_completions']} of {n_prompts}; s per checkpoint "
              f"{result[way]['seconds_per_checkpoint']}; steps {result[way]['steps_chosen']}")
    if "repeatable_over_timed_after_first" in result:
        print(f"repeatable / timed, s per checkpoint after the first: {result['repeatable_over_timed_after_first']}")
    return 0 if not any(result["repeatable"]["differing_completions"]) else 1


if __name__ == "__main__":
    sys.exit(main())
