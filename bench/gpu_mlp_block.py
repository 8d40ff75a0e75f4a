"""The decode layer's MLP half as one persistent kernel (trainer/mlp_block.py) against the fused
step's five kernels, on one GPU.

Usage (on the GPU machine):
    python bench/gpu_mlp_block.py [--out $OUT/mlp_block.json]

Qwen2.5-1.5B's shapes at batch 128: 28 layers of random bf16 weights (gate | up [17920, 1536],
down [1536, 8960], norm weights), one residual x [128, 1536] carried through all of them as in a
decode step. Side by side in one process, each in a CUDA graph of all 28 layers
(`trainer.triton_products._graph_ms`, 30 replays after a warm one, CUDA events), ms a step:
  cublas     what the fused step runs: F.linear gate/up, SiLU x up, F.linear down (cuBLAS's split-K
             reduce after it), residual + RMSNorm, the element-wise ones compiled (the baseline,
             timed first and again last)
  block ...  `mlp_block` with a BlockShape (tensor descriptors or pointers, warps, stages, the down
             tile's width, K per step, one or two programs per multiprocessor), one launch a layer
             with device-wide barriers
  phases     the same kernel as three launches a layer (no barriers): what the barriers save
`--phases-only`: just the per-phase times below. `--aligned`: the default shape with column
shares starting anywhere (before session 25: every activation store 2 bytes wide) against the
same with shares of whole 8-column groups (16-byte stores), as `--stacked` does. `--stacked`:
only the default shape with gate and up apart (two 64-column products, the remainder through
masked pointer loads) against the same `stacked` (the default since call 78: one 128-column
product, the remainder as one 16-column one), the blocks and their gate/up phases alone, each
timed twice in alternation, one layer's activation compared bit for bit.
Each variant's residual and normed output after the 28 layers against the baseline's (relative
error; bf16 rounding order only), whether any barrier gave up waiting, and one layer's error.
Then, per phase: each phase alone (28 launches, no barrier) beside cuBLAS's gate/up, SiLU x up
and down alone, and both at 64 and 16 rows (the same weight bytes, less of x); and a
grid of twice as many programs as multiprocessors, which the cooperative launch must refuse.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gpu_common import write_json

LAYERS, BATCH, HIDDEN, INTERMEDIATE, EPS = 28, 128, 1536, 8960, 1e-6
# (tma, warps, stages, down_n, block_k, programs per multiprocessor)
SHAPES = ((True, 4, 5, 64, 64, 1), (True, 4, 5, 128, 64, 1), (True, 8, 4, 128, 64, 1), (True, 4, 6, 64, 64, 1),
          (False, 4, 5, 64, 64, 1), (True, 4, 3, 64, 64, 2), (True, 4, 4, 64, 64, 2), (True, 4, 3, 128, 64, 2))
# (label, warps, stages, down_n, block_k, programs per multiprocessor) timed one phase at a time
PHASE_SHAPES = (("w4 s6 n64 (default)", 4, 6, 64, 64, 1), ("w4 s5 n64", 4, 5, 64, 64, 1), ("w4 s5 n128", 4, 5, 128, 64, 1),
                ("2/SM w4 s3 n64", 4, 3, 64, 64, 2))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--phases-only", action="store_true", help="only the per-phase times (with fewer rows too)")
    p.add_argument("--stacked", action="store_true", help="only the default shape against it stacked")
    p.add_argument("--aligned", action="store_true",
                   help="only the default shape (shares of whole 8-column groups) against it unaligned")
    args = p.parse_args(argv)
    import torch
    import torch.nn.functional as F

    from trainer import mlp_block
    from trainer.fused_decode import element_fns
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
    dims = type("Dims", (), {"eps": EPS})()
    _, add_norm, silu_mul = element_fns(dims, compiled=True)

    def cublas():
        x, h = x0, h0
        for gate_up, down, norm in layers:
            x, h = add_norm(x, F.linear(silu_mul(F.linear(h, gate_up)), down), norm)
        return x, h

    def block(shape, phases=None):
        def run():
            x, h = x0, h0
            for gate_up, down, norm in layers:
                x, h = mlp_block.mlp_block(x, h, gate_up, down, norm, EPS, shape, phases=phases)
            return x, h
        return run

    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    if args.stacked or args.aligned:
        from trainer import mlp_block

        pair = ({"apart": mlp_block.BlockShape(programs=sms, stacked=False),
                 "stacked": mlp_block.BlockShape(programs=sms, stacked=True)} if args.stacked else
                {"unaligned": mlp_block.BlockShape(programs=sms, aligned=False),
                 "aligned": mlp_block.BlockShape(programs=sms, aligned=True)})
        found = _pair(pair, layers, x0, h0, cublas, block)
        if args.out:
            write_json(args.out, {"device": torch.cuda.get_device_name(), "sms": sms, "variants": found})
        return 0
    if args.phases_only:
        found = {"per phase": _per_phase(layers, x0, h0, sms, cublas_parts(layers, h0, silu_mul))}
        if args.out:
            write_json(args.out, {"device": torch.cuda.get_device_name(), "sms": sms, "variants": found})
        return 0
    want_x, want_h = (t.float() for t in cublas())
    variants = {"cublas": cublas}
    for tma, warps, stages, down_n, block_k, per_sm in SHAPES:
        shape = mlp_block.BlockShape(programs=per_sm * sms, block_k=block_k, down_n=down_n, warps=warps, stages=stages,
                                     tma=tma)
        where = f" {per_sm}/SM" if per_sm > 1 else ""
        variants[f"block {'tma' if tma else 'ptr'}{where} w{warps} s{stages} n{down_n} k{block_k}"] = block(shape)
    first = mlp_block.BlockShape(programs=sms)
    variants["phases (3 launches, the default shape)"] = block(first, phases=(1, 2, 3))
    variants["cublas again"] = cublas
    found: dict[str, dict] = {}
    for name, run in variants.items():
        try:
            got_x, got_h = (t.float() for t in run())
            torch.cuda.synchronize()
            row = {"x_rel_error": float((got_x - want_x).norm() / want_x.norm()),
                   "h_rel_error": float((got_h - want_h).norm() / want_h.norm()),
                   "barrier_gave_up": mlp_block.failed(dev)}
            row["ms"] = _graph_ms(run, replays=30)
            row["barrier_gave_up"] |= mlp_block.failed(dev)
        except Exception as exc:  # noqa: BLE001 - a variant failing is a finding
            row = {"error": repr(exc)[:400]}
            torch.cuda.synchronize()
        found[name] = row
        base = found["cublas"].get("ms")
        print(f"{name:42s} " + (f"{row['ms']:.4f} ms ({row['ms'] / base:.3f}x of cublas)  x err {row['x_rel_error']:.2e}"
                                f"  h err {row['h_rel_error']:.2e}  gave up {row['barrier_gave_up']}"
                                if "ms" in row else row["error"]), flush=True)
    gate_up, down, norm = layers[0]
    want = add_norm(x0, F.linear(silu_mul(F.linear(h0, gate_up)), down), norm)
    got = mlp_block.mlp_block(x0, h0, gate_up, down, norm, EPS, first)
    found["one layer rel error (x, h)"] = [float((g.float() - w.float()).norm() / w.float().norm())
                                           for g, w in zip(got, want, strict=True)]
    print("one layer rel error (x, h)", found["one layer rel error (x, h)"], flush=True)
    found["per phase"] = _per_phase(layers, x0, h0, sms, cublas_parts(layers, h0, silu_mul))
    # Twice as many programs as multiprocessors cannot all be resident (one fits per SM): the
    # cooperative launch must be refused by the driver, not hang or give wrong numbers.
    try:
        mlp_block.mlp_block(x0, h0, gate_up, down, norm, EPS, mlp_block.BlockShape(programs=2 * sms))
        torch.cuda.synchronize()
        found["too many programs"] = {"refused": False, "barrier_gave_up": mlp_block.failed(dev)}
    except Exception as exc:  # noqa: BLE001 - the refusal is what is measured
        found["too many programs"] = {"refused": True, "error": repr(exc)[:300]}
    print("too many programs:", found["too many programs"], flush=True)
    result = {"device": torch.cuda.get_device_name(), "sms": sms, "layers": LAYERS, "batch": BATCH, "variants": found}
    if args.out:
        write_json(args.out, result)
    return 0


def _pair(shapes: dict, layers, x0, h0, cublas, block) -> dict:
    """Two block shapes (`--stacked`: gate and up apart, then stacked; `--aligned`: column shares
    anywhere, then of whole 8-column groups): errors against the cuBLAS chain after 28 layers, one
    layer's activation bit for bit, then ms (A B A B) for the blocks and for their gate/up phases
    alone."""

    from trainer import mlp_block
    from trainer.triton_products import _graph_ms

    want_x, want_h = (t.float() for t in cublas())
    found: dict = {}
    acts = {}
    gate_up, down, norm = layers[0]
    for name, shape in shapes.items():
        got_x, got_h = (t.float() for t in block(shape)())
        found[f"{name} 28 layers rel error (x, h)"] = [float((got_x - want_x).norm() / want_x.norm()),
                                                       float((got_h - want_h).norm() / want_h.norm())]
        mlp_block.mlp_block(x0, h0, gate_up, down, norm, EPS, shape)
        acts[name] = mlp_block.workspace(x0.device, x0.shape[0], HIDDEN, INTERMEDIATE,
                                         shape.plan(HIDDEN, INTERMEDIATE)["SPLITS"], x0.dtype)[0].clone()
    first, second = acts.values()
    found["one layer act bitwise equal"] = float((first == second).float().mean())
    found["barrier gave up"] = mlp_block.failed(x0.device)
    for turn in (1, 2):
        for name, shape in shapes.items():
            found[f"{name} block ms {turn}"] = _graph_ms(block(shape), replays=30)
            found[f"{name} gate/up phase ms {turn}"] = _graph_ms(block(shape, phases=(1,)), replays=30)
    found["barrier gave up"] |= mlp_block.failed(x0.device)
    for name, value in found.items():
        print(f"  {name:40s} {value}", flush=True)
    return found


def cublas_parts(layers, h0, silu_mul) -> dict:
    """The baseline's products alone, 28 layers each: gate/up, SiLU x up, down."""
    import torch.nn.functional as F

    up = F.linear(h0, layers[0][0])
    act = silu_mul(up)
    found = {"cublas gate/up": lambda: [F.linear(h0, gu) for gu, _, _ in layers],
             "silu x up": lambda: [silu_mul(up) for _ in layers],
             "cublas down": lambda: [F.linear(act, down) for _, down, _ in layers]}
    # Fewer rows, the same weight bytes: if the product were held by its weights' bytes alone, as
    # fast at 128 rows as at 16; every tile reads all rows of x, so x's share of what the SMs
    # load grows with the rows.
    for rows in (64, 16):
        found[f"cublas gate/up {rows} rows"] = lambda rows=rows: [F.linear(h0[:rows], gu) for gu, _, _ in layers]
        found[f"cublas down {rows} rows"] = lambda rows=rows: [F.linear(act[:rows], down) for _, down, _ in layers]
    return found


