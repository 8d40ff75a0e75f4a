"""The MLP block of trainer/mlp_block.py written in Gluon, so that each phase's weights can be in
flight before the phase may start.

    from trainer.mlp_block import BlockShape, mlp_block
    shape = BlockShape.for_gpu(device, gluon=True, pdl=True)
    x, h = mlp_block(x, h, layer.gate_up, layer.down, next_norm, eps, shape)   # runs block() here

Same split, arithmetic and rounding as the Triton block: program p of P (one per multiprocessor)
owns SiLU x up's columns [p I / P, (p + 1) I / P), then one (64-column tile, K slice) of the down
product, then row p's residual + RMSNorm, with device-wide barriers between the phases. What
Triton could not express (docs/benchmarks.md, issue 18: a Triton loop issues its first loads at
the loop, after whatever the kernel waited for) is written out here with TMA, mbarriers and
wgmma, one warp group and a ring of STAGES shared-memory stages:

- Launched with programmatic dependent launch (`pdl`), a program issues the weight loads of its
  first AHEAD gate/up steps before `griddepcontrol.wait` (the weights are not written during a
  step), then its input's (the grid before's output) and the ring's other stages.
- Before the first barrier, the ring is empty (every gate/up step has been multiplied), so the
  program issues the loads of its first STAGES down weight tiles (`cross`); after the barrier it
  adds the activation tiles they wait for.
- The remainder (the share's 3-4 columns past its 64-column tile) is read as an 8-row TMA box of
  gate and one of up, and multiplied by an 8-column wgmma: the rows past the share are the next
  program's, multiplied and not stored. The Triton block reads it by masked pointer loads.

A barrier is trainer/mlp_block.py's: an arrival counter (atomic add, release), waiters polling it
with acquiring loads, a spin limit that sets the `failed` flag, the counters back to 0 before the
kernel ends; TMA reads of what other programs wrote after a proxy fence. The grid is launched
cooperatively (the driver refuses a grid whose programs cannot all be resident); with `pdl` too.

Measured on an H200 (docs/benchmarks.md, issue 18, calls 64-74; bench/gpu_gluon_mlp.py): correct
(one layer's x and h bitwise the Triton block's, 28 layers within 4.2e-4) and slower: 1.12-1.14 ms
for 28 layers against 1.00, and the decode step with it 1.911 against 1.760 ms at the first bucket.
The down phase keeps pace with Triton's (11.3 against 10.9 us a layer); the gate/up phase does not:
its loads alone, without the multiplies, take 20 us a layer, as long as Triton's whole phase. So
the decode engine times it only with RLTUI_DECODE_GLUON_MLP=1 (trainer/decode_graphs.gluon_block).

CUDA on Hopper only; Triton's interpreter does not run Gluon: the tests compile the kernel for
sm_90a (Triton's own ptxas, no GPU) and check its shared memory, spills and instructions, and the
GPU benchmark (bench/gpu_gluon_mlp.py) checks its outputs against the Triton block's.
"""

from __future__ import annotations

import torch

from trainer.gluon_products import BLOCK_K, BLOCK_M, gl, gluon

TILE = 64  # a share's main tile of gate (and of up) columns

