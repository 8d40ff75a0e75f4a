"""A hand warp-specialized gate/up product in Gluon against cuBLAS and the MLP block's gate/up.

    python bench/gpu_gluon_ws.py [--out $OUT/gluon_ws.json]    # on the GPU machine (Hopper)
    python bench/gpu_gluon_ws.py --compile-only                # anywhere: compiles every variant for sm_90a

Qwen2.5-1.5B's gate/up at batch 128: x [128, 1536] bf16 times gate | up [17920, 1536], SiLU(gate)
x up [128, 8960] in bf16, 28 layers of random weights in one CUDA graph (55 MB a layer: none stays
in the L2). The persistent MLP kernel's gate/up phase (trainer/mlp_block.py) keeps pace with cuBLAS
(0.56 against 0.54 ms + 0.07 for SiLU x up) but not with the copy rate (0.37 ms at 4.2 TB/s); the
guess is that its one warp group both waits for loads and multiplies, so the two do not overlap.
Here the block's split (program p of 132 owns SiLU x up's columns [p I / P, (p + 1) I / P), 67 or
68: a 64-row tile of gate and one of up, and a remainder tile of 16 or 8 rows of each whose rows
past the program's share are computed and not stored) is written by hand in two partitions: one
warp issues the TMA loads of x, the tiles and the remainders into a ring of shared-memory stages,
each with a "ready" and an "empty" mbarrier, and one warp group multiplies each stage with
asynchronous wgmma, hands the stage back once its products have finished (at once, or one step
later with the step's last product still in flight), and at the end writes SiLU x up, rounded as
trainer/triton_products.swiglu_tile rounds. Variants: stages, K per step, remainder rows, deferral.
On an H200 (docs/benchmarks.md, issue 18, call 33) every variant finished and matched (3.5e-3
against float32), and every one was slower than the block's gate/up phase: 0.660-0.701 ms against
0.561-0.566 (cuBLAS 0.535-0.542 + SiLU x up: 0.630).
(With two or more accumulators in flight across the loop's back edge ptxas serializes every wgmma,
C7514: at most one is.)

Each variant runs in its own process (`--one INDEX`), killed after TIMEOUT_S: Triton 3.6's
automatic warp specialization never finished on the H200 (bench/gpu_ws_product.py), and a hang of
this one must not take the whole call. In that process, side by side, each in a CUDA graph of all
28 layers (`trainer.triton_products._graph_ms`, 30 replays), ms a step: the variant, cuBLAS
(F.linear, then the fused step's compiled SiLU x up; and F.linear alone) and the block's gate/up
phase alone (`mlp_block(..., phases=(1,))`), with ratios against cuBLAS; and the variant's act for
one layer against float32 SiLU(x gate^T) x (x up^T) (relative error; bf16 rounding alone is
~3e-3). The parent compiles what every child shares first, prints a line a variant and writes all
of it to --out. `--compile-only` prints each variant's registers, spills and shared memory (ptxas
for sm_90a, no GPU needed) and exits 1 if any spills or has its wgmma serialized.
"""

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
from gpu_common import write_json

try:  # Gluon is Triton's; a box without Triton can still import this file and print --help
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
except ImportError:  # pragma: no cover - exercised where Triton is missing
    gluon = None

LAYERS, ROWS, H, I = 28, 128, 1536, 8960
PROGRAMS = 132  # an H200's multiprocessors; one program each
TIMEOUT_S = 60
# (stages, K per step, remainder rows (16: 12-13 rows a program past its share, 8: 4-5), defer: 1 hands a
# stage back a step late, with that step's last product still in flight; 0 once all four have finished)
VARIANTS = ((6, 64, 16, 1), (4, 64, 16, 1), (6, 64, 16, 0), (6, 64, 8, 1), (3, 128, 16, 1))


def label(variant) -> str:
    stages, block_k, rest, defer = variant
    return f"gluon ws s{stages} k{block_k} r{rest} defer{defer}"


