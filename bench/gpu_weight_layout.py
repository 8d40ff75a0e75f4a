"""The MLP block reading its weights as they are (row-major) against the same block reading copies
laid out so that every box it loads is one run of memory (`mlp_block.TiledWeights`), on one GPU.

Usage:
    python bench/gpu_weight_layout.py [--out $OUT/layout.json]   # on the GPU machine
    python bench/gpu_weight_layout.py --compile-only              # anywhere: both for sm_90a, no GPU
    python bench/gpu_weight_layout.py --dry-run                   # anywhere: the whole script on a CPU

Why: under Nsight Compute every per-layer kernel of the decode step reads memory at half the
card's rate or less, the Gluon gate/up stream with no multiplies at all at 2.45 TB/s, and 28
layers' gate/up in one launch without a barrier at 3.05 TB/s, where the head, one long cuBLAS
product, reaches 3.66 and a copy 4.2 (docs/benchmarks.md, issue 18, calls 64-81). Each of the
block's boxes is 64 or 128 rows of 128 bytes lying a weight row apart (3 KB in gate_up, 17.5 KB in
down): every 128 bytes a new place in memory. The tiled copy holds the same bytes (0.2% zeros) in
the order a program reads them, so a box is 16 KB in one run. Same products in the same order:
the outputs must be bitwise equal.

Qwen2.5-1.5B's shapes at batch 128: 28 layers of random bf16 weights, one residual carried
through all of them as in a decode step. Each timing is a CUDA graph of the 28 layers
(`trainer.triton_products._graph_ms`, 30 replays after a warm one), ms a step; row-major and
tiled alternate, twice each:
  block        the whole block with its barriers (as the decode step runs it)
  gate/up      its gate/up phase alone (28 launches, no barrier), at 128 rows and at 16 (the same
               weight bytes, an eighth of x: the closest this kernel comes to a pure weight stream)
  down         its down phase alone
and, once, what the memory gives a plain stream of the same bytes: a copy of every layer's
gate_up and down (read and written), and cuBLAS's gate/up at 16 rows. Each line's TB/s counts the
weights' own bytes read (2 x 8960 x 1536 x 2 for gate/up, half that for down; the copy: read and
written). Before the timings: one layer's activation and both outputs compared bit for bit, the 28
layers' outputs too, and whether any barrier gave up waiting. `--dry-run` runs all of it on a CPU
in Triton's interpreter at tiny widths (64 x 144, 4 programs, 3 layers, 16 rows), each timing one
eager call: numbers that mean nothing, a script that is known to run before it costs GPU time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from gpu_common import write_json
from gpu_mlp_block import BATCH, EPS, HIDDEN, INTERMEDIATE, LAYERS, random_layers


def compile_only() -> int:
    """Both layouts' block (with barriers) compiled for sm_90a on this machine: registers, spills,
    shared memory, wgmma and TMA loads; 1 if either spills or has its wgmma serialized."""
    from trainer import mlp_block

    bad = 0
    for tiled in (False, True):
        report = mlp_block.compile_report(BATCH, HIDDEN, INTERMEDIATE, mlp_block.BlockShape(programs=132, tiled=tiled))
        print(f"{'tiled' if tiled else 'row-major'}: {report}", flush=True)
        bad += bool(report["spill_bytes"] or report["serialized"])
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--compile-only", action="store_true", help="compile both for sm_90a; no GPU needed")
    p.add_argument("--dry-run", action="store_true", help="tiny widths on a CPU in Triton's interpreter")
    args = p.parse_args(argv)
    if args.compile_only:
        return compile_only()
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # (before Triton is first imported)
        return measure(args.out, "cpu", layers_n=3, batch=16, hidden=64, intermediate=144, programs=4, block_k=16,
                       down_n=16)
    import torch

    return measure(args.out, "cuda", programs=torch.cuda.get_device_properties(0).multi_processor_count)


def measure(out: Path | None, device: str, layers_n: int = LAYERS, batch: int = BATCH, hidden: int = HIDDEN,
            intermediate: int = INTERMEDIATE, programs: int = 132, **options) -> int:
    import torch
    import torch.nn.functional as F

    from trainer import mlp_block

    dev = torch.device(device)
    if dev.type == "cuda":
        from trainer.triton_products import _graph_ms
    else:
        def _graph_ms(run, replays: int) -> float:  # --dry-run: one eager call
            start = time.perf_counter()
            run()
            return (time.perf_counter() - start) * 1e3
    layers, x0, h0 = random_layers(dev, layers_n, batch, hidden, intermediate)
    shapes = {"row-major": mlp_block.BlockShape(programs=programs, **options),
              "tiled": mlp_block.BlockShape(programs=programs, tiled=True, **options)}
    tiled = [mlp_block.TiledWeights.of(gate_up, down, shapes["tiled"]) for gate_up, down, _ in layers]
    found: dict = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu (dry run)",
                   "programs": programs,
                   "tiled_bytes_over_weights": (tiled[0].gate_up.numel() + tiled[0].down.numel())
                   / (layers[0][0].numel() + layers[0][1].numel())}

    def block(name: str, phases=None, rows: int = batch):
        def run():  # (a phase alone: every layer from x0, h0, as its outputs are not written)
            x, h = x0[:rows], h0[:rows]
            for (gate_up, down, norm), tiles in zip(layers, tiled, strict=True):
                got = mlp_block.mlp_block(x, h, gate_up, down, norm, EPS, shapes[name], phases=phases,
                                          tiled=tiles if name == "tiled" else None)
                x, h = got if phases is None else (x, h)
            return x, h
        return run

    # Bit for bit: one layer's activation and outputs, then the 28 layers' outputs.
    ones = {}
    for name, shape in shapes.items():
        got = mlp_block.mlp_block(x0, h0, *layers[0], EPS, shape, tiled=tiled[0] if name == "tiled" else None)
        act = mlp_block.workspace(dev, batch, hidden, intermediate, shape.plan(hidden, intermediate)["SPLITS"],
                                  torch.bfloat16)[0]
        ones[name] = (act.clone(), *got, *block(name)())
    found["bitwise equal (act, x, h; all layers x, h)"] = [bool(torch.equal(a, b)) for a, b in
                                                          zip(ones["row-major"], ones["tiled"], strict=True)]
    found["barrier gave up"] = mlp_block.failed(dev)
    print(f"tiled bytes / weights' bytes {found['tiled_bytes_over_weights']:.4f}; bitwise equal (act, x, h; all layers "
          f"x, h) {found['bitwise equal (act, x, h; all layers x, h)']}; barrier gave up {found['barrier gave up']}",
          flush=True)

    gate_up_bytes, down_bytes = 2 * intermediate * hidden * 2 * layers_n, intermediate * hidden * 2 * layers_n
    # (the interpreter runs the block as its three phases; phase 1 or 2 alone there is one launch)
    timed = {"block": (None, batch, gate_up_bytes + down_bytes), "gate/up": ((1,), batch, gate_up_bytes),
             "gate/up 16 rows": ((1,), 16, gate_up_bytes), "down": ((2,), batch, down_bytes)}
    ms: dict[str, list[float]] = {}
    for _turn in (1, 2):
        for what, (phases, rows, _) in timed.items():
            for name in shapes:
                ms.setdefault(f"{what} {name}", []).append(_graph_ms(block(name, phases, rows), replays=30))
    found["barrier gave up"] |= mlp_block.failed(dev)
    scratch = [(torch.empty_like(g), torch.empty_like(d)) for g, d, _ in layers]

    def copies():
        for (g, d, _), (g2, d2) in zip(layers, scratch, strict=True):
            g2.copy_(g)
            d2.copy_(d)
    ms["copy of gate_up and down"] = [_graph_ms(copies, replays=30)]
    ms["cublas gate/up 16 rows"] = [_graph_ms(lambda: [F.linear(h0[:16], g) for g, _, _ in layers], replays=30)]
    rates = {f"{what} {name}": nbytes for what, (_, _, nbytes) in timed.items() for name in shapes}
    rates |= {"copy of gate_up and down": 2 * (gate_up_bytes + down_bytes), "cublas gate/up 16 rows": gate_up_bytes}
    found["ms"] = ms
    found["tb_per_s"] = {key: rates[key] / (min(values) * 1e-3) / 1e12 for key, values in ms.items()}
    found["tiled / row-major"] = {what: min(ms[f"{what} tiled"]) / min(ms[f"{what} row-major"]) for what in timed}
    for key, values in ms.items():
        print(f"  {key:28s} {' '.join(f'{v:.4f}' for v in values)} ms  {found['tb_per_s'][key]:.2f} TB/s", flush=True)
    for what, ratio in found["tiled / row-major"].items():
        print(f"  tiled / row-major, {what:16s} {ratio:.3f}", flush=True)
    print(f"barrier gave up {found['barrier gave up']}", flush=True)
    if out:
        write_json(out, found)
    return 0


if __name__ == "__main__":
    sys.exit(main())