if gluon is not None:
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )

    from trainer.gluon_products import _grid_control

    SPIN_LIMIT = gl.constexpr(1 << 20)  # reads of a barrier's counter before a program gives up (~1 s)

    @gluon.jit
    def _load_acquire(ptr):
        return gl.inline_asm_elementwise("ld.acquire.gpu.global.b32 $0, [$1];", "=r,l", [ptr], dtype=gl.int32,
                                         is_pure=False, pack=1)

    @gluon.jit
    def _arrive_and_wait(count_ptr, failed_ptr, programs):
        # mlp_block._arrive_and_wait: every thread's writes, then one release at GPU scope; wait,
        # acquiring; TMA reads after it must see plain stores: a proxy fence.
        gl.thread_barrier()
        gl.atomic_add(count_ptr, 1, sem="release", scope="gpu")
        reads = 0
        while (_load_acquire(count_ptr) < programs) & (reads < SPIN_LIMIT):
            reads += 1
        if reads >= SPIN_LIMIT:
            gl.atomic_xchg(failed_ptr, 1)
        gl.thread_barrier()
        gl.inline_asm_elementwise("fence.proxy.async.global; mov.u32 $0, 0;", "=r", [], dtype=gl.int32,
                                  is_pure=False, pack=1)

    @gluon.jit
    def _reset_barriers(sync_ptr, p, P: gl.constexpr):
        # as mlp_block._reset_barriers
        if p == 0:
            gl.atomic_xchg(sync_ptr, 0)
        if gl.atomic_add(sync_ptr + 2, 1, sem="acq_rel", scope="gpu") == P - 1:
            gl.atomic_xchg(sync_ptr + 1, 0)
            gl.atomic_xchg(sync_ptr + 2, 0)

    @gluon.jit
    def add_norm_row(part_ptr, res_ptr, norm_ptr, res_out_ptr, h_out_ptr, row, rows, eps, H: gl.constexpr,
                     SPLITS: gl.constexpr, NORM_BLOCK: gl.constexpr, num_warps: gl.constexpr):
        # Row `row`: res_out = res + the SPLITS float32 partials [SPLITS, rows, H] summed in split
        # order and rounded to the output's type (as a product's output), h_out = RMSNorm of it
        # with `norm` (res_out may be res: in place); triton_products.add_norm_row's arithmetic
        row_layout: gl.constexpr = gl.BlockedLayout([4], [32], [num_warps], [0])
        cols = gl.arange(0, NORM_BLOCK, layout=row_layout)
        inside = cols < H
        y = gl.zeros([NORM_BLOCK], gl.float32, row_layout)
        for q in gl.static_range(SPLITS):
            y += gl.load(part_ptr + q * rows * H + row * H + cols, mask=inside, other=0.0, cache_modifier=".cg")
        odtype: gl.constexpr = res_out_ptr.dtype.element_ty
        x = (gl.load(res_ptr + row * H + cols, mask=inside, other=0.0).to(gl.float32)
             + y.to(odtype).to(gl.float32)).to(odtype)
        gl.store(res_out_ptr + row * H + cols, x, mask=inside)
        xf = x.to(gl.float32)
        rstd = 1.0 / gl.sqrt(gl.sum(xf * xf, 0) / H + eps)
        normed = (xf * rstd).to(odtype).to(gl.float32)
        weight = gl.load(norm_ptr + cols, mask=inside, other=0.0).to(gl.float32)
        gl.store(h_out_ptr + row * H + cols, (weight * normed).to(odtype), mask=inside)

    @gluon.jit
    def _swiglu(gate, up, dtype: gl.constexpr):
        # triton_products.swiglu_tile: each product rounded to dtype first, SiLU's result too
        g = gate.to(dtype).to(gl.float32)
        silu = (g / (1.0 + gl.exp(-g))).to(dtype).to(gl.float32)
        return (silu * up.to(dtype).to(gl.float32)).to(dtype)

    @gluon.jit
    def _gate_up_weights(gu_desc, r_desc, bar, g_buf, u_buf, gr_buf, ur_buf, lo, k, I: gl.constexpr, pred=True,
                         NO_REST: gl.constexpr = False):
        tma.async_copy_global_to_shared(gu_desc, [lo, k], bar, g_buf, pred=pred)
        tma.async_copy_global_to_shared(gu_desc, [I + lo, k], bar, u_buf, pred=pred)
        if not NO_REST:
            tma.async_copy_global_to_shared(r_desc, [lo + gu_desc.block_type.shape[0], k], bar, gr_buf, pred=pred)
            tma.async_copy_global_to_shared(r_desc, [I + lo + gu_desc.block_type.shape[0], k], bar, ur_buf, pred=pred)

    @gluon.jit
    def _mlp_kernel(x_desc, gu_desc, r_desc, act_desc, down_desc, act_ptr, part_ptr, res_ptr, norm_ptr, res_out_ptr,
                    h_out_ptr, sync_ptr, rows, eps, H: gl.constexpr, I: gl.constexpr, P: gl.constexpr,
                    STAGES: gl.constexpr, AHEAD: gl.constexpr, SPLITS: gl.constexpr, TILES_N: gl.constexpr,
                    NORM_BLOCK: gl.constexpr, PHASE: gl.constexpr, PDL: gl.constexpr, CROSS: gl.constexpr,
                    num_warps: gl.constexpr, NO_REST: gl.constexpr = False, NO_MMA: gl.constexpr = False,
                    LOADS: gl.constexpr = 3):
        # PHASE 0: the three phases with barriers between them; 1, 2 or 3: that phase alone (a
        # benchmark's timing). AHEAD: gate/up steps whose weights are asked for before the wait
        # (PDL). CROSS: the first STAGES down tiles asked for before the first barrier. NO_REST: the
        # remainder left out, a benchmark's timing only (its columns are not written); NO_MMA: the
        # gate/up loop's loads without its products (a timing only); LOADS (with NO_MMA): 1 x's
        # tiles only, 2 the weights' only, 3 both.
        p = gl.program_id(0)
        block_m: gl.constexpr = x_desc.block_type.shape[0]
        block_k: gl.constexpr = x_desc.block_type.shape[1]
        tile: gl.constexpr = gu_desc.block_type.shape[0]
        rest: gl.constexpr = r_desc.block_type.shape[0]
        down_n: gl.constexpr = down_desc.block_type.shape[0]
        steps1: gl.constexpr = H // block_k
        steps_all: gl.constexpr = I // block_k
        bytes1: gl.constexpr = ((x_desc.block_type.nbytes if LOADS & 1 else 0)
                                + (2 * gu_desc.block_type.nbytes + (0 if NO_REST else 2 * r_desc.block_type.nbytes)
                                   if LOADS & 2 else 0))
        bytes2: gl.constexpr = act_desc.block_type.nbytes + down_desc.block_type.nbytes
        dtype: gl.constexpr = act_ptr.dtype.element_ty

        x_bufs = gl.allocate_shared_memory(x_desc.dtype, [STAGES] + x_desc.block_type.shape, x_desc.layout)
        g_bufs = gl.allocate_shared_memory(gu_desc.dtype, [STAGES] + gu_desc.block_type.shape, gu_desc.layout)
        u_bufs = gl.allocate_shared_memory(gu_desc.dtype, [STAGES] + gu_desc.block_type.shape, gu_desc.layout)
        gr_bufs = gl.allocate_shared_memory(r_desc.dtype, [STAGES] + r_desc.block_type.shape, r_desc.layout)
        ur_bufs = gl.allocate_shared_memory(r_desc.dtype, [STAGES] + r_desc.block_type.shape, r_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
        fence_async_shared()
        # ring steps before the down phase's: step u uses stage u % STAGES, barrier phase (u // STAGES) & 1
        used: gl.constexpr = steps1 if PHASE == 0 or PHASE == 1 else 0

        # (1) gate/up with SiLU x up into act's columns [lo, hi)
        lo = p * I // P
        hi = (p + 1) * I // P
        main_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                              instr_shape=[16, tile, 16])
        rest_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                              instr_shape=[16, rest, 16])
        if PHASE == 0 or PHASE == 1:
            for i in gl.static_range(STAGES):
                mbarrier.expect(ready.index(i), bytes1)
                if PDL and i < AHEAD:
                    _gate_up_weights(gu_desc, r_desc, ready.index(i), g_bufs.index(i), u_bufs.index(i),
                                     gr_bufs.index(i), ur_bufs.index(i), lo, i * block_k, I, True, NO_REST)
            if PDL:
                _grid_control("griddepcontrol.wait")
            for i in gl.static_range(STAGES):
                if LOADS & 1:
                    tma.async_copy_global_to_shared(x_desc, [0, i * block_k], ready.index(i), x_bufs.index(i))
                if (not PDL or i >= AHEAD) and LOADS & 2:
                    _gate_up_weights(gu_desc, r_desc, ready.index(i), g_bufs.index(i), u_bufs.index(i),
                                     gr_bufs.index(i), ur_bufs.index(i), lo, i * block_k, I, True, NO_REST)
            gate = gl.zeros([block_m, tile], gl.float32, main_layout)
            up = gl.zeros([block_m, tile], gl.float32, main_layout)
            gate_r = gl.zeros([block_m, rest], gl.float32, rest_layout)
            up_r = gl.zeros([block_m, rest], gl.float32, rest_layout)
            for i in range(steps1):
                s = i % STAGES
                mbarrier.wait(ready.index(s), (i // STAGES) & 1)
                xs = x_bufs.index(s)
                if not NO_MMA:
                    gate = warpgroup_mma(xs, g_bufs.index(s).permute((1, 0)), gate, is_async=True)
                    up = warpgroup_mma(xs, u_bufs.index(s).permute((1, 0)), up, is_async=True)
                if not NO_REST and not NO_MMA:
                    gate_r = warpgroup_mma(xs, gr_bufs.index(s).permute((1, 0)), gate_r, is_async=True)
                    up_r = warpgroup_mma(xs, ur_bufs.index(s).permute((1, 0)), up_r, is_async=True)
                # this step's four products stay in flight; the step before's have finished, so its
                # stage takes the step STAGES after it (as Triton's own pipeline does)
                gate, up, gate_r, up_r = warpgroup_mma_wait(num_outstanding=2 if NO_REST else 4,
                                                            deps=(gate, up, gate_r, up_r))
                # (predicated, not branched: a branch here has ptxas serialize the wgmma, C7514)
                refill = (i > 0) & (i - 1 + STAGES < steps1)
                sp = (i + STAGES - 1) % STAGES
                k = (i - 1 + STAGES) * block_k
                mbarrier.expect(ready.index(sp), bytes1, pred=refill)
                if LOADS & 1:
                    tma.async_copy_global_to_shared(x_desc, [0, k], ready.index(sp), x_bufs.index(sp), pred=refill)
                if LOADS & 2:
                    _gate_up_weights(gu_desc, r_desc, ready.index(sp), g_bufs.index(sp), u_bufs.index(sp),
                                     gr_bufs.index(sp), ur_bufs.index(sp), lo, k, I, refill, NO_REST)
            gate, up, gate_r, up_r = warpgroup_mma_wait(num_outstanding=0, deps=(gate, up, gate_r, up_r))
            m1 = gl.arange(0, block_m, layout=gl.SliceLayout(1, main_layout))
            n1 = lo + gl.arange(0, tile, layout=gl.SliceLayout(0, main_layout))
            gl.store(act_ptr + m1[:, None] * I + n1[None, :], _swiglu(gate, up, dtype), mask=(m1 < rows)[:, None])
            mr = gl.arange(0, block_m, layout=gl.SliceLayout(1, rest_layout))
            nr = lo + tile + gl.arange(0, rest, layout=gl.SliceLayout(0, rest_layout))
            gl.store(act_ptr + mr[:, None] * I + nr[None, :], _swiglu(gate_r, up_r, dtype),
                     mask=(mr < rows)[:, None] & (nr < hi)[None, :] & (not NO_REST))

        # (2) down: program (tile, split) < TILES_N x SPLITS, a float32 partial [split, rows, tile's columns]
        has_down = p < TILES_N * SPLITS
        d_tile = p % TILES_N
        split = p // TILES_N
        k_lo = (split * steps_all // SPLITS) * block_k
        steps2 = (((split + 1) * steps_all // SPLITS) * block_k - k_lo) // block_k
        if PHASE == 0 or PHASE == 2:  # noqa: SIM102 - a constexpr test, then a runtime one
            if has_down and (CROSS or PHASE == 2):
                for j in gl.static_range(STAGES):
                    bar = ready.index((used + j) % STAGES)
                    mbarrier.expect(bar, bytes2)
                    tma.async_copy_global_to_shared(down_desc, [d_tile * down_n, k_lo + j * block_k], bar,
                                                    g_bufs.index((used + j) % STAGES))
        if PHASE == 0:
            _arrive_and_wait(sync_ptr, sync_ptr + 3, P)
        if PHASE == 0 or PHASE == 2:  # noqa: SIM102 - a constexpr test, then a runtime one
            if has_down:
                for j in gl.static_range(STAGES):
                    if not (CROSS or PHASE == 2):
                        mbarrier.expect(ready.index((used + j) % STAGES), bytes2)
                        tma.async_copy_global_to_shared(down_desc, [d_tile * down_n, k_lo + j * block_k],
                                                        ready.index((used + j) % STAGES),
                                                        g_bufs.index((used + j) % STAGES))
                    tma.async_copy_global_to_shared(act_desc, [0, k_lo + j * block_k], ready.index((used + j) % STAGES),
                                                    x_bufs.index((used + j) % STAGES))
                down_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                                      instr_shape=[16, down_n, 16])
                acc = gl.zeros([block_m, down_n], gl.float32, down_layout)
                for j in range(steps2):
                    u = used + j
                    sd = u % STAGES
                    mbarrier.wait(ready.index(sd), (u // STAGES) & 1)
                    acc = warpgroup_mma(x_bufs.index(sd), g_bufs.index(sd).permute((1, 0)), acc, is_async=True)
                    acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
                    refill2 = (j > 0) & (j - 1 + STAGES < steps2)
                    sq = (u + STAGES - 1) % STAGES
                    kd = k_lo + (j - 1 + STAGES) * block_k
                    mbarrier.expect(ready.index(sq), bytes2, pred=refill2)
                    tma.async_copy_global_to_shared(down_desc, [d_tile * down_n, kd], ready.index(sq),
                                                    g_bufs.index(sq), pred=refill2)
                    tma.async_copy_global_to_shared(act_desc, [0, kd], ready.index(sq), x_bufs.index(sq),
                                                    pred=refill2)
                acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                md = gl.arange(0, block_m, layout=gl.SliceLayout(1, down_layout))
                nd = d_tile * down_n + gl.arange(0, down_n, layout=gl.SliceLayout(0, down_layout))
                gl.store(part_ptr + split * rows * H + md[:, None] * H + nd[None, :], acc,
                         mask=(md < rows)[:, None])
        if PHASE == 0:
            _arrive_and_wait(sync_ptr + 1, sync_ptr + 3, P)
            _reset_barriers(sync_ptr, p, P)

        # (3) row p's residual + RMSNorm (triton_products.add_norm_row's arithmetic)
        if PHASE == 0 or PHASE == 3:
            for start in range(0, block_m, P):
                row = start + p
                if row < rows:
                    add_norm_row(part_ptr, res_ptr, norm_ptr, res_out_ptr, h_out_ptr, row, rows, eps, H, SPLITS,
                                 NORM_BLOCK, num_warps)


def fits(rows: int, hidden: int, intermediate: int, shape) -> str | None:
    """Why this kernel does not take these widths with `shape` (a mlp_block.BlockShape), or None."""
    p = shape.programs
    shares = [(q + 1) * intermediate // p - q * intermediate // p for q in range(p)]
    # (down's tiles go through the ring's [TILE, BLOCK_K] gate buffers: the same shape)
    if rows > BLOCK_M or shape.block_k != BLOCK_K or shape.down_n != TILE or shape.rest not in (8, 16):
        return (f"rows {rows} (at most {BLOCK_M}), K step {shape.block_k} ({BLOCK_K}), down tile {shape.down_n} "
                f"({TILE}), remainder rows {shape.rest} (8 or 16)")
    if min(shares) < TILE or max(shares) > TILE + shape.rest:
        return (f"{p} programs' shares of {intermediate} columns ({min(shares)}-{max(shares)}) are not {TILE} + up to "
                f"{shape.rest}")
    if hidden % BLOCK_K or intermediate % BLOCK_K or hidden % shape.down_n or hidden // shape.down_n > p:
        return (f"hidden {hidden} x intermediate {intermediate} do not tile in {BLOCK_K} steps and "
                f"{shape.down_n} columns")
    least_down = intermediate // BLOCK_K // shape.plan(hidden, intermediate)["SPLITS"]  # a down slice's K steps
    if not 1 <= shape.ahead <= shape.stages or min(hidden // BLOCK_K, least_down) < shape.stages:
        return (f"ahead {shape.ahead} / stages {shape.stages} do not fit {hidden // BLOCK_K} gate/up and "
                f"{least_down} down K steps")
    return None


def descriptors(h: torch.Tensor, gate_up: torch.Tensor, act: torch.Tensor, down: torch.Tensor, down_n: int,
                rest: int):
    """Host tensor descriptors: h and act [128, K step] boxes (rows past theirs zero-filled), the
    gate | up tile [64, K step], its remainder [rest, K step], down's [down_n, K step]."""
    from trainer.gluon_products import tma_desc as desc

    return (desc(h, [BLOCK_M, BLOCK_K]), desc(gate_up, [TILE, BLOCK_K]), desc(gate_up, [rest, BLOCK_K]),
            desc(act, [BLOCK_M, BLOCK_K]), desc(down, [down_n, BLOCK_K]))


def _args(x, h, gate_up, down, norm, eps, shape, act, part, sync, x_out, h_out, phase: int):
    import triton

    rows, hidden = h.shape
    intermediate = down.shape[1]
    plan = shape.plan(hidden, intermediate)
    args = (*descriptors(h, gate_up, act, down, shape.down_n, shape.rest), act, part, x, norm, x_out, h_out, sync, rows,
            float(eps))
    consts = {"H": hidden, "I": intermediate, "P": shape.programs, "STAGES": shape.stages, "AHEAD": shape.ahead,
              "SPLITS": plan["SPLITS"], "TILES_N": plan["TILES_N"], "NORM_BLOCK": triton.next_power_of_2(hidden),
              "PHASE": phase, "PDL": shape.pdl, "CROSS": shape.cross, "num_warps": shape.warps}
    return args, consts


def block(x: torch.Tensor, h: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, norm: torch.Tensor,
          eps: float, shape, buffers: tuple[torch.Tensor, torch.Tensor, torch.Tensor], *,
          phases: tuple[int, ...] | None = None, no_rest: bool = False, no_mma: bool = False,
          loads: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """mlp_block.mlp_block's contract (x + down(SiLU(gate) * up) of h, and its RMSNorm with `norm`)
    for a BlockShape with gluon=True, in `buffers` (mlp_block.workspace's activation, partials and
    barrier counters): one cooperative launch (with PDL if shape.pdl), or `phases` (1, 2, 3) one
    launch each (a benchmark's timing). Timing only, wrong numbers: `no_rest` leaves the
    remainder out, `no_mma` gate/up's products, `loads` 1 or 2 all but x's or the weights' loads."""
    rows, hidden = h.shape
    intermediate = down.shape[1]
    why = fits(rows, hidden, intermediate, shape)
    if why or h.device.type != "cuda" or h.dtype != torch.bfloat16:
        raise ValueError(f"the Gluon MLP block does not take h {tuple(h.shape)} {h.dtype} on {h.device}: {why}")
    h = h.contiguous()
    act, part, sync = buffers
    x_out, h_out = torch.empty_like(x), torch.empty_like(x)
    for phase in phases or (0,):
        args, consts = _args(x, h, gate_up, down, norm, eps, shape, act, part, sync, x_out, h_out, phase)
        launch = {"launch_cooperative_grid": True} if phase == 0 else {}
        _mlp_kernel[(shape.programs,)](*args, **consts, **launch, launch_pdl=shape.pdl, NO_REST=no_rest,
                                       NO_MMA=no_mma, LOADS=loads)
    return x_out, h_out


def compile_report(rows: int, hidden: int, intermediate: int, shape) -> dict[str, int]:
    """Compile the block for sm_90a (no GPU needed): ptxas's registers and spill bytes, the
    kernel's shared memory, its wgmma and griddepcontrol instruction counts, and whether ptxas
    serialized its wgmma (warning C7514/C7515): gluon_products.ptx_report."""
    from trainer.gluon_products import compile_for_hopper, ptx_report

    e = {"dtype": torch.bfloat16}
    h, x = torch.empty(rows, hidden, **e), torch.empty(rows, hidden, **e)
    gate_up, down = torch.empty(2 * intermediate, hidden, **e), torch.empty(hidden, intermediate, **e)
    splits = shape.plan(hidden, intermediate)["SPLITS"]
    act, part = torch.empty(rows, intermediate, **e), torch.empty(splits, rows, hidden, dtype=torch.float32)
    sync = torch.zeros(4, dtype=torch.int32)
    args, consts = _args(x, h, gate_up, down, torch.empty(hidden, **e), 1e-6, shape, act, part, sync,
                         torch.empty_like(x), torch.empty_like(x), 0)
    return ptx_report(compile_for_hopper(_mlp_kernel, *args, **consts))