if gluon is not None:

    from trainer.gluon_mlp import _swiglu
    from trainer.gluon_products import _grid_control

    @gluon.jit
    def _loader(x_desc, w_desc, r_desc, x_bufs, g_bufs, u_bufs, gr_bufs, ur_bufs, ready, empty, lo,
                I: gl.constexpr, STEPS: gl.constexpr, MODE: gl.constexpr = 0):
        # One warp: for every K step, wait for the stage to be free, then have TMA fill it with x,
        # gate's and up's 64 rows and their remainder rows; the stage's "ready" barrier completes
        # when all those bytes have landed.
        # MODE (bench/gpu_gluon_pdl.py, a launch with programmatic dependent launch): 1 waits for
        # the grid before first load; 2 first fills every stage with its weight tiles (they depend
        # on nothing), then waits, then adds the stages' x tiles; 3-6 the same for the first 1-4
        # stages only.
        stages: gl.constexpr = x_bufs.shape[0]
        block_k: gl.constexpr = x_desc.block_type.shape[1]
        block_n: gl.constexpr = w_desc.block_type.shape[0]
        nbytes: gl.constexpr = x_desc.block_type.nbytes + 2 * w_desc.block_type.nbytes + 2 * r_desc.block_type.nbytes
        ahead: gl.constexpr = stages if MODE == 2 else (MODE - 2 if MODE > 2 else 0)
        if MODE == 1:
            _grid_control("griddepcontrol.wait")
        if MODE >= 2:
            for i in gl.static_range(ahead):
                bar = ready.index(i)
                mbarrier.expect(bar, nbytes)
                tma.async_copy_global_to_shared(w_desc, [lo, i * block_k], bar, g_bufs.index(i))
                tma.async_copy_global_to_shared(w_desc, [I + lo, i * block_k], bar, u_bufs.index(i))
                tma.async_copy_global_to_shared(r_desc, [lo + block_n, i * block_k], bar, gr_bufs.index(i))
                tma.async_copy_global_to_shared(r_desc, [I + lo + block_n, i * block_k], bar, ur_bufs.index(i))
            _grid_control("griddepcontrol.wait")
            for i in gl.static_range(ahead):
                tma.async_copy_global_to_shared(x_desc, [0, i * block_k], ready.index(i), x_bufs.index(i))
        for i in range(ahead, STEPS):
            s = i % stages
            # A new mbarrier counts as having completed the phase before its first (parity 1): the
            # first pass over the ring does not wait.
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
    def _multiplier(x_bufs, g_bufs, u_bufs, gr_bufs, ur_bufs, ready, empty, act_ptr, rows, lo, hi,
                    I: gl.constexpr, STEPS: gl.constexpr, DEFER: gl.constexpr, num_warps: gl.constexpr):
        # One warp group (the default partition): per K step, wait for the stage, issue the four
        # products asynchronously, and hand back the stage whose products have all finished:
        # this step's (DEFER 0: wait for all four) or the previous step's (DEFER 1: this step's
        # last product, gate's 64 columns, stays in flight while the next stage is waited for).
        # Only one accumulator may be in flight at a loop's back edge: with two or more, ptxas
        # serializes every wgmma (C7514, "non wgmma instructions reading accumulator registers"),
        # hence gate last and at most one outstanding.
        stages: gl.constexpr = x_bufs.shape[0]
        block_m: gl.constexpr = x_bufs.shape[1]
        block_n: gl.constexpr = g_bufs.shape[1]
        block_r: gl.constexpr = gr_bufs.shape[1]
        main_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                              instr_shape=[16, block_n, 16])
        rest_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                              instr_shape=[16, block_r, 16])
        gate = gl.zeros([block_m, block_n], gl.float32, main_layout)
        up = gl.zeros([block_m, block_n], gl.float32, main_layout)
        gate_r = gl.zeros([block_m, block_r], gl.float32, rest_layout)
        up_r = gl.zeros([block_m, block_r], gl.float32, rest_layout)
        for i in range(STEPS):
            s = i % stages
            mbarrier.wait(ready.index(s), (i // stages) & 1)
            xs = x_bufs.index(s)
            # the weights are [rows, K] in shared memory: their transposed view is wgmma's B
            up_r = warpgroup_mma(xs, ur_bufs.index(s).permute((1, 0)), up_r, is_async=True)
            gate_r = warpgroup_mma(xs, gr_bufs.index(s).permute((1, 0)), gate_r, is_async=True)
            up = warpgroup_mma(xs, u_bufs.index(s).permute((1, 0)), up, is_async=True)
            gate = warpgroup_mma(xs, g_bufs.index(s).permute((1, 0)), gate, is_async=True)
            gate, up, gate_r, up_r = warpgroup_mma_wait(num_outstanding=DEFER, deps=(gate, up, gate_r, up_r))
            # every warp of the group has finished reading the stage before one thread hands it back
            gl.thread_barrier()
            if DEFER:
                mbarrier.arrive(empty.index((i + stages - 1) % stages), pred=i > 0)
            else:
                mbarrier.arrive(empty.index(s))
        gate, up, gate_r, up_r = warpgroup_mma_wait(num_outstanding=0, deps=(gate, up, gate_r, up_r))
        dtype: gl.constexpr = act_ptr.dtype.element_ty
        m = gl.arange(0, block_m, layout=gl.SliceLayout(1, main_layout))
        n = lo + gl.arange(0, block_n, layout=gl.SliceLayout(0, main_layout))
        gl.store(act_ptr + m[:, None] * I + n[None, :], _swiglu(gate, up, dtype), mask=(m < rows)[:, None])
        m = gl.arange(0, block_m, layout=gl.SliceLayout(1, rest_layout))
        n = lo + block_n + gl.arange(0, block_r, layout=gl.SliceLayout(0, rest_layout))
        gl.store(act_ptr + m[:, None] * I + n[None, :], _swiglu(gate_r, up_r, dtype),
                 mask=(m < rows)[:, None] & (n < hi)[None, :])

    @gluon.jit
    def _gate_up_ws(x_desc, w_desc, r_desc, act_ptr, rows, H: gl.constexpr, I: gl.constexpr, P: gl.constexpr,
                    STAGES: gl.constexpr, DEFER: gl.constexpr, num_warps: gl.constexpr, MODE: gl.constexpr = 0):
        if MODE != 0:  # (see _loader) the next grid may start as this one's programs leave
            _grid_control("griddepcontrol.launch_dependents")
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
            (_multiplier, (x_bufs, g_bufs, u_bufs, gr_bufs, ur_bufs, ready, empty, act_ptr, rows, lo, hi, I, steps,
                           DEFER, num_warps)),
            (_loader, (x_desc, w_desc, r_desc, x_bufs, g_bufs, u_bufs, gr_bufs, ur_bufs, ready, empty, lo, I, steps,
                       MODE)),
        ], [1], [24])


