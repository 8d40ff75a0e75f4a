"""The decode attention kernel (fused_decode.rope_attention) per launch configuration (slots per
block, warps, stages), 28 layers' caches at batch 128 in one graph, at two fills: what the
autotuner picks, what each config costs, its registers and shared memory (how many fit an SM).

    python bench/gpu_attention_configs.py
"""
import sys

import torch

from trainer import fused_decode
from trainer.attention_blocks import CONFIGS, launch
from trainer.fused_decode import _rope_attention_kernel, rope_attention, step_bias
from trainer.qwen2_decode import DecodeState, ModelDims
from trainer.triton_base import triton
from trainer.triton_products import _graph_ms

LAYERS, BATCH, CAP = 28, 128, 448
EXTRA = ((32, 4, 2), (16, 4, 3), (64, 4, 4), (128, 4, 2), (32, 2, 3), (64, 8, 2))


def main() -> int:
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    dims = ModelDims(layers=LAYERS, hidden=1536, heads=12, kv_heads=2, head_dim=128, intermediate=8960, vocab=151936,
                     eps=1e-6, rope_theta=1e6)
    state = DecodeState.allocate(dims, BATCH, CAP, dev, torch.bfloat16)
    state.kv_cache.normal_(generator=gen)
    state.shared.fill_(128)
    state.leaders.copy_(torch.arange(BATCH, device=dev) // 8 * 8)
    qkv = torch.randn(BATCH, dims.q_size + 2 * dims.kv_size, device=dev, generator=gen).to(torch.bfloat16)
    print(torch.cuda.get_device_name(), flush=True)
    for kv, filled in ((384, 383), (192, 160)):
        state.valid.zero_()
        state.valid[:, :filled] = True
        state.positions.fill_(filled)
        state.write_index.fill_(filled)
        bias = step_bias(state, kv, torch.bfloat16)
        want = rope_attention(dims, qkv, state, state.kv_cache[0], bias, kv).float()
        auto = _graph_ms(lambda bias=bias, kv=kv: [rope_attention(dims, qkv, state, state.kv_cache[i], bias, kv)
                                                   for i in range(LAYERS)], replays=30)
        print(f"kv {kv} filled {filled}: autotuned {auto:.4f} ms, picked {fused_decode.tuned_configs()}", flush=True)
        for block, warps, stages in CONFIGS + EXTRA:
            one = triton.autotune(configs=[triton.Config({"BLOCK": block}, num_warps=warps, num_stages=stages)],
                                  key=["kv_len", "batch"])(_rope_attention_kernel)

            def run(i=0, one=one, bias=bias, kv=kv):
                return launch(_rope_attention_kernel, lambda: one, dims, qkv, state, state.kv_cache[i], bias, kv,
                              None, False)
            try:
                err = float((run().float() - want).norm() / want.norm())
                ms = _graph_ms(lambda: [run(i) for i in range(LAYERS)], replays=30)
                print(f"  block {block:3d} warps {warps} stages {stages}: {ms:.4f} ms ({ms / auto:.3f}x) "
                      f"rel err {err:.1e}", flush=True)
            except Exception as exc:  # noqa: BLE001
                print(f"  block {block} warps {warps} stages {stages}: {exc!r:.200}", flush=True)
                torch.cuda.synchronize()
    for compiled in _rope_attention_kernel.device_caches[torch.cuda.current_device()][0].values():
        try:
            meta = compiled.metadata
            print(f"compiled: warps {meta.num_warps} stages {meta.num_stages} shared {meta.shared} "
                  f"regs {compiled.n_regs} consts {getattr(compiled.src, 'constants', '?')}", flush=True)
        except Exception as exc:  # noqa: BLE001
            print(f"compiled: {exc!r:.200}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
