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
(Call 81 answered: it does not. docs/benchmarks.md, issue 18.)

Why even the barrier-free stream moves its weights at 3.05 TB/s, below the 4.2 TB/s copy rate
(call 81; what ARCHITECTURE left unmeasured), the twelve variants after the first six ask (session
25, calls 92-99). Each is the barrier-free stream with one thing taken away or changed:
- no products (the ring moves the same weight and x tiles, nothing is multiplied);
- no remainder products (gate's and up's 64-column ones stay);
- 64 rows of x (half the multiplies, half x's L2 reads and half the stores);
- x never loaded (every product, on whatever the stages held; no check);
- no products, 64 rows; and no products, 64 rows, 8 stages;
- no remainders loaded or multiplied (two 8 KB weight loads a step instead of those and two 1 KB
  boxes: 11% fewer bytes, so compare `moved_tb_s`, the bytes moved a second);
- no products, each stage handed back as soon as taken rather than a step late;
- no products, nothing stored at a layer's end;
- SiLU x up's 64-column tile written by one TMA store from shared memory, with 6 and 5 stages, and
  through 6 barriers a layer (its writes waited for before each arrival). A TMA store must start
  on 16 bytes, so these give each program whole 8-column groups (64 or 72 columns).
Whichever brings the rate back to the copy rate names the limiter: the ring, the narrow products,
the tensor work at 128 rows, x's reads from the L2, or the stores.

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
# (stages, barriers a layer (0: none), the weights wait at each barrier, x chained from the layer before,
# products (FULL; MAIN: gate's and up's tiles only, not the 8-column remainders; NONE: the ring
# moves the same bytes and nothing is multiplied; NO_X: every product, but x's tiles are never
# loaded, their stages handed over as they are; NO_REST: as MAIN, and the remainder boxes are
# not loaded either: two weight loads a step, not four; EARLY: as NONE, each stage handed back as
# soon as taken, not a step late; NO_STORE: as NONE, nothing stored at a layer's end; TMA_STORE:
# every product, the 64-column tile's SiLU x up stored through shared memory by one TMA store that
# runs on while the next layer's steps do, the shares whole 8-column groups), x's rows (128; 64:
# half the products and x)).
FULL, MAIN, NONE, NO_X, NO_REST, EARLY, NO_STORE, TMA_STORE = 2, 1, 0, 3, 4, 5, 6, 7
VARIANTS = ((6, 0, 0, 0, FULL, ROWS), (6, 1, 0, 1, FULL, ROWS), (6, 6, 0, 1, FULL, ROWS), (6, 6, 1, 1, FULL, ROWS),
            (6, 1, 1, 1, FULL, ROWS), (4, 6, 0, 1, FULL, ROWS),
            # what holds the barrier-free stream below the copy rate (session 25)
            (6, 0, 0, 0, NONE, ROWS), (6, 0, 0, 0, MAIN, ROWS), (6, 0, 0, 0, FULL, 64), (6, 0, 0, 0, NO_X, ROWS),
            (6, 0, 0, 0, NONE, 64), (6, 0, 0, 0, NO_REST, ROWS),
            (6, 0, 0, 0, EARLY, ROWS), (6, 0, 0, 0, NO_STORE, ROWS), (8, 0, 0, 0, NONE, 64),
            (6, 0, 0, 0, TMA_STORE, ROWS), (5, 0, 0, 0, TMA_STORE, ROWS), (6, 6, 0, 1, TMA_STORE, ROWS))


def label(variant) -> str:
    stages, syncs, wait, _, mma, rows = variant
    what = ({FULL: "", MAIN: ", no remainder products", NONE: ", no products", NO_X: ", x never loaded",
             NO_REST: ", no remainders loaded or multiplied", EARLY: ", no products, stages back early",
             NO_STORE: ", no products, nothing stored", TMA_STORE: ", SiLU x up by TMA store"}[mma]
            + ("" if rows == ROWS else f", {rows} rows"))
    if not syncs:
        return f"stream s{stages} no barrier{what}"
    return (f"stream s{stages} {syncs} barrier{'s' if syncs > 1 else ''}/layer, weights {'wait' if wait else 'ahead'}"
            f"{what}")


if gluon is not None:
    from triton.experimental.gluon.language.nvidia.hopper import (
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )

    from trainer.gluon_mlp import _swiglu
    from trainer.gluon_ring import (
        _arrive,
        _free,
        _gate_up_step,
        _give_back,
        _load_gate_up,
        _load_tiles,
        _ring,
        _share,
        _store_act,
        _store_rest,
        _take,
        _tma_out,
        _wait_for_all,
        _writes_done,
    )

    @gluon.jit
    def _load_tiles2(w_desc, base, lo, first, steps, n, g_bufs, u_bufs, ready, empty, I: gl.constexpr):
        # (NO_REST) _load_gate_up without the remainder boxes
        stages: gl.constexpr = g_bufs.shape[0]
        block_k: gl.constexpr = g_bufs.shape[2]
        n = gl.to_tensor(n)
        for j in range(steps):
            s = n % stages
            _free(empty, n)
            bar = ready.index(s)
            mbarrier.expect(bar, 2 * w_desc.block_type.nbytes)
            k = (first + j) * block_k
            tma.async_copy_global_to_shared(w_desc, [base + lo, k], bar, g_bufs.index(s))
            tma.async_copy_global_to_shared(w_desc, [base + I + lo, k], bar, u_bufs.index(s))
            n += 1
        return n

    @gluon.jit
    def _weight_loader(w_desc, r_desc, g_bufs, u_bufs, gr_bufs, ur_bufs, w_ready, empty, count_ptr, failed_ptr, lo,
                       I: gl.constexpr, P: gl.constexpr, STEPS: gl.constexpr, LAYERS: gl.constexpr,
                       SYNCS: gl.constexpr, WAIT: gl.constexpr, MMA: gl.constexpr):
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
                if MMA == 4:
                    n = _load_tiles2(w_desc, layer * 2 * I, lo, seg * part, part, n, g_bufs, u_bufs, w_ready, empty,
                                     I)
                else:
                    n = _load_gate_up(w_desc, r_desc, layer * 2 * I, lo, seg * part, part, n, g_bufs, u_bufs,
                                      gr_bufs, ur_bufs, w_ready, empty, I)

    @gluon.jit
    def _x_loader(x_desc, x_bufs, x_ready, empty, count_ptr, failed_ptr, P: gl.constexpr, STEPS: gl.constexpr,
                  LAYERS: gl.constexpr, SYNCS: gl.constexpr, CHAIN: gl.constexpr, MMA: gl.constexpr):
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
                if MMA == 3:  # (NO_X) each stage's x handed over as it is
                    for _ in range(part):
                        _free(empty, n)
                        mbarrier.arrive(x_ready.index(n % x_bufs.shape[0]))
                        n += 1
                else:
                    n = _load_tiles(x_desc, layer * block_m if CHAIN else 0, seg * part, part, n, x_bufs, x_ready,
                                    empty)

    @gluon.jit
    def _main_step(xs, g_buf, u_buf, gate, up, gate_r, up_r):
        # _gate_up_step without the two remainder products (MMA == MAIN)
        up = warpgroup_mma(xs, u_buf.permute((1, 0)), up, is_async=True)
        gate = warpgroup_mma(xs, g_buf.permute((1, 0)), gate, is_async=True)
        gate, up = warpgroup_mma_wait(num_outstanding=1, deps=(gate, up))
        return gate, up, gate_r, up_r

    @gluon.jit
    def _multiplier(x_bufs, g_bufs, u_bufs, gr_bufs, ur_bufs, x_ready, w_ready, empty, acts_ptr, a_desc, out_smem,
                    count_ptr, rows, lo, hi, I: gl.constexpr, STEPS: gl.constexpr, LAYERS: gl.constexpr,
                    SYNCS: gl.constexpr, MMA: gl.constexpr, num_warps: gl.constexpr):
        # One warp group: bench/gpu_gluon_ws.py's multiplier (gate last, at most one product in
        # flight at the loop's back edge, a stage handed back a step late) through every layer;
        # after each part of a layer, one arrival at that part's counter; after a layer's last
        # step, its SiLU x up into rows (L + 1) * block_m of the acts buffer, then the arrival.
        # MMA MAIN leaves the remainders' accumulators at 0, NONE every accumulator.
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
                if (MMA == 2) or (MMA == 3) or (MMA == 7):
                    gate, up, gate_r, up_r = _gate_up_step(x_bufs.index(s), g_bufs.index(s), u_bufs.index(s),
                                                           gr_bufs.index(s), ur_bufs.index(s), gate, up, gate_r, up_r)
                elif (MMA == 1) or (MMA == 4):
                    gate, up, gate_r, up_r = _main_step(x_bufs.index(s), g_bufs.index(s), u_bufs.index(s), gate, up,
                                                        gate_r, up_r)
                if MMA == 5:  # (EARLY) this step's stage, at once
                    _give_back(empty, n + 1, True)
                else:
                    _give_back(empty, n, i > 0)
                if (SYNCS > 1) and (((i + 1) % part == 0) & (i + 1 < STEPS)):
                    gl.atomic_add(count_ptr + n // part, 1, sem="release", scope="gpu")
            if (MMA == 2) or (MMA == 3) or (MMA == 7):
                gate, up, gate_r, up_r = warpgroup_mma_wait(num_outstanding=0, deps=(gate, up, gate_r, up_r))
            elif (MMA == 1) or (MMA == 4):
                gate, up = warpgroup_mma_wait(num_outstanding=0, deps=(gate, up))
            if MMA != 5:
                _give_back(empty, layer * STEPS + STEPS, True)  # the layer's last stage
            if MMA == 7:
                # the tile by one TMA store that runs on by itself (trainer/gluon_ring.py's), the
                # remainder's columns by plain stores
                _tma_out(_swiglu(gate, up, out_smem.dtype), a_desc, out_smem, out_smem, [(layer + 1) * block_m, lo])
                _store_rest(gate_r, up_r, acts_ptr + (layer + 1) * block_m * I, lo + block_n, hi, rows, I)
            elif MMA != 6:
                _store_act(gate, up, gate_r, up_r, acts_ptr + (layer + 1) * block_m * I, lo, hi, rows, I)
            if SYNCS > 0:
                if MMA == 7:  # the store's writes done, not only its reads of shared memory, before
                    # the arrival says so
                    _writes_done()
                _arrive(count_ptr + (layer * STEPS + STEPS - 1) // part)
        if MMA == 7:
            tma.store_wait(0)  # (its shared memory stays until the last store has read it)

    @gluon.jit
    def _stream(x_desc, w_desc, r_desc, a_desc, acts_ptr, count_ptr, failed_ptr, rows, H: gl.constexpr,
                I: gl.constexpr,
                P: gl.constexpr, LAYERS: gl.constexpr, STAGES: gl.constexpr, SYNCS: gl.constexpr,
                WAIT: gl.constexpr, CHAIN: gl.constexpr, MMA: gl.constexpr, num_warps: gl.constexpr):
        p = gl.program_id(0)
        # (TMA_STORE: shares of whole 8-column groups, 64 or 72 columns: a TMA store's first column
        # must be 16-byte aligned, or it is an illegal instruction, calls 96-97)
        group: gl.constexpr = 1 + 7 * (MMA == 7)
        lo, hi = _share(p, I, P, group)
        x_bufs, g_bufs, u_bufs, gr_bufs, ur_bufs, x_ready, w_ready, empty = _ring(x_desc, w_desc, r_desc, STAGES)
        steps: gl.constexpr = H // x_desc.block_type.shape[1]
        out_smem = gl.allocate_shared_memory(a_desc.dtype, a_desc.block_type.shape, a_desc.layout)
        gl.warp_specialize([
            (_multiplier, (x_bufs, g_bufs, u_bufs, gr_bufs, ur_bufs, x_ready, w_ready, empty, acts_ptr, a_desc,
                           out_smem, count_ptr, rows, lo, hi, I, steps, LAYERS, SYNCS, MMA, num_warps)),
            (_weight_loader, (w_desc, r_desc, g_bufs, u_bufs, gr_bufs, ur_bufs, w_ready, empty, count_ptr, failed_ptr,
                              lo, I, P, steps, LAYERS, SYNCS, WAIT, MMA)),
            (_x_loader, (x_desc, x_bufs, x_ready, empty, count_ptr, failed_ptr, P, steps, LAYERS, SYNCS, CHAIN, MMA)),
        ], [1, 1], [24, 24])


def descriptors(acts: torch.Tensor, weights: torch.Tensor, rows: int = ROWS):
    """x tiles [rows, K step] of the acts buffer [(LAYERS + 1) 128, I] (rows 0: the input; rows
    (L + 1) rows: layer L's SiLU x up), and the stacked weights [LAYERS 2 I, H]'s 64-row tiles and
    8-row remainder boxes (past the last layer's rows the descriptor reads zeros); and acts' [rows,
    64] boxes that TMA_STORE writes."""
    return (tma_desc(acts, [rows, BLOCK_K]), tma_desc(weights, [TILE, BLOCK_K]), tma_desc(weights, [REST, BLOCK_K]),
            tma_desc(acts, [rows, TILE]))


def counters(device) -> torch.Tensor:
    """The barriers' arrival counters (LAYERS x at most 24 parts) and, last, the failed flag."""
    return torch.zeros(LAYERS * (H // BLOCK_K) + 1, device=device, dtype=torch.int32)


def stream(descs, acts: torch.Tensor, count: torch.Tensor, variant, compile_only: bool = False):
    """One launch: every layer's SiLU x up into acts' rows (L + 1) 128. The counters go back to 0
    first (a memset in the graph). With compile_only, the kernel compiled for sm_90a instead."""
    stages, syncs, wait, chain, mma, rows = variant
    args = (*descs, acts, count, count[-1:], rows)
    consts = {"H": H, "I": I, "P": PROGRAMS, "LAYERS": LAYERS, "STAGES": stages, "SYNCS": syncs, "WAIT": wait,
              "CHAIN": chain, "MMA": mma, "num_warps": 4}
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
    count = counters("cpu")
    return compile_all((label(v), lambda v=v: stream(descriptors(acts, weights, v[5]), acts, count, v,
                                                     compile_only=True)) for v in VARIANTS)


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
    stages, syncs, wait, chain, mma, rows = variant
    row = {"variant": label(variant), "stages": stages, "syncs_per_layer": syncs, "weights_wait": wait,
           "chain": chain, "rows": rows,
           "products": {FULL: "full", MAIN: "no remainders", NONE: "none", NO_X: "full, x never loaded",
                        NO_REST: "no remainders, none loaded", EARLY: "none, stages back early",
                        NO_STORE: "none, nothing stored", TMA_STORE: "full, stored by TMA"}[mma],
           "device": torch.cuda.get_device_name(), "sms": programs, "weights_gb": gb, "ms": {}}
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

    descs = descriptors(acts, weights, rows)
    acts[ROWS:] = float("nan")  # an input read before its layer wrote it is NaN
    stream(descs, acts, count, variant)
    torch.cuda.synchronize()
    row["barrier_gave_up"] = bool(count[-1].item())
    errors = []
    for layer in range(LAYERS if mma not in (NO_X, NO_STORE) else 0):  # (NO_X multiplies what its stages held)
        given = (acts[layer * rows:(layer + 1) * rows, :H] if chain else x[:rows]).float()
        gate, up = F.linear(given, layers[layer].float()).split(I, dim=1)
        if mma in (MAIN, NO_REST):  # the remainder columns of every share are left at SiLU(0) x 0
            kept = torch.zeros(I, dtype=torch.bool, device=dev)
            for p in range(PROGRAMS):
                kept[p * I // PROGRAMS:p * I // PROGRAMS + TILE] = True
            gate, up = gate * kept, up * kept
        elif mma in (NONE, EARLY):
            gate, up = gate * 0, up * 0
        want = F.silu(gate) * up
        got = acts[(layer + 1) * rows:(layer + 2) * rows].float()
        errors.append(float((got - want).norm() / want.norm()) if mma not in (NONE, EARLY)
                      else float((got - want).abs().max()))
    if errors:
        row["rel_error_worst_layer" if mma not in (NONE, EARLY) else "abs_error_worst_layer (zeros wanted)"] = float(
            torch.tensor(errors).max())  # (NaN if any is)
        row["rel_error_last_layer"] = errors[-1]
        row["finite"] = bool(torch.isfinite(acts[:(LAYERS + 1) * rows]).all())
    else:
        row["check"] = "none: x never loaded" if mma == NO_X else "none: nothing stored"
    time_it("variant", lambda: stream(descs, acts, count, variant))
    # the weight bytes its loads moved (remainder boxes overlap the next share's rows)
    moved = LAYERS * PROGRAMS * (H // BLOCK_K) * 2 * (TILE + (REST if mma != NO_REST else 0)) * BLOCK_K * 2 / 1e9
    row["moved_gb"] = moved
    if isinstance(row["ms"]["variant"], float):
        row["moved_tb_s"] = moved / row["ms"]["variant"]
    row["barrier_gave_up"] |= bool(count[-1].item())
    time_it("block gate/up phase again", lambda: [mlp_block.mlp_block(resid, x, w, down, norm, 1e-6, shape,
                                                                      phases=(1,)) for w in layers])
    print_row(row)


def _line(row: dict) -> str:
    return row_line(row, lambda key: key in ("rel_error_worst_layer", "abs_error_worst_layer (zeros wanted)", "finite",
                                             "barrier_gave_up", "check", "moved_tb_s"))


def main(argv: list[str] | None = None) -> int:
    return bench_main(argv, __doc__, __file__, compile_only, one, VARIANTS, label, TIMEOUT_S, _line,
                      {"layers": LAYERS, "rows": ROWS, "hidden": H, "intermediate": I, "programs": PROGRAMS})


if __name__ == "__main__":
    sys.exit(main())
