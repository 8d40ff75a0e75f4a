"""Warp specialization on Hopper for the decode step's products (triton's automatic producer /
consumer split of a loop, `tl.range(..., warp_specialize=True)`): 28 layers' gate/up-shaped
(128 x 1536 -> 17920) and down-shaped (128 x 8960 -> 1536, split over K) products in one graph,
against cuBLAS (F.linear) and the same Triton kernel without it, side by side in one process per
variant. Each variant runs in its own process, killed after TIMEOUT_S: with Triton 3.6.0 on an
H200 every warp-specialized form never finished (docs/benchmarks.md, calls 27-28).

    python bench/gpu_ws_product.py
"""
import subprocess
import sys

import torch
import torch.nn.functional as F

from trainer.triton_base import tl, triton
from trainer.triton_products import _graph_ms

LAYERS, ROWS, H, I = 28, 128, 1536, 8960


@triton.jit
def _product(x_desc, w_desc, out_ptr, rows, K: tl.constexpr, N: tl.constexpr, SPLITS: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, WS: tl.constexpr):
    tiles: tl.constexpr = N // BLOCK_N
    p = tl.program_id(0)
    tile = p % tiles
    split = p // tiles
    steps: tl.constexpr = K // BLOCK_K
    k_lo = (split * steps // SPLITS) * BLOCK_K
    k_hi = ((split + 1) * steps // SPLITS) * BLOCK_K
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k in tl.range(k_lo, k_hi, BLOCK_K, warp_specialize=WS):
        x = x_desc.load([0, k])
        w = w_desc.load([tile * BLOCK_N, k])
        acc = tl.dot(x, tl.trans(w), acc)
    m = tl.arange(0, BLOCK_M)
    n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    if SPLITS == 1:
        tl.store(out_ptr + m[:, None] * N + n[None, :], acc.to(out_ptr.dtype.element_ty), mask=(m < rows)[:, None])
    else:
        tl.store(out_ptr + split * rows * N + m[:, None] * N + n[None, :], acc, mask=(m < rows)[:, None])


def triton_product(x, w, out, splits, block_n, block_k, ws, warps, stages):
    from triton.tools.tensor_descriptor import TensorDescriptor
    n, k = w.shape
    x_desc = TensorDescriptor.from_tensor(x, [128, block_k])
    w_desc = TensorDescriptor.from_tensor(w, [block_n, block_k])
    grid = (n // block_n * splits,)
    _product[grid](x_desc, w_desc, out, x.shape[0], K=k, N=n, SPLITS=splits, BLOCK_M=128, BLOCK_N=block_n,
                   BLOCK_K=block_k, WS=ws, num_warps=warps, num_stages=stages)
    return out


# (label, K splits, tile columns, K per step, warps, stages, warp-specialized)
VARIANTS = (("gate/up", 1, 64, 64, 4, 6, False), ("gate/up", 1, 128, 64, 4, 3, True), ("gate/up", 1, 128, 64, 4, 4, True),
            ("gate/up", 1, 64, 64, 4, 4, True), ("gate/up", 1, 64, 64, 4, 6, True), ("down", 5, 64, 64, 4, 6, False),
            ("down", 5, 64, 64, 4, 4, True))
TIMEOUT_S = 60


def one(index: int) -> None:
    """Variant `index` and cuBLAS on the same 28 layers, in this process."""
    label, splits, block_n, block_k, warps, stages, ws = VARIANTS[index]
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    n, k = (2 * I, H) if label == "gate/up" else (H, I)
    inp = torch.randn(ROWS, k, device=dev, generator=gen).to(torch.bfloat16)
    weights = [(torch.randn(n, k, device=dev, generator=gen) * k ** -0.5).to(torch.bfloat16) for _ in range(LAYERS)]
    out = torch.empty((splits, ROWS, n) if splits > 1 else (ROWS, n), device=dev,
                      dtype=torch.float32 if splits > 1 else torch.bfloat16)
    want = F.linear(inp, weights[0]).float()
    got = triton_product(inp, weights[0], out, splits, block_n, block_k, ws, warps, stages).float()
    err = float(((got.sum(0) if splits > 1 else got) - want).norm() / want.norm())
    gb = sum(w.numel() * 2 for w in weights) / 1e9
    base = _graph_ms(lambda: [F.linear(inp, w) for w in weights], replays=20)
    ms = _graph_ms(lambda: [triton_product(inp, w, out, splits, block_n, block_k, ws, warps, stages)
                            for w in weights], replays=20)
    print(f"{label} splits {splits} n{block_n} k{block_k} w{warps} s{stages} ws={int(ws)}: {ms:.4f} ms "
          f"({gb / ms:.2f} TB/s) against cuBLAS {base:.4f} ms ({gb / base:.2f} TB/s): {ms / base:.3f}x; "
          f"rel err {err:.1e}", flush=True)


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--variant":
        one(int(sys.argv[2]))
        return 0
    print(torch.cuda.get_device_name(), flush=True)
    for index in range(len(VARIANTS)):
        # each in its own process: a warp-specialized kernel that never finishes costs its timeout only
        try:
            done = subprocess.run([sys.executable, __file__, "--variant", str(index)], capture_output=True, text=True, check=False,
                                  timeout=TIMEOUT_S)
            print(done.stdout.strip() or f"{VARIANTS[index]}: exit {done.returncode} {done.stderr[-300:]!r}",
                  flush=True)
        except subprocess.TimeoutExpired:
            print(f"{VARIANTS[index]}: did not finish in {TIMEOUT_S} s (killed)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
