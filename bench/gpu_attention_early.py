"""The decode attention kernel (fused_decode.rope_attention) with its first block's loads issued
before the new token's (EARLY, RLTUI_DECODE_ATTENTION_EARLY=1) against the kernel as it runs in
the step, 28 layers' caches at batch 128 in one graph, per launch configuration and fill.

    python bench/gpu_attention_early.py [--out $OUT/attention_early.json]    # on the GPU machine

The step's kernel loads the new token's q, key and value (the q/k/v product's output, from L2),
applies RoPE, writes the key and value into the cache and only then starts its loop, whose
first loads must follow that write: the first block's keys and values (from memory) wait for a
round trip to L2 and the RoPE. With EARLY the first block is loaded at the kernel's start, beside
the new token's loads, and the cache is written after the loop (which never reads the new slot).
Same sums in the same order: the outputs must be bitwise equal.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer import fused_decode
from trainer.attention_blocks import launch
from trainer.fused_decode import _rope_attention_kernel, step_bias
from trainer.qwen2_decode import DecodeState, ModelDims
from trainer.triton_base import triton

LAYERS, BATCH, CAP = 28, 128, 448
CONFIGS = ((64, 4, 3), (128, 8, 2), (64, 8, 3), (32, 4, 3))
FILLS = ((384, 383), (256, 255), (192, 160), (192, 129))


def measure(dims: ModelDims, kv: int, filled: int) -> dict:
    from trainer.triton_products import _graph_ms
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    state = DecodeState.allocate(dims, BATCH, CAP, dev, torch.bfloat16)
    state.kv_cache.normal_(generator=gen)
    state.shared.fill_(128)
    state.leaders.copy_(torch.arange(BATCH, device=dev) // 8 * 8)
    state.valid[:, :filled] = True
    state.positions.fill_(filled)
    state.write_index.fill_(filled)
    bias = step_bias(state, kv, torch.bfloat16)
    qkv = torch.randn(BATCH, dims.q_size + 2 * dims.kv_size, device=dev, generator=gen).to(torch.bfloat16)
    line = {"kv": kv, "filled": filled, "configs": []}
    for block, warps, stages in CONFIGS:
        one = triton.autotune(configs=[triton.Config({"BLOCK": block}, num_warps=warps, num_stages=stages)],
                              key=["kv_len", "batch"])(_rope_attention_kernel)

        def run(cache, early, one=one):
            return launch(_rope_attention_kernel, lambda: one, dims, qkv, state, cache, bias, kv, None, False,
                          early=early)
        caches = [state.kv_cache[i] for i in range(LAYERS)]
        plain_cache, early_cache = caches[0].clone(), caches[0].clone()
        same = bool(torch.equal(run(plain_cache, False), run(early_cache, True)))
        same_cache = bool(torch.equal(plain_cache, early_cache))
        ms = {}
        for label, early in (("step", False), ("early", True), ("step_again", False), ("early_again", True)):
            ms[label] = _graph_ms(lambda early=early, run=run, caches=caches: [run(c, early) for c in caches],
                                  replays=30)
        row = {"config": [block, warps, stages], "ms": ms, "output_bitwise_equal": same, "cache_equal": same_cache}
        line["configs"].append(row)
        print(f"kv {kv} filled {filled} block {block} warps {warps} stages {stages}: step {ms['step']:.4f} / "
              f"{ms['step_again']:.4f} ms, early {ms['early']:.4f} / {ms['early_again']:.4f} "
              f"({(ms['early'] + ms['early_again']) / (ms['step'] + ms['step_again']):.3f}x); "
              f"output equal {same}, cache equal {same_cache}", flush=True)
    return line


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    args = parser.parse_args()
    os.environ.pop(fused_decode.EARLY_ENV, None)
    dims = ModelDims(layers=LAYERS, hidden=1536, heads=12, kv_heads=2, head_dim=128, intermediate=8960,
                     vocab=151936, eps=1e-6, rope_theta=1e6)
    print(torch.cuda.get_device_name(), flush=True)
    results = [measure(dims, kv, filled) for kv, filled in FILLS]
    if args.out:
        Path(args.out).write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
