"""Does a weight stream survive device-wide waits? 28 layers' gate/up in one Gluon launch, the
weights streaming on through the barriers, against the same with the stream restarting at each.

    python bench/gpu_gluon_stream.py [--out $OUT/gluon_stream.json]   # on the GPU machine (H100/H200)
    python bench/gpu_gluon_stream.py --compile-only                   # anywhere: sm_90a, no GPU

The question it answers, before anyone builds a decode megakernel (docs/ARCHITECTURE.md, "What
is left of issue 18"): the decode step's kernels read memory at half its rate or less because
each one starts its weight stream afresh (Nsight Compute, call 75), while the same gate/up loads
in one loop through all 28 layers stream at 4.2-4.5 TB/s (bench/gpu_fabric.py). A megakernel
would keep one stream going through a step, its weights depending on nothing, while the
multiplies wait at device-wide barriers for the activations the phase before wrote. It pays only
if the stream really goes on through those waits: with a ring of a few shared-memory stages, the
weights can be at most a ring ahead of the multiplies, ~3-4 us of stream, against ~2 us a barrier
(bench/gpu_skeleton.py). Measured here on the part of the step that is most of its bytes:

- the program split of bench/gpu_gluon_ws.py's warp-specialized gate/up (program p of 132 owns
  SiLU x up's columns [p I / P, (p + 1) I / P): a 64-row tile of gate and of up and an 8-row
  remainder box of each), with its one warp group multiplying and, here, two loader warps: one
  for the weights, one for x;
- all 28 layers in one cooperative launch, layer L's x being the first H columns of layer L - 1's
  SiLU x up (`CHAIN`), so that the barrier guards a real dependency and a barrier that let a
  program through early shows up as a wrong (NaN-filled) input. (So that 28 such layers neither
  vanish nor overflow, up is all 1s (it reads x's column 0, kept at 1) and each layer is SiLU(x
  gate): the same bytes, random gate weights.);
- SYNCS barriers a layer: the multiplying warps of every program arrive (an atomic add, release)
  after each 1 / SYNCS of a layer's K steps, the x loader waits (acquiring loads) for every
  program's arrival before the next part's x tiles. SYNCS 1 is gate/up's own dependency; 6 is
  about what a whole layer has (q/k/v, attention, o, norm, gate/up, down);
- the weight loader either streams on (`WAIT` 0: it waits only for free ring stages) or waits
  for the same barrier before each part's weights too (`WAIT` 1: the stream restarts at each
  barrier, as separate kernels or the persistent MLP block do).

Beside it, in each child process and one CUDA graph each (`_graph_ms`, 30 replays): the same
stream with no barrier at all, 28 launches of bench/gpu_gluon_ws.py's per-layer kernel and of the
MLP block's gate/up phase (trainer/mlp_block.py), and cuBLAS. Each variant's every layer is
checked against float32 SiLU(x gate^T) x (x up^T) from the kernel's own input for that layer
(bf16 rounding alone is ~3e-3; a stale or NaN input is off by far more), and the barrier's spin
limit flag is read back.

What would decide it: streaming on through SYNCS 6 at close to the barrier-free stream's rate,
and well ahead of the restarting form and the block's phase (0.56 ms, 2.7 TB/s, on an H200).

Each variant runs in its own process (`--one INDEX`), killed after TIMEOUT_S, as
bench/gpu_gluon_ws.py does: a kernel that never finishes (a barrier whose programs are not all
resident; the grid is launched cooperatively so the driver should refuse that instead) costs its
timeout only. `--compile-only` prints each variant's registers, spills and shared memory (ptxas for
sm_90a) and exits 1 if any spills or has its wgmma serialized.
"""

import sys

import torch
from gluon_stream_parts import bench_main, compile_all, print_row, row_line, time_into
from gpu_gluon_ws import LAYERS, PROGRAMS, ROWS, H, I, gate_up_ws
from gpu_gluon_ws import _check_split as check_split
from gpu_gluon_ws import _descs as per_layer_descs

from trainer.gluon_products import gl, gluon
from trainer.gluon_stream import BLOCK_K, REST, TILE, tma_desc

TIMEOUT_S = 90
PER_LAYER = (6, 64, 8, 1)  # bench/gpu_gluon_ws.py's variant for the 28-launch baseline
# (stages, barriers a layer (0: none), the weights wait at each barrier, x chained from the layer before)
VARIANTS = ((6, 0, 0, 0), (6, 1, 0, 1), (6, 6, 0, 1), (6, 6, 1, 1), (6, 1, 1, 1), (4, 6, 0, 1))


