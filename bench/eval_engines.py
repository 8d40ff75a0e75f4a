"""Evaluating K checkpoints in batches of 32 prompts when the count is not a multiple of 32: the
decode engine of the other batch size kept (trainer.fast_generation.KEPT_ENGINES = 1, the default)
against one engine a model (0, as before: every checkpoint built an engine for 32 and one for the
rest, each timing, checking and capturing its steps again).

Usage:
    python bench/eval_engines.py --qwen-shape [--k 4] [--prompts 70] [--new-tokens 64] [--out DIR]   # a GPU
    python bench/eval_engines.py --model tiny [--k 3] [--prompts 40] [--new-tokens 16]             # a CPU: plumbing

Both sides run in this one process, one after the other from no engine, each the evaluator's own
way (evaluator.adapters.AdapterSwitcher hot-swaps the K adapters into one base; batches of
`--batch-size` as evaluator.scoring does, greedy), and must give the same completions. Printed:
each side's time per checkpoint, the engines each built, the ratio of their totals, the completions
that differ per checkpoint and, on a GPU, the decode step each engine chose (a checkpoint whose
engines chose another step than the kept one may differ by rounding near ties).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from eval_swap import base_model, emit, evaluate_each, make_adapters, steps_chosen  # noqa: E402
from evaluator.adapters import AdapterSwitcher  # noqa: E402
from trainer import fast_generation  # noqa: E402
from trainer.data import arith_split, build_prompt  # noqa: E402
from trainer.modeling import load_model_and_tokenizer, load_tokenizer  # noqa: E402
from trainer.triton_base import decode_repeatably  # noqa: E402


def run_side(kept: int, base: Path, adapters: list[Path], prompts: list[str], batch: int, new_tokens: int,
             device: str, dtype) -> tuple[dict, list[list[str]]]:
    fast_generation.release_engines()
    fast_generation.KEPT_ENGINES = kept
    built = []
    real_init = fast_generation.DecodeEngine.__init__

    def counted(self, *args, **kwargs):
        built.append(args[1].batch if len(args) > 1 else kwargs["key"].batch)
        real_init(self, *args, **kwargs)

    fast_generation.DecodeEngine.__init__ = counted
    try:
        with steps_chosen() as chosen:
            model, tokenizer = load_model_and_tokenizer(base, device, dtype)
            switcher = AdapterSwitcher(model, base, device)
            per_checkpoint, texts, steps = evaluate_each(switcher, adapters, tokenizer, prompts, batch, new_tokens,
                                                         device, chosen)
            del switcher, model
    finally:
        fast_generation.DecodeEngine.__init__ = real_init
        fast_generation.release_engines()
        fast_generation.KEPT_ENGINES = 1
    return {"kept_engines": kept, "seconds_per_checkpoint": per_checkpoint,
            "total_s": round(sum(per_checkpoint), 3), "engines_built_for_batches": built,
            # per checkpoint, `batch:step` for each decode step chosen (timed fastest and kept)
            # while it was evaluated: none on a CPU, none on the kept side after its first
            "steps_chosen_per_checkpoint": steps}, texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--model", choices=["tiny"])
    group.add_argument("--qwen-shape", action="store_true")
    parser.add_argument("--k", type=int, default=None, help="checkpoints (default 4 Qwen-shaped, 3 tiny)")
    parser.add_argument("--prompts", type=int, default=None, help="default 70 (2 x 32 + 6), tiny 40")
    parser.add_argument("--batch-size", type=int, default=32, help="the evaluator's default")
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--root", default=None, help="localfs root whose models/tiny is reused or built")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    repeatable = decode_repeatably()  # as evaluator.eval_batch (RLTUI_DECODE_REPEATABLE=0: timed, as before)
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    work = Path(tempfile.mkdtemp(prefix="eval_engines."))
    try:
        base, warmstart, dtype = base_model(args.qwen_shape, args.root, work, device)
        k, n_prompts, new_tokens = ((args.k or 4, args.prompts or 70, args.new_tokens or 64) if args.qwen_shape
                                    else (args.k or 3, args.prompts or 40, args.new_tokens or 16))
        adapters = make_adapters(base, work / "adapters", k, device, dtype, warmstart)
        tokenizer = load_tokenizer(base)
        prompts = [build_prompt(tokenizer, e.question, "r1_template") for e in arith_split("test")[:n_prompts]]
        sides = [run_side(kept, base, adapters, prompts, args.batch_size, new_tokens, device, dtype)
                 for kept in (0, 1)]
        (one, one_texts), (kept, kept_texts) = sides
        result = {
            "model": "qwen2.5-1.5b-shape (random, bf16)" if args.qwen_shape else "tiny",
            "device": torch.cuda.get_device_name(0) if device != "cpu" else f"cpu ({os.cpu_count()} cores)",
            "torch": torch.__version__, "k": k, "prompts": n_prompts, "batch_size": args.batch_size,
            "new_tokens": new_tokens, "repeatable_decoding": repeatable, "one_engine": one, "kept": kept,
            "ratio_one_over_kept": round(one["total_s"] / kept["total_s"], 2),
            "same_completions": one_texts == kept_texts,
            # per checkpoint, how many completions differ (a near-tie flipped by another step's
            # rounding shows as a few; a stale adapter as most of a checkpoint's)
            "differing_completions": [sum(a != b for a, b in zip(x, y)) for x, y in zip(one_texts, kept_texts)],
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    emit(result, args.out, "eval_engines.json")
    print(f"{result['model']} on {result['device']}: {k} checkpoints x {n_prompts} prompts in batches of "
          f"{args.batch_size}: one engine a model {one['total_s']:.2f} s ({len(one['engines_built_for_batches'])} "
          f"engines built), the other size's kept {kept['total_s']:.2f} s ({len(kept['engines_built_for_batches'])}) "
          f"-> {result['ratio_one_over_kept']}x (same completions: {result['same_completions']}; differing "
          f"per checkpoint: {result['differing_completions']})")
    for name, side in (("one engine a model", one), ("kept", kept)):
        print(f"  steps chosen per checkpoint, {name}: {side['steps_chosen_per_checkpoint']}")
    return 0 if result["same_completions"] else 1


if __name__ == "__main__":
    sys.exit(main())