def _per_phase(layers, x0, h0, sms, baselines: dict) -> dict[str, float]:
    """ms for 28 launches of one phase alone (no barrier; the numbers they compute are not used),
    at one program per multiprocessor and, for gate/up, at 140 (64 columns each, a second wave),
    beside the baseline's kernels alone."""
    from trainer import mlp_block
    from trainer.triton_products import _graph_ms

    found = {name: _graph_ms(run, replays=30) for name, run in baselines.items()}
    shapes = {label: mlp_block.BlockShape(programs=per_sm * sms, warps=w, stages=s, down_n=n, block_k=k)
              for label, w, s, n, k, per_sm in PHASE_SHAPES}
    for label, shape in shapes.items():
        for phase in (1, 2, 3):

            def run(phase=phase, shape=shape):
                for gate_up, down, norm in layers:
                    mlp_block.mlp_block(x0, h0, gate_up, down, norm, EPS, shape, phases=(phase,))
            try:
                found[f"phase {phase} {label}"] = _graph_ms(run, replays=30)
            except Exception as exc:  # noqa: BLE001 - a finding
                found[f"phase {phase} {label}"] = repr(exc)[:200]
    # The default shape with fewer rows: the same weight bytes, less of x to read and multiply.
    # If a phase is held by its weights' stream, as fast at 16 rows as at 128.
    first = mlp_block.BlockShape(programs=sms)
    for rows in (64, 16):
        for phase in (1, 2):

            def run(phase=phase, rows=rows):
                for gate_up, down, norm in layers:
                    mlp_block.mlp_block(x0[:rows], h0[:rows], gate_up, down, norm, EPS, first, phases=(phase,))
            try:
                found[f"phase {phase} default, {rows} rows"] = _graph_ms(run, replays=30)
            except Exception as exc:  # noqa: BLE001 - a finding
                found[f"phase {phase} default, {rows} rows"] = repr(exc)[:200]
    for name, ms in found.items():
        print(f"  {name:32s} {ms if isinstance(ms, str) else f'{ms:.4f} ms'}", flush=True)
    return found


if __name__ == "__main__":
    sys.exit(main())