def label(variant) -> str:
    stages, syncs, wait, _ = variant
    if not syncs:
        return f"stream s{stages} no barrier"
    return f"stream s{stages} {syncs} barrier{'s' if syncs > 1 else ''}/layer, weights {'wait' if wait else 'ahead'}"


if gluon is not None:
    from triton.experimental.gluon.language.nvidia.hopper import warpgroup_mma_wait

    from trainer.gluon_ring import (
        _arrive,
        _gate_up_step,
        _give_back,
        _load_gate_up,
        _load_tiles,
        _ring,
        _store_act,
        _take,
        _wait_for_all,
    )

    @gluon.jit
    def _weight_loader(w_desc, r_desc, g_bufs, u_bufs, gr_bufs, ur_bufs, w_ready, empty, count_ptr, failed_ptr, lo,
                       I: gl.constexpr, P: gl.constexpr, STEPS: gl.constexpr, LAYERS: gl.constexpr,
                       SYNCS: gl.constexpr, WAIT: gl.constexpr):
        # One warp: every layer's gate and up tiles and remainder boxes, in the order the
        # multiplies take them, each into the next free ring stage. With WAIT, each part of a
        # layer (but the first part of the first) first waits for every program to finish the
        # part before, as the x loader does: the stream restarting at each barrier.
        parts: gl.constexpr = SYNCS if SYNCS > 0 else 1
        part: gl.constexpr = STEPS // parts
        n = gl.to_tensor(0)
        for layer in range(LAYERS):
            for seg in range(parts):
                if (WAIT and SYNCS > 0) and ((layer > 0) | (seg > 0)):
                    _wait_for_all(count_ptr + layer * parts + seg - 1, failed_ptr, P)
                n = _load_gate_up(w_desc, r_desc, layer * 2 * I, lo, seg * part, part, n, g_bufs, u_bufs, gr_bufs,
                                  ur_bufs, w_ready, empty, I)

    @gluon.jit
    def _x_loader(x_desc, x_bufs, x_ready, empty, count_ptr, failed_ptr, P: gl.constexpr, STEPS: gl.constexpr,
                  LAYERS: gl.constexpr, SYNCS: gl.constexpr, CHAIN: gl.constexpr):
        # One warp: layer L's x tiles (rows L * 128 of the acts buffer with CHAIN: layer L - 1's
        # SiLU x up; else rows 0, the input, every layer), each part's only after every program
        # has finished the part before.
        block_m: gl.constexpr = x_desc.block_type.shape[0]
        parts: gl.constexpr = SYNCS if SYNCS > 0 else 1
        part: gl.constexpr = STEPS // parts
        n = gl.to_tensor(0)
        for layer in range(LAYERS):
            for seg in range(parts):
                if (SYNCS > 0) and ((layer > 0) | (seg > 0)):
                    _wait_for_all(count_ptr + layer * parts + seg - 1, failed_ptr, P)
                n = _load_tiles(x_desc, layer * block_m if CHAIN else 0, seg * part, part, n, x_bufs, x_ready, empty)

    @gluon.jit
    def _multiplier(x_bufs, g_bufs, u_bufs, gr_bufs, ur_bufs, x_ready, w_ready, empty, acts_ptr, count_ptr, rows,
                    lo, hi, I: gl.constexpr, STEPS: gl.constexpr, LAYERS: gl.constexpr, SYNCS: gl.constexpr,
                    num_warps: gl.constexpr):
        # One warp group: bench/gpu_gluon_ws.py's multiplier (gate last, at most one product in
        # flight at the loop's back edge, a stage handed back a step late) through every layer;
        # after each part of a layer, one arrival at that part's counter; after a layer's last
        # step, its SiLU x up into rows (L + 1) * 128 of the acts buffer, then the arrival.
        stages: gl.constexpr = x_bufs.shape[0]
        block_m: gl.constexpr = x_bufs.shape[1]
        block_n: gl.constexpr = g_bufs.shape[1]
        block_r: gl.constexpr = gr_bufs.shape[1]
        part: gl.constexpr = STEPS // SYNCS if SYNCS > 0 else STEPS
        main_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                              instr_shape=[16, block_n, 16])
        rest_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                              instr_shape=[16, block_r, 16])
        for layer in range(LAYERS):
            gate = gl.zeros([block_m, block_n], gl.float32, main_layout)
            up = gl.zeros([block_m, block_n], gl.float32, main_layout)
            gate_r = gl.zeros([block_m, block_r], gl.float32, rest_layout)
            up_r = gl.zeros([block_m, block_r], gl.float32, rest_layout)
            for i in range(STEPS):
                n = layer * STEPS + i
                s = n % stages
                _take(x_ready, w_ready, n)
                gate, up, gate_r, up_r = _gate_up_step(x_bufs.index(s), g_bufs.index(s), u_bufs.index(s),
                                                       gr_bufs.index(s), ur_bufs.index(s), gate, up, gate_r, up_r)
                _give_back(empty, n, i > 0)
                if (SYNCS > 1) and (((i + 1) % part == 0) & (i + 1 < STEPS)):
                    gl.atomic_add(count_ptr + n // part, 1, sem="release", scope="gpu")
            gate, up, gate_r, up_r = warpgroup_mma_wait(num_outstanding=0, deps=(gate, up, gate_r, up_r))
            _give_back(empty, layer * STEPS + STEPS, True)  # the layer's last stage
            _store_act(gate, up, gate_r, up_r, acts_ptr + (layer + 1) * block_m * I, lo, hi, rows, I)
            if SYNCS > 0:
                _arrive(count_ptr + (layer * STEPS + STEPS - 1) // part)

    @gluon.jit
    def _stream(x_desc, w_desc, r_desc, acts_ptr, count_ptr, failed_ptr, rows, H: gl.constexpr, I: gl.constexpr,
                P: gl.constexpr, LAYERS: gl.constexpr, STAGES: gl.constexpr, SYNCS: gl.constexpr,
                WAIT: gl.constexpr, CHAIN: gl.constexpr, num_warps: gl.constexpr):
        p = gl.program_id(0)
        lo = p * I // P
        hi = (p + 1) * I // P
        x_bufs, g_bufs, u_bufs, gr_bufs, ur_bufs, x_ready, w_ready, empty = _ring(x_desc, w_desc, r_desc, STAGES)
        steps: gl.constexpr = H // x_desc.block_type.shape[1]
        gl.warp_specialize([
            (_multiplier, (x_bufs, g_bufs, u_bufs, gr_bufs, ur_bufs, x_ready, w_ready, empty, acts_ptr, count_ptr, rows,
                           lo, hi, I, steps, LAYERS, SYNCS, num_warps)),
            (_weight_loader, (w_desc, r_desc, g_bufs, u_bufs, gr_bufs, ur_bufs, w_ready, empty, count_ptr, failed_ptr,
                              lo, I, P, steps, LAYERS, SYNCS, WAIT)),
            (_x_loader, (x_desc, x_bufs, x_ready, empty, count_ptr, failed_ptr, P, steps, LAYERS, SYNCS, CHAIN)),
        ], [1, 1], [24, 24])


def descriptors(acts: torch.Tensor, weights: torch.Tensor):
    """x tiles [128, K step] of the acts buffer [(LAYERS + 1) 128, I] (rows 0: the input; rows
    (L + 1) 128: layer L's SiLU x up), and the stacked weights [LAYERS 2 I, H]'s 64-row tiles and
    8-row remainder boxes (past the last layer's rows the descriptor reads zeros)."""
    return tma_desc(acts, [ROWS, BLOCK_K]), tma_desc(weights, [TILE, BLOCK_K]), tma_desc(weights, [REST, BLOCK_K])


def counters(device) -> torch.Tensor:
    """The barriers' arrival counters (LAYERS x at most 24 parts) and, last, the failed flag."""
    return torch.zeros(LAYERS * (H // BLOCK_K) + 1, device=device, dtype=torch.int32)


def stream(descs, acts: torch.Tensor, count: torch.Tensor, variant, compile_only: bool = False):
    """One launch: every layer's SiLU x up into acts' rows (L + 1) 128. The counters go back to 0
    first (a memset in the graph). With compile_only, the kernel compiled for sm_90a instead."""
    stages, syncs, wait, chain = variant
    args = (*descs, acts, count, count[-1:], ROWS)
    consts = {"H": H, "I": I, "P": PROGRAMS, "LAYERS": LAYERS, "STAGES": stages, "SYNCS": syncs, "WAIT": wait,
              "CHAIN": chain, "num_warps": 4}
    if compile_only:
        from trainer.gluon_products import compile_for_hopper

        return compile_for_hopper(_stream, *args, **consts)
    count[:-1].zero_()  # (the last: the spin limit's flag, kept until read)
    _stream[(PROGRAMS,)](*args, **consts, launch_cooperative_grid=True)
    return None


def compile_only() -> int:
    """Every variant compiled for sm_90a without a GPU (`compile_all`)."""
    acts = torch.empty((LAYERS + 1) * ROWS, I, dtype=torch.bfloat16)
    weights = torch.empty(LAYERS * 2 * I, H, dtype=torch.bfloat16)
    descs, count = descriptors(acts, weights), counters("cpu")
    return compile_all((label(v), lambda v=v: stream(descs, acts, count, v, compile_only=True)) for v in VARIANTS)


def one(index: int) -> None:
    """Variant `index` and the baselines on the same 28 layers, in this process. Prints a JSON
    line after the baselines and the whole row after the variant: one that hangs leaves the first."""
    import torch.nn.functional as F

    from trainer import mlp_block

    variant = VARIANTS[index]
    check_split(REST)
    dev = torch.device("cuda")
    programs = torch.cuda.get_device_properties(dev).multi_processor_count
    gen = torch.Generator(device=dev).manual_seed(0)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, device=dev, generator=gen) * scale).to(torch.bfloat16)

    # Chained through 28 layers, SiLU(x gate) x (x up) would shrink or grow without bound (the
    # product of two linear maps: each layer squares the scale). So up reads x's column 0, which
    # is 1 (u = 1), and gate's first row keeps it 1 (SiLU(1.28125) rounds to 1 in bf16): each
    # layer is SiLU(x gate), whose scale stays within about 10x of 1 over 28 layers at this weight
    # scale (checked on a CPU with the kernel's roundings: 1.0 to 8.8).
    weights = rand(LAYERS * 2 * I, H, scale=1.6 * H ** -0.5)
    layers = weights.view(LAYERS, 2 * I, H)
    layers[:, I:] = 0
    layers[:, I:, 0] = 1
    layers[:, 0] = 0
    layers[:, 0, 0] = 1.28125
    acts = torch.empty((LAYERS + 1) * ROWS, I, device=dev, dtype=torch.bfloat16)
    acts[:ROWS] = rand(ROWS, I)
    acts[:ROWS, 0] = 1
    x = acts[:ROWS, :H].contiguous()
    resid, down, norm = rand(ROWS, H), rand(H, I, scale=I ** -0.5), 1 + 0.1 * rand(H)
    count = counters(dev)
    gb = weights.numel() * 2 / 1e9
    row = {"variant": label(variant), "stages": variant[0], "syncs_per_layer": variant[1], "weights_wait": variant[2],
           "chain": variant[3], "device": torch.cuda.get_device_name(), "sms": programs, "weights_gb": gb, "ms": {}}
    if programs != PROGRAMS:
        row["skipped"] = f"{programs} multiprocessors; the split is {PROGRAMS} programs'"
        print_row(row)
        return

    def time_it(name, run) -> None:
        time_into(row, name, run, gb=gb, ratios=(("vs_block_phase", "block gate/up phase"),))

    shape = mlp_block.BlockShape.for_gpu(dev)
    per_layer = [per_layer_descs(x, w, 64, REST) for w in layers]
    act = torch.empty(ROWS, I, device=dev, dtype=torch.bfloat16)
    time_it("block gate/up phase", lambda: [mlp_block.mlp_block(resid, x, w, down, norm, 1e-6, shape, phases=(1,))
                                            for w in layers])
    time_it("gluon ws per layer", lambda: [gate_up_ws(d, act, ROWS, PER_LAYER) for d in per_layer])
    time_it("cublas gate/up only", lambda: [F.linear(x, w) for w in layers])
    print_row(row)  # the baselines, in case the variant never returns

    descs = descriptors(acts, weights)
    acts[ROWS:] = float("nan")  # an input read before its layer wrote it is NaN
    stream(descs, acts, count, variant)
    torch.cuda.synchronize()
    row["barrier_gave_up"] = bool(count[-1].item())
    errors = []
    for layer in range(LAYERS):
        given = (acts[layer * ROWS:(layer + 1) * ROWS, :H] if variant[3] else x).float()
        gate, up = F.linear(given, layers[layer].float()).split(I, dim=1)
        want = F.silu(gate) * up
        got = acts[(layer + 1) * ROWS:(layer + 2) * ROWS].float()
        errors.append(float((got - want).norm() / want.norm()))
    row["rel_error_worst_layer"] = float(torch.tensor(errors).max())  # (NaN if any is)
    row["rel_error_last_layer"] = errors[-1]
    row["finite"] = bool(torch.isfinite(acts).all())
    time_it("variant", lambda: stream(descs, acts, count, variant))
    row["barrier_gave_up"] |= bool(count[-1].item())
    time_it("block gate/up phase again", lambda: [mlp_block.mlp_block(resid, x, w, down, norm, 1e-6, shape,
                                                                      phases=(1,)) for w in layers])
    print_row(row)


def _line(row: dict) -> str:
    return row_line(row, lambda key: key in ("rel_error_worst_layer", "finite", "barrier_gave_up"))


def main(argv: list[str] | None = None) -> int:
    return bench_main(argv, __doc__, __file__, compile_only, one, VARIANTS, label, TIMEOUT_S, _line,
                      {"layers": LAYERS, "rows": ROWS, "hidden": H, "intermediate": I, "programs": PROGRAMS})


if __name__ == "__main__":
    sys.exit(main())
