"""The MLP block with each program asking the L2 for its down weights at the kernel's start, so
that they stream in while the gate/up phase leaves memory idle, against the block without.

Usage (on the GPU machine):
    python bench/gpu_down_prefetch.py [--out $OUT/down_prefetch.json]

The block's gate/up phase moves its 55 MB a layer at ~2.75 TB/s of the card's ~4.2 (it restarts
every layer: docs/benchmarks.md, issue 18, calls 34-36), and the down phase then reads 27.5 MB
more from memory. With `BlockShape.prefetch_down` each program issues, before its gate/up work,
one `cp.async.bulk.prefetch.L2` a row for the down tile it will multiply (1), or the same with an
evict-last hint (2); nothing waits for them. Qwen2.5-1.5B's shapes at batch 128, 28 layers of
random bf16 weights, each form in a CUDA graph of all 28 layers (`_graph_ms`, 30 replays), ms a
step, side by side in one process, the plain block first and last; and whether each form's
outputs equal the plain block's bitwise (the requests change no arithmetic).
On an H200 (docs/benchmarks.md, issue 18, call 37): equal, and slower, 1.188 and 1.179 against
1.012-1.014 ms: the option and this script were taken out after the commit that added them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gpu_common import write_json

LAYERS, BATCH, HIDDEN, INTERMEDIATE, EPS = 28, 128, 1536, 8960, 1e-6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    import torch

    from trainer import mlp_block
    from trainer.qwen2_decode import rms_norm
    from trainer.triton_products import _graph_ms

    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, device=dev, generator=gen) * scale).to(torch.bfloat16)

    layers = [(rand(2 * INTERMEDIATE, HIDDEN, scale=HIDDEN ** -0.5), rand(HIDDEN, INTERMEDIATE, scale=INTERMEDIATE ** -0.5),
               1 + 0.1 * rand(HIDDEN)) for _ in range(LAYERS)]
    x0 = rand(BATCH, HIDDEN)
    h0 = rms_norm(x0, 1 + 0.1 * rand(HIDDEN), EPS)

    def block(shape):
        def run():
            x, h = x0, h0
            for gate_up, down, norm in layers:
                x, h = mlp_block.mlp_block(x, h, gate_up, down, norm, EPS, shape)
            return x, h
        return run

    shapes = {"block": mlp_block.BlockShape.for_gpu(dev),
              "block, down asked of the L2": mlp_block.BlockShape.for_gpu(dev, prefetch_down=1),
              "block, down asked of the L2, evict last": mlp_block.BlockShape.for_gpu(dev, prefetch_down=2)}
    want = [t.clone() for t in block(shapes["block"])()]
    found: dict[str, dict] = {}
    for name in (*shapes, "block again"):
        run = block(shapes[name if name in shapes else "block"])
        got = run()
        torch.cuda.synchronize()
        row = {"bitwise_equal": all(torch.equal(g, w) for g, w in zip(got, want, strict=True)),
               "barrier_gave_up": mlp_block.failed(dev), "ms": _graph_ms(run, replays=30)}
        row["barrier_gave_up"] |= mlp_block.failed(dev)
        found[name] = row
        base = found["block"]["ms"]
        print(f"{name:42s} {row['ms']:.4f} ms ({row['ms'] / base:.3f}x)  bitwise equal {row['bitwise_equal']}"
              f"  gave up {row['barrier_gave_up']}", flush=True)
    if args.out:
        write_json(args.out, {"device": torch.cuda.get_device_name(), "layers": LAYERS, "batch": BATCH, "found": found})
    return 0


if __name__ == "__main__":
    sys.exit(main())
