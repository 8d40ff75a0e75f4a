"""What loading a kernel's weights before it waits for the kernel before it is worth: the hand
warp-specialized Gluon gate/up of bench/gpu_gluon_ws.py, 28 layers in one CUDA graph, launched
plainly, with programmatic dependent launch (PDL) waiting before every load, and with PDL where
the loader first fills every stage with its weight tiles, then waits, then loads x.

    python bench/gpu_gluon_pdl.py [--out $OUT/gluon_pdl.json]    # on the GPU machine (Hopper)
    python bench/gpu_gluon_pdl.py --compile-only                # anywhere: compiles every mode for sm_90a

Every decode kernel restarts from cold: on an H200 the MLP block's gate/up phase waits ~2.2 us a
layer for its first loads, ~1.1 us passes between launches and ~0.9 us goes to the slowest
program (docs/benchmarks.md, issue 18, calls 38-39). Weights depend on nothing a step computes,
so a kernel could ask for them before the kernel before it has finished: with PDL the next
grid's programs start as the previous grid's leave their multiprocessors, and an explicit TMA
ring (which Triton's automatic pipelining does not let us place) can be filled with weight tiles
before `griddepcontrol.wait`. Here all 28 launches read the same x; each mode's output after one
launch is compared with the plain launch's bit for bit.

On an H200 (docs/benchmarks.md, issue 18, calls 54-56), ms for 28 layers: plain 0.657-0.664, PDL
0.628-0.630, PDL with 1, 2, 3, 4 or all 6 stages' weights ahead 0.615, 0.604-0.606, 0.598-0.599,
0.603-0.604, 0.634-0.636; the Triton block's gate/up phase 0.561.

The modes are gpu_gluon_ws's kernel's MODE (its loader's prologue): 0 plain launches; 1 PDL,
the loader waits for the previous grid before its first load; 2 PDL, the loader issues every
stage's weight tiles (gate, up, their remainder rows) first, then waits, then issues the stages'
x tiles; 3, 4, 5 and 6 the same for the first 1, 2, 3 and 4 stages only. Each mode runs in its
own process (TIMEOUT_S), beside the MLP block's Triton gate/up phase as it runs in the step.
(Calls 54-56 ran the same loader and kernel as a copy in this file, commit 2556a5d; they moved into
gpu_gluon_ws.py after, which compiles to the same shared memory and TMA loads per mode.)
"""

import argparse
import json
import sys
import time
from pathlib import Path

import gpu_gluon_ws as ws
import torch
from gpu_common import write_json

VARIANT = (6, 64, 16, 1)  # stages, K per step, remainder rows, defer: gpu_gluon_ws's fastest
MODES = (0, 1, 2, 3, 4, 5, 6)
TIMEOUT_S = 90


def gate_up(descs, act, rows: int, mode: int) -> torch.Tensor:
    stages, _, _, defer = VARIANT
    ws._gate_up_ws[(ws.PROGRAMS,)](*descs, act, rows, H=ws.H, I=ws.I, P=ws.PROGRAMS, STAGES=stages, DEFER=defer,
                                   MODE=mode, num_warps=4, launch_pdl=mode != 0)
    return act


def compile_only() -> int:
    """Compile every mode for sm_90a without a GPU; print shared memory and whether the grid
    dependency instructions are in the PTX."""
    from trainer.gluon_products import compile_for_hopper

    x = torch.empty(ws.ROWS, ws.H, dtype=torch.bfloat16)
    w = torch.empty(2 * ws.I, ws.H, dtype=torch.bfloat16)
    act = torch.empty(ws.ROWS, ws.I, dtype=torch.bfloat16)
    stages, block_k, rest, defer = VARIANT
    bad = 0
    for mode in MODES:
        try:
            kernel = compile_for_hopper(ws._gate_up_ws, *ws._descs(x, w, block_k, rest), act, ws.ROWS, H=ws.H, I=ws.I,
                                        P=ws.PROGRAMS, STAGES=stages, DEFER=defer, MODE=mode, num_warps=4)
        except Exception as exc:  # noqa: BLE001 - a mode that does not compile is the finding
            print(f"mode {mode}: does not compile: {exc!r}"[:3000], flush=True)
            bad += 1
            continue
        ptx = kernel.asm["ptx"]
        print(f"mode {mode}: shared memory {kernel.metadata.shared} B, griddepcontrol.wait "
              f"{ptx.count('griddepcontrol.wait')}, launch_dependents {ptx.count('griddepcontrol.launch_dependents')}, "
              f"TMA loads {ptx.count('cp.async.bulk.tensor')}", flush=True)
    return 1 if bad else 0


def one(mode: int) -> None:
    """Mode `mode` and the baselines (the mode-0 launch, the block's gate/up phase) on the same 28
    layers in this process; one JSON line."""
    from trainer import mlp_block
    from trainer.triton_products import _graph_ms

    _, block_k, rest, _ = VARIANT
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, device=dev, generator=gen) * scale).to(torch.bfloat16)

    weights = [rand(2 * ws.I, ws.H, scale=ws.H ** -0.5) for _ in range(ws.LAYERS)]
    x = rand(ws.ROWS, ws.H)
    resid, down, norm = rand(ws.ROWS, ws.H), rand(ws.H, ws.I, scale=ws.I ** -0.5), 1 + 0.1 * rand(ws.H)
    act = torch.empty(ws.ROWS, ws.I, device=dev, dtype=torch.bfloat16)
    shape = mlp_block.BlockShape.for_gpu(dev)
    descs = [ws._descs(x, w, block_k, rest) for w in weights]
    row = {"mode": mode, "variant": ws.label(VARIANT), "device": torch.cuda.get_device_name(), "ms": {}}
    plain = gate_up(descs[0], act, ws.ROWS, 0).clone()
    got = gate_up(descs[0], torch.empty_like(act), ws.ROWS, mode)
    torch.cuda.synchronize()
    row["bitwise_equal_to_plain"] = bool(torch.equal(plain, got))
    for name, run in (("plain", lambda: [gate_up(d, act, ws.ROWS, 0) for d in descs]),
                      (f"mode {mode}", lambda: [gate_up(d, act, ws.ROWS, mode) for d in descs]),
                      ("block gate/up phase", lambda: [mlp_block.mlp_block(resid, x, w, down, norm, 1e-6, shape,
                                                                           phases=(1,)) for w in weights]),
                      ("plain again", lambda: [gate_up(d, act, ws.ROWS, 0) for d in descs]),
                      (f"mode {mode} again", lambda: [gate_up(d, act, ws.ROWS, mode) for d in descs])):
        try:
            row["ms"][name] = _graph_ms(run, replays=30)
        except Exception as exc:  # noqa: BLE001 - a side failing is a finding
            row["ms"][name] = repr(exc)[:300]
            torch.cuda.synchronize()
    print(json.dumps(row), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--compile-only", action="store_true")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if ws.gluon is None:
        print("Triton's Gluon is not installed", file=sys.stderr)
        return 1
    if args.compile_only:
        return compile_only()
    if args.one is not None:
        one(args.one)
        return 0
    print(torch.cuda.get_device_name(), flush=True)
    found = []
    for mode in MODES:
        start = time.time()
        row = ws.child_row(__file__, mode, TIMEOUT_S, {"mode": mode})
        row["seconds"] = round(time.time() - start, 1)
        found.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        write_json(args.out, {"device": torch.cuda.get_device_name(), "modes": found})
    return 0


if __name__ == "__main__":
    sys.exit(main())
