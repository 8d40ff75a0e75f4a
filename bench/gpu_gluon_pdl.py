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

Modes: 0 plain launches; 1 PDL, the loader waits for the previous grid before its first load; 2
PDL, the loader issues every stage's weight tiles (gate, up, their remainder rows) first, then
waits, then issues the stages' x tiles; 3, 4, 5 and 6 the same for the first 1, 2, 3 and 4
stages only. Each mode in its own process (TIMEOUT_S), beside the
MLP block's Triton gate/up phase as it runs in the step.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import gpu_gluon_ws as ws
import torch
from gpu_common import write_json

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
    )
except ImportError:  # pragma: no cover - exercised where Triton is missing
    gluon = None

VARIANT = (6, 64, 16, 1)  # stages, K per step, remainder rows, defer: gpu_gluon_ws's fastest
MODES = (0, 1, 2, 3, 4, 5, 6)
TIMEOUT_S = 90

if gluon is not None:

    @gluon.jit
    def _grid_wait():
        # griddepcontrol.wait: until the grids this one depends on have finished and their writes are visible
        gl.inline_asm_elementwise("griddepcontrol.wait; mov.u32 $0, 0;", "=r", [], dtype=gl.int32, is_pure=False,
                                  pack=1)

    @gluon.jit
    def _loader_pdl(x_desc, w_desc, r_desc, x_bufs, g_bufs, u_bufs, gr_bufs, ur_bufs, ready, empty, lo,
                    I: gl.constexpr, STEPS: gl.constexpr, MODE: gl.constexpr):
        # gpu_gluon_ws._loader with the grid dependency: MODE 1 waits before anything, MODE 2
        # first fills every stage with its weight tiles (they depend on nothing), then waits,
        # then adds the stages' x tiles; MODE 3-6 the same for the first 1-4 stages only.
        # Each stage's "ready" counts all of its bytes either way.
        stages: gl.constexpr = x_bufs.shape[0]
        block_k: gl.constexpr = x_desc.block_type.shape[1]
        block_n: gl.constexpr = w_desc.block_type.shape[0]
        nbytes: gl.constexpr = x_desc.block_type.nbytes + 2 * w_desc.block_type.nbytes + 2 * r_desc.block_type.nbytes
        ahead: gl.constexpr = stages if MODE == 2 else (MODE - 2 if MODE > 2 else 0)
        if MODE == 1:
            _grid_wait()
        if MODE >= 2:
            for i in gl.static_range(ahead):
                bar = ready.index(i)
                mbarrier.expect(bar, nbytes)
                tma.async_copy_global_to_shared(w_desc, [lo, i * block_k], bar, g_bufs.index(i))
                tma.async_copy_global_to_shared(w_desc, [I + lo, i * block_k], bar, u_bufs.index(i))
                tma.async_copy_global_to_shared(r_desc, [lo + block_n, i * block_k], bar, gr_bufs.index(i))
                tma.async_copy_global_to_shared(r_desc, [I + lo + block_n, i * block_k], bar, ur_bufs.index(i))
            _grid_wait()
            for i in gl.static_range(ahead):
                tma.async_copy_global_to_shared(x_desc, [0, i * block_k], ready.index(i), x_bufs.index(i))
        for i in range(ahead, STEPS):
            s = i % stages
            mbarrier.wait(empty.index(s), ((i // stages) & 1) ^ 1)
            bar = ready.index(s)
            mbarrier.expect(bar, nbytes)
            k = i * block_k
            tma.async_copy_global_to_shared(x_desc, [0, k], bar, x_bufs.index(s))
            tma.async_copy_global_to_shared(w_desc, [lo, k], bar, g_bufs.index(s))
            tma.async_copy_global_to_shared(w_desc, [I + lo, k], bar, u_bufs.index(s))
            tma.async_copy_global_to_shared(r_desc, [lo + block_n, k], bar, gr_bufs.index(s))
            tma.async_copy_global_to_shared(r_desc, [I + lo + block_n, k], bar, ur_bufs.index(s))

    @gluon.jit
    def _gate_up_pdl(x_desc, w_desc, r_desc, act_ptr, rows, H: gl.constexpr, I: gl.constexpr, P: gl.constexpr,
                     STAGES: gl.constexpr, DEFER: gl.constexpr, MODE: gl.constexpr, num_warps: gl.constexpr):
        if MODE != 0:  # the next grid may start as this one's programs leave
            gl.inline_asm_elementwise("griddepcontrol.launch_dependents; mov.u32 $0, 0;", "=r", [], dtype=gl.int32,
                                      is_pure=False, pack=1)
        p = gl.program_id(0)
        lo = p * I // P
        hi = (p + 1) * I // P
        x_bufs = gl.allocate_shared_memory(x_desc.dtype, [STAGES] + x_desc.block_type.shape, x_desc.layout)
        g_bufs = gl.allocate_shared_memory(w_desc.dtype, [STAGES] + w_desc.block_type.shape, w_desc.layout)
        u_bufs = gl.allocate_shared_memory(w_desc.dtype, [STAGES] + w_desc.block_type.shape, w_desc.layout)
        gr_bufs = gl.allocate_shared_memory(r_desc.dtype, [STAGES] + r_desc.block_type.shape, r_desc.layout)
        ur_bufs = gl.allocate_shared_memory(r_desc.dtype, [STAGES] + r_desc.block_type.shape, r_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for s in gl.static_range(STAGES):
            mbarrier.init(ready.index(s), count=1)
            mbarrier.init(empty.index(s), count=1)
        fence_async_shared()
        steps: gl.constexpr = H // x_desc.block_type.shape[1]
        gl.warp_specialize([
            (ws._multiplier, (x_bufs, g_bufs, u_bufs, gr_bufs, ur_bufs, ready, empty, act_ptr, rows, lo, hi, I,
                              steps, DEFER, num_warps)),
            (_loader_pdl, (x_desc, w_desc, r_desc, x_bufs, g_bufs, u_bufs, gr_bufs, ur_bufs, ready, empty, lo, I,
                           steps, MODE)),
        ], [1], [24])


def gate_up(descs, act, rows: int, mode: int) -> torch.Tensor:
    stages, _, _, defer = VARIANT
    _gate_up_pdl[(ws.PROGRAMS,)](*descs, act, rows, H=ws.H, I=ws.I, P=ws.PROGRAMS, STAGES=stages, DEFER=defer,
                                 MODE=mode, num_warps=4, launch_pdl=mode != 0)
    return act


def compile_only() -> int:
    """Compile every mode for sm_90a without a GPU; print shared memory and whether the grid
    dependency instructions are in the PTX."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    x = torch.empty(ws.ROWS, ws.H, dtype=torch.bfloat16)
    w = torch.empty(2 * ws.I, ws.H, dtype=torch.bfloat16)
    act = torch.empty(ws.ROWS, ws.I, dtype=torch.bfloat16)
    stages, block_k, rest, defer = VARIANT
    bad = 0
    for mode in MODES:
        kwargs = {"H": ws.H, "I": ws.I, "P": ws.PROGRAMS, "STAGES": stages, "DEFER": defer, "MODE": mode,
                  "num_warps": 4}
        binder = create_function_from_signature(_gate_up_pdl.signature, _gate_up_pdl.params, backend)
        bound, spec, options = binder(*ws._descs(x, w, block_k, rest), act, ws.ROWS, **kwargs)
        options, signature, constexprs, attrs = _gate_up_pdl._pack_args(backend, kwargs, bound, spec, options)
        try:
            kernel = triton.compile(GluonASTSource(_gate_up_pdl, signature, constexprs, attrs), target=target,
                                    options=options.__dict__)
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
    if gluon is None:
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
        try:
            done = subprocess.run([sys.executable, __file__, "--one", str(mode)], capture_output=True, text=True,
                                  check=False, timeout=TIMEOUT_S)
            out, ended, err = done.stdout, f"exit {done.returncode}", done.stderr
        except subprocess.TimeoutExpired as exc:
            out, ended, err = exc.stdout or "", f"killed after {TIMEOUT_S} s", exc.stderr or ""
        out, err = (t.decode(errors="replace") if isinstance(t, bytes) else t for t in (out, err))
        lines = [line for line in out.splitlines() if line.startswith("{")]
        row = json.loads(lines[-1]) if lines else {"mode": mode}
        row["ended"], row["seconds"] = ended, round(time.time() - start, 1)
        if ended != "exit 0":
            row["stderr"] = err[-1500:]
        found.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        write_json(args.out, {"device": torch.cuda.get_device_name(), "modes": found})
    return 0


if __name__ == "__main__":
    sys.exit(main())
