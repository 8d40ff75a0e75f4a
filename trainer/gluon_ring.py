"""The pieces of a warp-specialized Gluon kernel whose weights stream through device-wide waits:
a ring of shared-memory stages fed by TMA, the loaders that fill it, the products and gate/up that
take from it, and the arrival counters the programs wait at. trainer/gluon_stream.py's layer
kernel is built from them, and so are the stream benchmarks (bench/gpu_gluon_stream.py,
gpu_gluon_mlp_stream.py).

    from trainer.gluon_ring import _ring, _load_tiles, _product, _arrive, _wait_for_all

The ring: STAGES stages, each an input tile [128, K step] (x, h, act or the attention output), a
weight tile [64, K step] and, for gate/up, up's tile and the two 8-row remainder boxes (`_ring`).
A stage has two "ready" mbarriers, one for each loader warp's TMA bytes (weights, inputs), and an
"empty" one the multiplying warp group arrives at, one step late, when the stage's products have
finished (`_give_back`). Ring step n uses stage n % STAGES at parity (n // STAGES) & 1; a loader
waits for a free stage (`_free`), the multiplying group for both tiles of a step (`_take`).
bench/gluon_stream_model.py runs this protocol with random interleavings on a CPU.

A product's tile or SiLU x up may instead go out by a TMA store from a staging buffer in shared
memory (`_product_tma`, `_gate_up_tma`, `_tma_out`); its writes are waited for (`_writes_done`)
before the arrival that says they are there.

A device-wide dependency is an arrival counter: every warp's stores, then one atomic add with
release at GPU scope (`_arrive`); waiters poll with acquiring loads, then a proxy fence so that
TMA reads after it see the plain stores (`_wait_for_all`), and after SPIN_LIMIT reads give up and
set the failed flag instead of hanging (as trainer/gluon_mlp.py's block does).

CUDA on Hopper only (wgmma); Triton's interpreter does not run Gluon. The tests compile the
kernels built from these for sm_90a.
"""

from __future__ import annotations

from trainer.gluon_products import gl, gluon