def _descs(x, gate_up, block_k: int, rest: int):
    """Host tensor descriptors: x [128, K step], gate | up's 64-row tile and its remainder tile."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    def desc(t, block):
        layout = gl.NVMMASharedLayout.get_default_for(block, gl.bfloat16)
        return TensorDescriptor(t, list(t.shape), list(t.stride()), block, layout)

    return desc(x, [128, block_k]), desc(gate_up, [64, block_k]), desc(gate_up, [rest, block_k])


def _check_split(rest: int) -> None:
    widest = max((p + 1) * I // PROGRAMS - p * I // PROGRAMS for p in range(PROGRAMS))
    if widest > 64 + rest or min((p + 1) * I // PROGRAMS - p * I // PROGRAMS for p in range(PROGRAMS)) < 64:
        raise ValueError(f"{PROGRAMS} programs' shares of {I} columns do not fit a 64-row tile + {rest}")


def gate_up_ws(descs, act, rows: int, variant) -> torch.Tensor:
    """SiLU(x gate^T) x (x up^T) into act [rows, I] bf16, from _descs' descriptors."""
    stages, _, _, defer = variant
    _gate_up_ws[(PROGRAMS,)](*descs, act, rows, H=H, I=I, P=PROGRAMS, STAGES=stages, DEFER=defer, num_warps=4)
    return act


