"""The decode attention kernel with its mask read one block ahead, against reading it in its block.

    python bench/gpu_attention_mask.py [--out $OUT/attention_mask.json]    # on the GPU machine

Nsight Compute (bench/gpu_counters.py, docs/benchmarks.md call 75) found a fifth of the attention
kernel's warp samples on one instruction: the conversion of the additive mask's block, read with
2-byte loads that Triton's pipeline does not copy ahead, so every block waited for its own.
`fused_decode.rope_attention` now reads each block's mask during the block before
(`mask_ahead`, the default). Here both forms run side by side in one process, 28 layers' caches at
batch 128 in one CUDA graph each (`trainer.triton_products._graph_ms`, 30 replays), ms a step, at
three fills of the rollout's attention buckets, each form timed twice in alternation (A B A B);
their outputs are compared bit for bit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from gpu_attention_rows import BATCH, CAP, LAYERS, setup
from gpu_common import write_json

from trainer.fused_decode import rope_attention
from trainer.qwen2_decode import ModelDims
from trainer.triton_products import _graph_ms

FILLS = ((384, 383), (256, 255), (192, 160))


def measure(dims: ModelDims, kv: int, filled: int) -> dict:
    state, qkv, bias = setup(torch.device("cuda"), LAYERS, BATCH, CAP, dims, filled, kv)
    caches = [state.kv_cache[i] for i in range(LAYERS)]

    def form(ahead: bool):
        return lambda: [rope_attention(dims, qkv, state, c, bias, kv, mask_ahead=ahead) for c in caches]

    start = caches[0].clone()
    outs = {}
    for ahead in (True, False):
        caches[0].copy_(start)
        outs[ahead] = rope_attention(dims, qkv, state, caches[0], bias, kv, mask_ahead=ahead)
    row = {"kv": kv, "filled": filled, "bitwise_equal": bool(torch.equal(outs[True], outs[False]))}
    for turn in (1, 2):
        for ahead in (False, True):
            row[f"{'ahead' if ahead else 'in_block'}_ms_{turn}"] = _graph_ms(form(ahead), replays=30)
    best = {k: min(row[f"{k}_ms_1"], row[f"{k}_ms_2"]) for k in ("ahead", "in_block")}
    row["ratio"] = best["ahead"] / best["in_block"]
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    dims = ModelDims(layers=LAYERS, hidden=1536, heads=12, kv_heads=2, head_dim=128, intermediate=8960,
                     vocab=151936, eps=1e-6, rope_theta=1e6)
    found = {"device": torch.cuda.get_device_name(), "fills": [measure(dims, kv, filled) for kv, filled in FILLS]}
    if args.out:
        write_json(args.out, found)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