if gluon is not None:
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )

    from trainer.gluon_mlp import SPIN_LIMIT, _load_acquire, _swiglu, add_norm_row

    @gluon.jit
    def _slice(p, STEPS_ALL: gl.constexpr, TILES: gl.constexpr, SPLITS: gl.constexpr):
        # Program p's part of a product of TILES column tiles x SPLITS K slices of STEPS_ALL K
        # steps: (its column tile, its slice, its first K step, its K steps: 0 past TILES x SPLITS)
        split = p // TILES
        first = split * STEPS_ALL // SPLITS
        steps = (split + 1) * STEPS_ALL // SPLITS - first
        return p % TILES, split, first, gl.where(p < TILES * SPLITS, steps, 0)

    @gluon.jit
    def _share(p, I: gl.constexpr, P: gl.constexpr, GROUP: gl.constexpr):
        # Program p's columns [lo, hi) of I split over P programs in whole groups of GROUP (8 for a
        # TMA store, which must start on 16 bytes; 1: p I / P)
        return p * (I // GROUP) // P * GROUP, (p + 1) * (I // GROUP) // P * GROUP

    @gluon.jit
    def _wait_for_all(count_ptr, failed_ptr, programs):
        # Until `programs` arrivals are counted at *count_ptr (acquiring loads at GPU scope), then a
        # proxy fence so that TMA reads after it see what the arriving programs' plain stores
        # wrote. After SPIN_LIMIT reads it goes on and sets the failed flag (as the MLP block does).
        reads = 0
        while (_load_acquire(count_ptr) < programs) & (reads < SPIN_LIMIT):
            reads += 1
        if reads >= SPIN_LIMIT:
            gl.atomic_xchg(failed_ptr, 1)
        gl.inline_asm_elementwise("fence.proxy.async.global; mov.u32 $0, 0;", "=r", [], dtype=gl.int32,
                                  is_pure=False, pack=1)

    @gluon.jit
    def _arrive(count_ptr):
        gl.thread_barrier()  # every warp's stores, then one release at GPU scope
        gl.atomic_add(count_ptr, 1, sem="release", scope="gpu")

    @gluon.jit
    def _ring(x_desc, w_desc, r_desc, STAGES: gl.constexpr):
        # The ring's buffers (inputs, gate or weight tiles, up tiles, the two remainders) and its
        # mbarriers (inputs ready, weights ready, empty), initialised
        x_bufs = gl.allocate_shared_memory(x_desc.dtype, [STAGES] + x_desc.block_type.shape, x_desc.layout)
        g_bufs = gl.allocate_shared_memory(w_desc.dtype, [STAGES] + w_desc.block_type.shape, w_desc.layout)
        u_bufs = gl.allocate_shared_memory(w_desc.dtype, [STAGES] + w_desc.block_type.shape, w_desc.layout)
        gr_bufs = gl.allocate_shared_memory(r_desc.dtype, [STAGES] + r_desc.block_type.shape, r_desc.layout)
        ur_bufs = gl.allocate_shared_memory(r_desc.dtype, [STAGES] + r_desc.block_type.shape, r_desc.layout)
        x_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        w_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for s in gl.static_range(STAGES):
            mbarrier.init(x_ready.index(s), count=1)
            mbarrier.init(w_ready.index(s), count=1)
            mbarrier.init(empty.index(s), count=1)
        fence_async_shared()
        return x_bufs, g_bufs, u_bufs, gr_bufs, ur_bufs, x_ready, w_ready, empty

    @gluon.jit
    def _free(empty, n):
        # wait until ring step n's stage is free: a new mbarrier counts as having completed the
        # phase before its first (parity 1), so the first pass over the ring does not wait
        stages: gl.constexpr = empty.shape[0]
        mbarrier.wait(empty.index(n % stages), ((n // stages) & 1) ^ 1)

    @gluon.jit
    def _load_tiles(desc, row, first, steps, n, bufs, ready, empty):
        # `steps` tiles of `desc` at rows `row`, K steps from `first`, into the ring from ring step n
        # on (a loader warp); the ring step after them
        stages: gl.constexpr = bufs.shape[0]
        block_k: gl.constexpr = bufs.shape[2]
        n = gl.to_tensor(n)  # (a ring step count: a literal 0 would be a constexpr the loop cannot carry)
        for j in range(steps):
            s = n % stages
            _free(empty, n)
            mbarrier.expect(ready.index(s), desc.block_type.nbytes)
            tma.async_copy_global_to_shared(desc, [row, (first + j) * block_k], ready.index(s), bufs.index(s))
            n += 1
        return n

    @gluon.jit
    def _load_gate_up(w_desc, r_desc, base, lo, first, steps, n, g_bufs, u_bufs, gr_bufs, ur_bufs, ready, empty,
                      I: gl.constexpr):
        # gate's and up's 64-row tiles of program share `lo` and their remainder boxes (gate | up
        # stacked from row `base`), K steps from `first`, into the ring; the ring step after them
        stages: gl.constexpr = g_bufs.shape[0]
        block_k: gl.constexpr = g_bufs.shape[2]
        tile: gl.constexpr = w_desc.block_type.shape[0]
        nbytes: gl.constexpr = 2 * w_desc.block_type.nbytes + 2 * r_desc.block_type.nbytes
        n = gl.to_tensor(n)  # (a ring step count: a literal 0 would be a constexpr the loop cannot carry)
        for j in range(steps):
            s = n % stages
            _free(empty, n)
            bar = ready.index(s)
            mbarrier.expect(bar, nbytes)
            k = (first + j) * block_k
            tma.async_copy_global_to_shared(w_desc, [base + lo, k], bar, g_bufs.index(s))
            tma.async_copy_global_to_shared(w_desc, [base + I + lo, k], bar, u_bufs.index(s))
            tma.async_copy_global_to_shared(r_desc, [base + lo + tile, k], bar, gr_bufs.index(s))
            tma.async_copy_global_to_shared(r_desc, [base + I + lo + tile, k], bar, ur_bufs.index(s))
            n += 1
        return n

    @gluon.jit
    def _take(x_ready, w_ready, n):
        # wait until ring step n's input and weights have landed
        stages: gl.constexpr = x_ready.shape[0]
        mbarrier.wait(w_ready.index(n % stages), (n // stages) & 1)
        mbarrier.wait(x_ready.index(n % stages), (n // stages) & 1)

    @gluon.jit
    def _give_back(empty, n, pred):
        # every warp of the group is done with ring step n - 1 (its last product finished): its
        # stage goes back to the loaders
        stages: gl.constexpr = empty.shape[0]
        gl.thread_barrier()
        mbarrier.arrive(empty.index((n + stages - 1) % stages), pred=pred)

    @gluon.jit
    def _gate_up_step(xs, g_buf, u_buf, gr_buf, ur_buf, gate, up, gate_r, up_r):
        # one K step of gate, up and their remainders, asynchronously; gate last, left in flight
        # (with two or more accumulators in flight at a loop's back edge ptxas serializes every
        # wgmma, C7514: bench/gpu_gluon_ws.py)
        up_r = warpgroup_mma(xs, ur_buf.permute((1, 0)), up_r, is_async=True)
        gate_r = warpgroup_mma(xs, gr_buf.permute((1, 0)), gate_r, is_async=True)
        up = warpgroup_mma(xs, u_buf.permute((1, 0)), up, is_async=True)
        gate = warpgroup_mma(xs, g_buf.permute((1, 0)), gate, is_async=True)
        return warpgroup_mma_wait(num_outstanding=1, deps=(gate, up, gate_r, up_r))

    @gluon.jit
    def _store_act(gate, up, gate_r, up_r, act_ptr, lo, hi, rows, I: gl.constexpr):
        # SiLU(gate) x up of the share [lo, hi) into act [rows, I], rounded as
        # trainer/triton_products.swiglu_tile rounds (the remainder's columns past hi not stored)
        dtype: gl.constexpr = act_ptr.dtype.element_ty
        block_m: gl.constexpr = gate.shape[0]
        tile: gl.constexpr = gate.shape[1]
        m = gl.arange(0, block_m, layout=gl.SliceLayout(1, gate.type.layout))
        c = lo + gl.arange(0, tile, layout=gl.SliceLayout(0, gate.type.layout))
        gl.store(act_ptr + m[:, None] * I + c[None, :], _swiglu(gate, up, dtype), mask=(m < rows)[:, None])
        _store_rest(gate_r, up_r, act_ptr, lo + tile, hi, rows, I)

    @gluon.jit
    def _store_rest(gate_r, up_r, act_ptr, first, hi, rows, I: gl.constexpr):
        # SiLU x up of the remainder, columns [first, hi) of act [rows, I], by plain stores (a box
        # would write the next share's columns)
        dtype: gl.constexpr = act_ptr.dtype.element_ty
        block_m: gl.constexpr = gate_r.shape[0]
        rest: gl.constexpr = gate_r.shape[1]
        mr = gl.arange(0, block_m, layout=gl.SliceLayout(1, gate_r.type.layout))
        cr = first + gl.arange(0, rest, layout=gl.SliceLayout(0, gate_r.type.layout))
        gl.store(act_ptr + mr[:, None] * I + cr[None, :], _swiglu(gate_r, up_r, dtype),
                 mask=(mr < rows)[:, None] & (cr < hi)[None, :])

    @gluon.jit
    def _gate_up_products(x_bufs, g_bufs, u_bufs, gr_bufs, ur_bufs, x_ready, w_ready, empty, n, H: gl.constexpr,
                          num_warps: gl.constexpr):
        # gate's and up's tiles and remainders for H // K step ring steps from n on, every stage
        # given back: (gate, up, gate_r, up_r, the ring step after them)
        stages: gl.constexpr = x_bufs.shape[0]
        block_m: gl.constexpr = x_bufs.shape[1]
        block_k: gl.constexpr = x_bufs.shape[2]
        tile: gl.constexpr = g_bufs.shape[1]
        rest: gl.constexpr = gr_bufs.shape[1]
        main_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                              instr_shape=[16, tile, 16])
        rest_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                              instr_shape=[16, rest, 16])
        gate = gl.zeros([block_m, tile], gl.float32, main_layout)
        up = gl.zeros([block_m, tile], gl.float32, main_layout)
        gate_r = gl.zeros([block_m, rest], gl.float32, rest_layout)
        up_r = gl.zeros([block_m, rest], gl.float32, rest_layout)
        n = gl.to_tensor(n)  # (a ring step count: a literal 0 would be a constexpr the loop cannot carry)
        for i in range(H // block_k):
            s = n % stages
            _take(x_ready, w_ready, n)
            gate, up, gate_r, up_r = _gate_up_step(x_bufs.index(s), g_bufs.index(s), u_bufs.index(s),
                                                   gr_bufs.index(s), ur_bufs.index(s), gate, up, gate_r, up_r)
            _give_back(empty, n, i > 0)
            n += 1
        gate, up, gate_r, up_r = warpgroup_mma_wait(num_outstanding=0, deps=(gate, up, gate_r, up_r))
        _give_back(empty, n, True)  # the last step's stage
        return gate, up, gate_r, up_r, n

    @gluon.jit
    def _gate_up(x_bufs, g_bufs, u_bufs, gr_bufs, ur_bufs, x_ready, w_ready, empty, n, act_ptr, lo, hi, rows,
                 H: gl.constexpr, I: gl.constexpr, num_warps: gl.constexpr):
        # gate/up with SiLU x up of the share [lo, hi) into act, H // K step ring steps from n on;
        # the ring step after them (every stage given back)
        gate, up, gate_r, up_r, n = _gate_up_products(x_bufs, g_bufs, u_bufs, gr_bufs, ur_bufs, x_ready, w_ready,
                                                      empty, n, H, num_warps)
        _store_act(gate, up, gate_r, up_r, act_ptr, lo, hi, rows, I)
        return n

    @gluon.jit
    def _product_acc(x_bufs, g_bufs, x_ready, w_ready, empty, steps, n, num_warps: gl.constexpr):
        # `steps` ring steps of input tile times weight tile into a [128, 64] float32 tile, every
        # stage given back: (the tile, the ring step after them)
        stages: gl.constexpr = x_bufs.shape[0]
        block_m: gl.constexpr = x_bufs.shape[1]
        tile: gl.constexpr = g_bufs.shape[1]
        layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                         instr_shape=[16, tile, 16])
        acc = gl.zeros([block_m, tile], gl.float32, layout)
        n = gl.to_tensor(n)  # (a ring step count: a literal 0 would be a constexpr the loop cannot carry)
        for j in range(steps):
            s = n % stages
            _take(x_ready, w_ready, n)
            acc = warpgroup_mma(x_bufs.index(s), g_bufs.index(s).permute((1, 0)), acc, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
            _give_back(empty, n, j > 0)
            n += 1
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        if steps > 0:
            _give_back(empty, n, True)  # the last step's stage
        return acc, n

    @gluon.jit
    def _product(x_bufs, g_bufs, x_ready, w_ready, empty, steps, n, out_ptr, split, col0, rows, N: gl.constexpr,
                 num_warps: gl.constexpr):
        # `steps` ring steps of input tile times weight tile into a [128, 64] float32 tile, stored at
        # columns col0 of partial `split` of out [splits, rows, N]; the ring step after them
        acc, n = _product_acc(x_bufs, g_bufs, x_ready, w_ready, empty, steps, n, num_warps)
        if steps > 0:
            block_m: gl.constexpr = acc.shape[0]
            tile: gl.constexpr = acc.shape[1]
            m = gl.arange(0, block_m, layout=gl.SliceLayout(1, acc.type.layout))
            c = col0 + gl.arange(0, tile, layout=gl.SliceLayout(0, acc.type.layout))
            gl.store(out_ptr + split * rows * N + m[:, None] * N + c[None, :], acc, mask=(m < rows)[:, None])
        return n

    @gluon.jit
    def _writes_done():
        # Every bulk store this thread issued has written global memory (not only read shared
        # memory, which is all tma.store_wait waits for: cp.async.bulk.wait_group.read), and the
        # async proxy's writes are ordered before what follows; threads that issued none go on.
        # An _arrive after it (a CTA barrier, then the release) says so to the other programs.
        gl.inline_asm_elementwise("cp.async.bulk.wait_group 0; fence.proxy.async.global; mov.u32 $0, 0;", "=r", [],
                                  dtype=gl.int32, is_pure=False, pack=1)

    @gluon.jit
    def _tma_out(tile, desc, smem, view, coord):
        # `tile` into `view` of `smem` (the box of `desc`; with a leading 1 for a [splits, rows, N]
        # output, its 2-D reshape) once the last store from it has read it, then one TMA store of it at
        # `coord`; rows past the output's are not written (the box is clipped). The caller waits
        # for the writes (_writes_done) before it says they are there.
        tma.store_wait(0)
        gl.thread_barrier()
        view.store(tile)
        fence_async_shared()
        gl.thread_barrier()
        tma.async_copy_shared_to_global(desc, coord, smem)

    @gluon.jit
    def _product_tma(x_bufs, g_bufs, x_ready, w_ready, empty, steps, n, out_desc, out_smem, split, col0,
                     num_warps: gl.constexpr):
        # _product with its [128, 64] float32 tile written by one TMA store into partial `split`
        # of out [splits, rows, N] (`out_desc`: [1, 128, 64] boxes), its writes waited for
        acc, n = _product_acc(x_bufs, g_bufs, x_ready, w_ready, empty, steps, n, num_warps)
        if steps > 0:
            _tma_out(acc, out_desc, out_smem, out_smem.reshape([acc.shape[0], acc.shape[1]]), [split, 0, col0])
            _writes_done()
        return n

    @gluon.jit
    def _gate_up_tma(x_bufs, g_bufs, u_bufs, gr_bufs, ur_bufs, x_ready, w_ready, empty, n, act_desc, act_smem, act_ptr,
                     lo, hi, rows, H: gl.constexpr, I: gl.constexpr, num_warps: gl.constexpr):
        # _gate_up with the share's 64-column tile of SiLU x up written by one TMA store (`lo` a
        # multiple of 8 columns: a TMA store must start on 16 bytes) and its remainder by plain
        # stores, every write waited for
        gate, up, gate_r, up_r, n = _gate_up_products(x_bufs, g_bufs, u_bufs, gr_bufs, ur_bufs, x_ready, w_ready,
                                                      empty, n, H, num_warps)
        dtype: gl.constexpr = act_ptr.dtype.element_ty
        _tma_out(_swiglu(gate, up, dtype), act_desc, act_smem, act_smem, [0, lo])
        _store_rest(gate_r, up_r, act_ptr, lo + gate.shape[1], hi, rows, I)
        _writes_done()
        return n

    @gluon.jit
    def _add_norm(part_ptr, x_ptr, norm_ptr, h_ptr, p, rows, eps, H: gl.constexpr, SPLITS: gl.constexpr,
                  NORM_BLOCK: gl.constexpr, num_warps: gl.constexpr):
        # Row p: x += the partials' sum, h = RMSNorm(x) with `norm`, in place (the MLP block's norm)
        if p < rows:
            add_norm_row(part_ptr, x_ptr, norm_ptr, x_ptr, h_ptr, p, rows, eps, H, SPLITS, NORM_BLOCK, num_warps)