def compile_only() -> int:
    """Compile every variant for sm_90a without a GPU and print ptxas's registers, spills and
    shared memory (the kernel's own and its total)."""
    from trainer.gluon_products import compile_for_hopper, ptxas

    x = torch.empty(ROWS, H, dtype=torch.bfloat16)
    gate_up = torch.empty(2 * I, H, dtype=torch.bfloat16)
    act = torch.empty(ROWS, I, dtype=torch.bfloat16)
    bad = 0
    for variant in VARIANTS:
        stages, block_k, rest, defer = variant
        _check_split(rest)
        start = time.time()
        try:
            kernel = compile_for_hopper(_gate_up_ws, *_descs(x, gate_up, block_k, rest), act, ROWS, H=H, I=I,
                                        P=PROGRAMS, STAGES=stages, DEFER=defer, num_warps=4)
        except Exception as exc:  # noqa: BLE001 - a variant that does not compile is the finding
            print(f"{label(variant)}: does not compile: {exc!r}"[:2000], flush=True)
            bad += 1
            continue
        done = ptxas(kernel.asm["ptx"])
        usage = done.stdout + done.stderr
        regs = re.search(r"Used (\d+) registers", usage)
        spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", usage)
        ptx = kernel.asm["ptx"]
        maxnreg = sorted(set(re.findall(r"setmaxnreg\.(inc|dec)[.a-z]*\.u32\s+(\d+)", ptx)))
        serialized = "C7514" in usage or "C7515" in usage or "serialized" in usage
        # (Triton sets .maxnreg 256 on a warp-specialized kernel; ptxas ignores it, 255 being its limit)
        notes = [line.strip() for line in usage.splitlines()
                 if ("warning" in line.lower() and "maxnreg" not in line) or "Performance Loss" in line]
        print(f"{label(variant)}: {regs.group(1) if regs else '?'} registers (ptxas, kernel-wide), spills "
              f"{spill.group(1) + ' B stores / ' + spill.group(2) + ' B loads' if spill else '?'}, shared memory "
              f"{kernel.metadata.shared} B; "
              f"setmaxnreg {' '.join(a + ' ' + b for a, b in maxnreg)}, wgmma serialized {serialized}, "
              f"wgmma {ptx.count('wgmma.mma_async')} wait_group {ptx.count('wgmma.wait_group')}; "
              f"compiled in {time.time() - start:.1f} s" + (f"; ptxas: {notes}" if notes else ""), flush=True)
        if not regs or not spill or int(spill.group(1)) or int(spill.group(2)) or done.returncode or serialized:
            bad += 1
    return 1 if bad else 0


def one(index: int) -> None:
    """Variant `index`, cuBLAS and the block's gate/up phase on the same 28 layers, in this process.
    Prints a JSON line after the baselines and another, the whole row, after the variant: a variant
    that hangs or crashes leaves the first."""
    import torch.nn.functional as F

    from trainer import mlp_block
    from trainer.fused_decode import element_fns
    from trainer.triton_products import _graph_ms

    variant = VARIANTS[index]
    _, block_k, rest, _ = variant
    _check_split(rest)
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, device=dev, generator=gen) * scale).to(torch.bfloat16)

    weights = [rand(2 * I, H, scale=H ** -0.5) for _ in range(LAYERS)]
    x = rand(ROWS, H)
    resid, down, norm = rand(ROWS, H), rand(H, I, scale=I ** -0.5), 1 + 0.1 * rand(H)
    act = torch.empty(ROWS, I, device=dev, dtype=torch.bfloat16)
    _, _, silu_mul = element_fns(type("Dims", (), {"eps": 1e-6})(), compiled=True)
    shape = mlp_block.BlockShape.for_gpu(dev)
    gb = sum(w.numel() * 2 for w in weights) / 1e9
    row = {"variant": label(variant), "stages": variant[0], "block_k": block_k, "rest_rows": rest,
           "defer": variant[3], "device": torch.cuda.get_device_name(),
           "sms": torch.cuda.get_device_properties(dev).multi_processor_count, "block_shape": repr(shape),
           "weights_gb": gb, "ms": {}}

    def want(layer: int) -> torch.Tensor:
        gate, up = F.linear(x.float(), weights[layer].float()).split(I, dim=1)
        return F.silu(gate) * up

    def time_it(name, run) -> None:
        try:
            row["ms"][name] = _graph_ms(run, replays=30)
        except Exception as exc:  # noqa: BLE001 - a side failing is a finding
            row["ms"][name] = repr(exc)[:300]
            torch.cuda.synchronize()
        ms = {k: t for k, t in row["ms"].items() if isinstance(t, float)}
        row["vs_cublas"] = {k: t / ms["cublas"] for k, t in ms.items()} if "cublas" in ms else {}
        row["weights_tb_s"] = {k: gb / t for k, t in ms.items()}

    time_it("cublas", lambda: [silu_mul(F.linear(x, w)) for w in weights])
    time_it("cublas gate/up only", lambda: [F.linear(x, w) for w in weights])
    time_it("block gate/up phase", lambda: [mlp_block.mlp_block(resid, x, w, down, norm, 1e-6, shape, phases=(1,))
                                            for w in weights])
    print(json.dumps(row), flush=True)  # the baselines, in case the variant never returns

    descs = [_descs(x, w, block_k, rest) for w in weights]
    got = gate_up_ws(descs[0], act, ROWS, variant).float()
    torch.cuda.synchronize()
    ref = want(0)
    row["rel_error"] = float((got - ref).norm() / ref.norm())
    row["finite"] = bool(torch.isfinite(got).all())
    row["rel_error_vs_cublas"] = float((got - silu_mul(F.linear(x, weights[0])).float()).norm() / ref.norm())
    time_it("gluon ws", lambda: [gate_up_ws(d, act, ROWS, variant) for d in descs])
    ref = want(LAYERS - 1)  # what the graph's last launch left in act
    row["rel_error_after_graph"] = float((act.float() - ref).norm() / ref.norm())
    time_it("cublas again", lambda: [silu_mul(F.linear(x, w)) for w in weights])
    print(json.dumps(row), flush=True)


def warm_up() -> None:
    """Compile, in this process, what every child also runs (torch.compile's SiLU x up, the
    block's gate/up phase), so that the children find them in the on-disk caches and their
    TIMEOUT_S is spent on the variant, not on compiling."""
    import torch.nn.functional as F

    from trainer import mlp_block
    from trainer.fused_decode import element_fns

    dev = torch.device("cuda")
    _, _, silu_mul = element_fns(type("Dims", (), {"eps": 1e-6})(), compiled=True)
    x = torch.randn(ROWS, H, device=dev).to(torch.bfloat16)
    w = torch.randn(2 * I, H, device=dev).to(torch.bfloat16)
    silu_mul(F.linear(x, w))
    mlp_block.mlp_block(x, x, w, torch.zeros(H, I, device=dev, dtype=torch.bfloat16), torch.ones_like(x[0]), 1e-6,
                        mlp_block.BlockShape.for_gpu(dev), phases=(1,))
    torch.cuda.synchronize()


def child_row(script: str, index: int, timeout: float, default: dict) -> dict:
    """Run `script --one index` in a child process (killed after `timeout` s: a kernel that never
    finishes costs its timeout only); its last JSON line (else `default`), with how it ended."""
    try:
        done = subprocess.run([sys.executable, script, "--one", str(index)], capture_output=True, text=True,
                              check=False, timeout=timeout)
        out, err, ended = done.stdout, done.stderr, f"exit {done.returncode}"
    except subprocess.TimeoutExpired as exc:
        out, err, ended = exc.stdout or "", exc.stderr or "", f"killed after {timeout} s"
    out, err = (t.decode(errors="replace") if isinstance(t, bytes) else t for t in (out, err))
    lines = [line for line in out.splitlines() if line.startswith("{")]
    row = json.loads(lines[-1]) if lines else dict(default)
    row["ended"] = ended
    if ended != "exit 0":
        row["stderr"] = err[-1500:]
    return row


def _child(index: int, variant) -> dict:
    return child_row(__file__, index, TIMEOUT_S, {"variant": label(variant)})


def _line(row: dict) -> str:
    """One printed line for a variant's row."""
    times = "  ".join(f"{name} {t:.4f} ms ({row['vs_cublas'].get(name, float('nan')):.3f}x, "
                      f"{row['weights_tb_s'][name]:.2f} TB/s)" if isinstance(t, float) else f"{name} {t}"
                      for name, t in row.get("ms", {}).items())
    errors = "  ".join(f"{k} {row[k]:.1e}" for k in ("rel_error", "rel_error_vs_cublas", "rel_error_after_graph")
                       if k in row)
    tail = "" if row["ended"] == "exit 0" else f"  [{row['ended']}] {row.get('stderr', '')[-600:]!r}"
    return f"{row['variant']}: {times}  {errors}{tail}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--compile-only", action="store_true", help="compile every variant for sm_90a (no GPU) and exit")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # a child: one variant, one JSON line
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
    start = time.time()
    try:
        warm_up()
        print(f"warm-up (torch.compile's SiLU x up, the block's kernel) {time.time() - start:.1f} s", flush=True)
    except Exception as exc:  # noqa: BLE001 - the children compile it themselves then
        print(f"warm-up failed: {exc!r}"[:500], flush=True)
    found = []
    for index, variant in enumerate(VARIANTS):
        found.append(_child(index, variant))
        print(_line(found[-1]), flush=True)
    if args.out:
        write_json(args.out, {"device": torch.cuda.get_device_name(), "layers": LAYERS, "rows": ROWS, "hidden": H,
                              "intermediate": I, "programs": PROGRAMS, "variants": found})
    return 0


if __name__ == "__main__":
    sys.exit(main())
