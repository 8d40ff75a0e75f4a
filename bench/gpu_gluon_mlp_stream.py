"""28 layers' MLP halves in one warp-specialized Gluon launch, the weights streaming through every
phase and layer, against the MLP block's 28 launches.

    python bench/gpu_gluon_mlp_stream.py [--out $OUT/gluon_mlp_stream.json]   # GPU machine (132 SMs)
    python bench/gpu_gluon_mlp_stream.py --compile-only                       # anywhere: sm_90a, no GPU

The next step after bench/gpu_gluon_stream.py (gate/up alone) toward a decode megakernel: the
whole MLP half of every layer, with its real dependencies, in one launch. Per layer, as the
persistent MLP block (trainer/mlp_block.py, trainer/gluon_mlp.py) splits it on 132 programs:

1. gate/up with SiLU x up: program p's columns [p I / P, (p + 1) I / P) (a 64-row tile and an
   8-row remainder box of gate and of up), from h, into act [128, I];
2. down: program (tile, split) < 24 x 5 multiplies act's K slice by down's 64-column tile into a
   float32 partial [split, 128, H];
3. residual + RMSNorm: program p adds row p's partials in a fixed order to the residual x and
   writes x and h = RMSNorm(x) with the next layer's norm weight (trainer/triton_products.add_norm_row's
   arithmetic), in place.

Three device-wide dependencies a layer (act complete, partials complete, h complete), each an
arrival counter per (layer, phase): the multiplying warp group arrives (atomic add, release)
after its stores; whoever reads what it guards waits for all arrivals (acquiring loads, then a
proxy fence for TMA reads). Three partitions a program:

- a weight loader warp: gate/up's tiles, then down's tile for every K step of its slice, layer
  after layer, into a ring of STAGES shared-memory stages. It waits for nothing but free stages
  (`WAIT` 0), or also for each phase's dependency before that phase's weights (`WAIT` 1: the
  stream restarts at each, as the block's launches and barriers have it);
- an activation loader warp: h's tiles after the layer before's norm, act's tiles of its slice
  after gate/up;
- the multiplying warp group (4 warps), which also runs the norm of its row after waiting for
  the partials.

Programs past the 120 down tiles skip the down phase. The counters are zeroed before each launch
(a memset in the graph), the grid launched cooperatively (the driver refuses one whose programs
cannot all be resident), a spin limit sets a failed flag instead of hanging. The ring's and the
counters' bookkeeping is also written out as a Python model (bench/gluon_stream_model.py) and run
there with random interleavings: no deadlock, no parity test passing for the wrong phase, no read
of act, h or the partials before every writer of the layer wrote them.

Each variant in its own process, killed after TIMEOUT_S; side by side in it, each 28 layers in one
CUDA graph (`_graph_ms`, 30 replays): the variant, the Triton MLP block (the decode step's, 28
launches) and the Gluon block. Correctness: the variant's x and h after 28 layers against the
Triton block's from the same start (relative error; session 14 found the Gluon block within 4.2e-4
of it after 28 layers, bitwise for one), and the spin limit's flag.

A fourth variant launches the same kernel once a layer (its own counters per layer, one memset
for all): the stream goes on through a layer's three waits but restarts at each launch. That is
the shape a decode step could take without its attention in the same kernel: one such kernel a
layer (o, residual + RMSNorm, the MLP half, the next q/k/v) between the attention kernels.

What would decide it: the variant ahead of the block's 1.00 ms (on an H200, call 79) by more than
the restarting form is, i.e. the stream going on through the 84 waits; and how much of that the
launch a layer keeps.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from gpu_common import write_json
from gpu_gluon_stream import run_children

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
PROGRAMS = 132  # an H200's (and H100 SXM's) multiprocessors; one program each
BLOCK_K, TILE, REST, DOWN_N = 64, 64, 8, 64
TILES_N = H // DOWN_N  # 24 down tiles
SPLITS = PROGRAMS // TILES_N  # 5 K slices of down: 120 down programs
TIMEOUT_S = 120
# (stages, the weights wait for each phase's dependency, one launch a layer instead of one for all)
VARIANTS = ((6, 0, 0), (6, 1, 0), (5, 0, 0), (6, 0, 1))


def label(variant) -> str:
    stages, wait, per_layer = variant
    return f"mlp stream s{stages} weights {'wait' if wait else 'ahead'}{', a launch a layer' if per_layer else ''}"


if gluon is not None:

    from gpu_gluon_stream import _wait_for_all

    from trainer.gluon_mlp import _swiglu

    @gluon.jit
    def _down_slice(p, I: gl.constexpr, P: gl.constexpr, BLOCK_K: gl.constexpr, TILES_N: gl.constexpr,
                    SPLITS: gl.constexpr):
        # (has down, its column tile, its split, first K, K steps) of program p
        steps_all: gl.constexpr = I // BLOCK_K
        split = p // TILES_N
        k_lo = (split * steps_all // SPLITS) * BLOCK_K
        steps = (split + 1) * steps_all // SPLITS - split * steps_all // SPLITS
        return p < TILES_N * SPLITS, p % TILES_N, split, k_lo, steps

    @gluon.jit
    def _weights(gu_desc, r_desc, down_desc, g_bufs, u_bufs, gr_bufs, ur_bufs, w_ready, empty, count_ptr, failed_ptr,
                 p, layer0, H: gl.constexpr, I: gl.constexpr, P: gl.constexpr, LAYERS: gl.constexpr,
                 TILES_N: gl.constexpr, SPLITS: gl.constexpr, WAIT: gl.constexpr):
        stages: gl.constexpr = g_bufs.shape[0]
        block_k: gl.constexpr = g_bufs.shape[2]
        tile: gl.constexpr = gu_desc.block_type.shape[0]
        down_n: gl.constexpr = down_desc.block_type.shape[0]
        steps1: gl.constexpr = H // block_k
        gu_bytes: gl.constexpr = 2 * gu_desc.block_type.nbytes + 2 * r_desc.block_type.nbytes
        lo = p * I // P
        has_down, d_tile, _, k_lo, steps2 = _down_slice(p, I, P, block_k, TILES_N, SPLITS)
        steps2 = gl.where(has_down, steps2, 0)
        n = 0  # ring steps so far: step n uses stage n % stages
        for layer in range(LAYERS):
            if WAIT and layer > 0:  # h of this layer: the norm of the one before
                _wait_for_all(count_ptr + 3 * layer - 1, failed_ptr, P)
            base = (layer0 + layer) * 2 * I
            for i in range(steps1):
                s = n % stages
                # a new mbarrier counts as having completed the phase before its first (parity 1)
                mbarrier.wait(empty.index(s), ((n // stages) & 1) ^ 1)
                bar = w_ready.index(s)
                mbarrier.expect(bar, gu_bytes)
                k = i * block_k
                tma.async_copy_global_to_shared(gu_desc, [base + lo, k], bar, g_bufs.index(s))
                tma.async_copy_global_to_shared(gu_desc, [base + I + lo, k], bar, u_bufs.index(s))
                tma.async_copy_global_to_shared(r_desc, [base + lo + tile, k], bar, gr_bufs.index(s))
                tma.async_copy_global_to_shared(r_desc, [base + I + lo + tile, k], bar, ur_bufs.index(s))
                n += 1
            if WAIT:  # act: every program's gate/up
                _wait_for_all(count_ptr + 3 * layer, failed_ptr, P)
            for j in range(steps2):
                s = n % stages
                mbarrier.wait(empty.index(s), ((n // stages) & 1) ^ 1)
                bar = w_ready.index(s)
                mbarrier.expect(bar, down_desc.block_type.nbytes)
                tma.async_copy_global_to_shared(down_desc, [(layer0 + layer) * H + d_tile * down_n, k_lo + j * block_k],
                                                bar, g_bufs.index(s))
                n += 1

    @gluon.jit
    def _activations(h_desc, act_desc, x_bufs, x_ready, empty, count_ptr, failed_ptr, p, H: gl.constexpr,
                     I: gl.constexpr, P: gl.constexpr, LAYERS: gl.constexpr, TILES_N: gl.constexpr,
                     SPLITS: gl.constexpr):
        stages: gl.constexpr = x_bufs.shape[0]
        block_k: gl.constexpr = x_bufs.shape[2]
        steps1: gl.constexpr = H // block_k
        has_down, _, _, k_lo, steps2 = _down_slice(p, I, P, block_k, TILES_N, SPLITS)
        steps2 = gl.where(has_down, steps2, 0)
        n = 0
        for layer in range(LAYERS):
            if layer > 0:  # h: the layer before's norm, every row
                _wait_for_all(count_ptr + 3 * layer - 1, failed_ptr, P)
            for i in range(steps1):
                s = n % stages
                mbarrier.wait(empty.index(s), ((n // stages) & 1) ^ 1)
                bar = x_ready.index(s)
                mbarrier.expect(bar, h_desc.block_type.nbytes)
                tma.async_copy_global_to_shared(h_desc, [0, i * block_k], bar, x_bufs.index(s))
                n += 1
            if has_down:  # act: every program's gate/up
                _wait_for_all(count_ptr + 3 * layer, failed_ptr, P)
            for j in range(steps2):
                s = n % stages
                mbarrier.wait(empty.index(s), ((n // stages) & 1) ^ 1)
                bar = x_ready.index(s)
                mbarrier.expect(bar, act_desc.block_type.nbytes)
                tma.async_copy_global_to_shared(act_desc, [0, k_lo + j * block_k], bar, x_bufs.index(s))
                n += 1

    @gluon.jit
    def _arrive(count_ptr):
        gl.thread_barrier()  # every warp's stores, then one release at GPU scope
        gl.atomic_add(count_ptr, 1, sem="release", scope="gpu")

    @gluon.jit
    def _multiply(x_bufs, g_bufs, u_bufs, gr_bufs, ur_bufs, x_ready, w_ready, empty, act_ptr, part_ptr, x_ptr, h_ptr,
                  norm_ptr, count_ptr, failed_ptr, p, layer0, rows, eps, H: gl.constexpr, I: gl.constexpr,
                  P: gl.constexpr, LAYERS: gl.constexpr, TILES_N: gl.constexpr, SPLITS: gl.constexpr, NORM_BLOCK: gl.constexpr,
                  num_warps: gl.constexpr):
        stages: gl.constexpr = x_bufs.shape[0]
        block_m: gl.constexpr = x_bufs.shape[1]
        block_k: gl.constexpr = x_bufs.shape[2]
        tile: gl.constexpr = g_bufs.shape[1]
        rest: gl.constexpr = gr_bufs.shape[1]
        steps1: gl.constexpr = H // block_k
        dtype: gl.constexpr = act_ptr.dtype.element_ty
        main_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                              instr_shape=[16, tile, 16])
        rest_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                              instr_shape=[16, rest, 16])
        row_layout: gl.constexpr = gl.BlockedLayout([4], [32], [num_warps], [0])
        lo = p * I // P
        hi = (p + 1) * I // P
        has_down, d_tile, split, _, steps2 = _down_slice(p, I, P, block_k, TILES_N, SPLITS)
        steps2 = gl.where(has_down, steps2, 0)
        cols = gl.arange(0, NORM_BLOCK, layout=row_layout)
        inside = cols < H
        n = 0
        for layer in range(LAYERS):
            # (1) gate/up: bench/gpu_gluon_ws.py's multiplier (gate last, at most one product in
            # flight at the loop's back edge, each stage handed back a step late)
            gate = gl.zeros([block_m, tile], gl.float32, main_layout)
            up = gl.zeros([block_m, tile], gl.float32, main_layout)
            gate_r = gl.zeros([block_m, rest], gl.float32, rest_layout)
            up_r = gl.zeros([block_m, rest], gl.float32, rest_layout)
            for i in range(steps1):
                s = n % stages
                mbarrier.wait(w_ready.index(s), (n // stages) & 1)
                mbarrier.wait(x_ready.index(s), (n // stages) & 1)
                xs = x_bufs.index(s)
                up_r = warpgroup_mma(xs, ur_bufs.index(s).permute((1, 0)), up_r, is_async=True)
                gate_r = warpgroup_mma(xs, gr_bufs.index(s).permute((1, 0)), gate_r, is_async=True)
                up = warpgroup_mma(xs, u_bufs.index(s).permute((1, 0)), up, is_async=True)
                gate = warpgroup_mma(xs, g_bufs.index(s).permute((1, 0)), gate, is_async=True)
                gate, up, gate_r, up_r = warpgroup_mma_wait(num_outstanding=1, deps=(gate, up, gate_r, up_r))
                gl.thread_barrier()
                mbarrier.arrive(empty.index((n + stages - 1) % stages), pred=i > 0)
                n += 1
            gate, up, gate_r, up_r = warpgroup_mma_wait(num_outstanding=0, deps=(gate, up, gate_r, up_r))
            gl.thread_barrier()
            mbarrier.arrive(empty.index((n + stages - 1) % stages))
            m = gl.arange(0, block_m, layout=gl.SliceLayout(1, main_layout))
            c = lo + gl.arange(0, tile, layout=gl.SliceLayout(0, main_layout))
            gl.store(act_ptr + m[:, None] * I + c[None, :], _swiglu(gate, up, dtype), mask=(m < rows)[:, None])
            m = gl.arange(0, block_m, layout=gl.SliceLayout(1, rest_layout))
            c = lo + tile + gl.arange(0, rest, layout=gl.SliceLayout(0, rest_layout))
            gl.store(act_ptr + m[:, None] * I + c[None, :], _swiglu(gate_r, up_r, dtype),
                     mask=(m < rows)[:, None] & (c < hi)[None, :])
            _arrive(count_ptr + 3 * layer)

            # (2) down: act's K slice times down's 64-column tile, a float32 partial
            acc = gl.zeros([block_m, tile], gl.float32, main_layout)
            for j in range(steps2):
                s = n % stages
                mbarrier.wait(w_ready.index(s), (n // stages) & 1)
                mbarrier.wait(x_ready.index(s), (n // stages) & 1)
                acc = warpgroup_mma(x_bufs.index(s), g_bufs.index(s).permute((1, 0)), acc, is_async=True)
                acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
                gl.thread_barrier()
                mbarrier.arrive(empty.index((n + stages - 1) % stages), pred=j > 0)
                n += 1
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            if has_down:
                gl.thread_barrier()
                mbarrier.arrive(empty.index((n + stages - 1) % stages))
                md = gl.arange(0, block_m, layout=gl.SliceLayout(1, main_layout))
                cd = d_tile * tile + gl.arange(0, tile, layout=gl.SliceLayout(0, main_layout))
                gl.store(part_ptr + split * rows * H + md[:, None] * H + cd[None, :], acc, mask=(md < rows)[:, None])
            _arrive(count_ptr + 3 * layer + 1)

            # (3) row p: residual + RMSNorm with the next layer's norm weight, in place
            _wait_for_all(count_ptr + 3 * layer + 1, failed_ptr, P)
            if p < rows:
                y = gl.zeros([NORM_BLOCK], gl.float32, row_layout)
                for q in gl.static_range(SPLITS):
                    y += gl.load(part_ptr + q * rows * H + p * H + cols, mask=inside, other=0.0, cache_modifier=".cg")
                x = (gl.load(x_ptr + p * H + cols, mask=inside, other=0.0).to(gl.float32)
                     + y.to(dtype).to(gl.float32)).to(dtype)
                gl.store(x_ptr + p * H + cols, x, mask=inside)
                xf = x.to(gl.float32)
                rstd = 1.0 / gl.sqrt(gl.sum(xf * xf, 0) / H + eps)
                normed = (xf * rstd).to(dtype).to(gl.float32)
                weight = gl.load(norm_ptr + (layer0 + layer) * H + cols, mask=inside, other=0.0).to(gl.float32)
                gl.store(h_ptr + p * H + cols, (weight * normed).to(dtype), mask=inside)
            _arrive(count_ptr + 3 * layer + 2)

    @gluon.jit
    def _mlp_stream(h_desc, gu_desc, r_desc, act_desc, down_desc, act_ptr, part_ptr, x_ptr, h_ptr, norm_ptr, count_ptr,
                    failed_ptr, layer0, rows, eps, H: gl.constexpr, I: gl.constexpr, P: gl.constexpr,
                    LAYERS: gl.constexpr,
                    STAGES: gl.constexpr, TILES_N: gl.constexpr, SPLITS: gl.constexpr, NORM_BLOCK: gl.constexpr,
                    WAIT: gl.constexpr, num_warps: gl.constexpr):
        p = gl.program_id(0)
        x_bufs = gl.allocate_shared_memory(h_desc.dtype, [STAGES] + h_desc.block_type.shape, h_desc.layout)
        g_bufs = gl.allocate_shared_memory(gu_desc.dtype, [STAGES] + gu_desc.block_type.shape, gu_desc.layout)
        u_bufs = gl.allocate_shared_memory(gu_desc.dtype, [STAGES] + gu_desc.block_type.shape, gu_desc.layout)
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
        gl.warp_specialize([
            (_multiply, (x_bufs, g_bufs, u_bufs, gr_bufs, ur_bufs, x_ready, w_ready, empty, act_ptr, part_ptr, x_ptr,
                         h_ptr, norm_ptr, count_ptr, failed_ptr, p, layer0, rows, eps, H, I, P, LAYERS, TILES_N,
                         SPLITS, NORM_BLOCK, num_warps)),
            (_weights, (gu_desc, r_desc, down_desc, g_bufs, u_bufs, gr_bufs, ur_bufs, w_ready, empty, count_ptr,
                        failed_ptr, p, layer0, H, I, P, LAYERS, TILES_N, SPLITS, WAIT)),
            (_activations, (h_desc, act_desc, x_bufs, x_ready, empty, count_ptr, failed_ptr, p, H, I, P, LAYERS,
                            TILES_N, SPLITS)),
        ], [1, 1], [24, 24])


class Buffers:
    """The launch's tensors: stacked weights (gate | up [LAYERS 2 I, H], down [LAYERS H, I]),
    the norms [LAYERS, H] (layer L's is the one after its MLP half), the residual x and h [128, H]
    (updated in place), act [128, I], the partials [SPLITS, 128, H] and the counters (3 a layer,
    then the failed flag)."""

    def __init__(self, gate_up, down, norms, x, h):
        self.gate_up, self.down, self.norms, self.x, self.h = gate_up, down, norms, x, h
        e = {"device": x.device}
        self.act = torch.empty(ROWS, I, dtype=torch.bfloat16, **e)
        self.part = torch.empty(SPLITS, ROWS, H, dtype=torch.float32, **e)
        self.count = torch.zeros(3 * LAYERS + 1, dtype=torch.int32, **e)

    def descriptors(self):
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

        def desc(t, block):
            layout = gl.NVMMASharedLayout.get_default_for(block, gl.bfloat16)
            return TensorDescriptor(t, list(t.shape), list(t.stride()), block, layout)

        return (desc(self.h, [ROWS, BLOCK_K]), desc(self.gate_up, [TILE, BLOCK_K]), desc(self.gate_up, [REST, BLOCK_K]),
                desc(self.act, [ROWS, BLOCK_K]), desc(self.down, [DOWN_N, BLOCK_K]))


def launch(buffers: Buffers, descs, variant, compile_only: bool = False):
    """Every layer: in one launch, or (`per_layer`) one launch a layer, each with its own
    counters; the counters zeroed first (one memset). With compile_only, the kernel compiled for
    sm_90a instead (no GPU)."""
    import triton

    stages, wait, per_layer = variant
    consts = {"H": H, "I": I, "P": PROGRAMS, "LAYERS": 1 if per_layer else LAYERS, "STAGES": stages,
              "TILES_N": TILES_N, "SPLITS": SPLITS, "NORM_BLOCK": triton.next_power_of_2(H), "WAIT": wait,
              "num_warps": 4}

    def args(layer0: int):
        return (*descs, buffers.act, buffers.part, buffers.x, buffers.h, buffers.norms, buffers.count[3 * layer0:],
                buffers.count[-1:], layer0, ROWS, 1e-6)

    if compile_only:
        from trainer.gluon_products import compile_for_hopper

        return compile_for_hopper(_mlp_stream, *args(0), **consts)
    buffers.count[:-1].zero_()  # (the last: the spin limit's flag, kept until read)
    for layer0 in range(0, LAYERS, consts["LAYERS"]):
        _mlp_stream[(PROGRAMS,)](*args(layer0), **consts, launch_cooperative_grid=True)
    return None


def compile_only() -> int:
    """Compile every variant for sm_90a; print ptxas's registers, spills and shared memory; 1 if
    any does not compile, spills or has its wgmma serialized."""
    from trainer.gluon_products import ptx_report

    e = {"dtype": torch.bfloat16}
    buffers = Buffers(torch.empty(LAYERS * 2 * I, H, **e), torch.empty(LAYERS * H, I, **e), torch.empty(LAYERS, H, **e),
                      torch.empty(ROWS, H, **e), torch.empty(ROWS, H, **e))
    bad = 0
    for variant in VARIANTS:
        start = time.time()
        try:
            report = ptx_report(launch(buffers, buffers.descriptors(), variant, compile_only=True))
        except Exception as exc:  # noqa: BLE001 - a variant that does not compile is the finding
            print(f"{label(variant)}: does not compile: {exc!r}"[:2000], flush=True)
            bad += 1
            continue
        print(f"{label(variant)}: {report} compiled in {time.time() - start:.1f} s", flush=True)
        bad += bool(report["spill_bytes"] or report["serialized"])
    return 1 if bad else 0


def one(index: int) -> None:
    """Variant `index` and the blocks on the same 28 layers, in this process: a JSON line after
    the baselines, the whole row after the variant."""
    from trainer import mlp_block
    from trainer.triton_products import _graph_ms

    variant = VARIANTS[index]
    dev = torch.device("cuda")
    programs = torch.cuda.get_device_properties(dev).multi_processor_count
    row = {"variant": label(variant), "stages": variant[0], "weights_wait": variant[1], "per_layer": variant[2],
           "device": torch.cuda.get_device_name(), "sms": programs, "ms": {}}
    if programs != PROGRAMS:
        row["skipped"] = f"{programs} multiprocessors; the split is {PROGRAMS} programs'"
        print(json.dumps(row), flush=True)
        return
    gen = torch.Generator(device=dev).manual_seed(0)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, device=dev, generator=gen) * scale).to(torch.bfloat16)

    gate_up, down = rand(LAYERS * 2 * I, H, scale=H ** -0.5), rand(LAYERS * H, I, scale=I ** -0.5)
    norms = 1 + 0.1 * rand(LAYERS, H)
    x0 = rand(ROWS, H)
    h0 = mlp_block.mlp_block(x0, x0, gate_up[: 2 * I], down[:H], norms[0], 1e-6,
                             mlp_block.BlockShape.for_gpu(dev))[1]  # any normed start
    gb = (gate_up.numel() + down.numel()) * 2 / 1e9
    row["weights_gb"] = gb
    layers = [(gate_up[2 * I * k:2 * I * (k + 1)], down[H * k:H * (k + 1)], norms[k]) for k in range(LAYERS)]

    def blocks(shape):
        def run():
            x, h = x0, h0
            for gu, dn, nm in layers:
                x, h = mlp_block.mlp_block(x, h, gu, dn, nm, 1e-6, shape)
            return x, h
        return run

    def time_it(name, run) -> None:
        try:
            row["ms"][name] = _graph_ms(run, replays=30)
        except Exception as exc:  # noqa: BLE001 - a side failing is a finding
            row["ms"][name] = repr(exc)[:300]
            torch.cuda.synchronize()
        ms = {k: t for k, t in row["ms"].items() if isinstance(t, float)}
        row["weights_tb_s"] = {k: gb / t for k, t in ms.items()}
        if "triton block x28" in ms:
            row["vs_triton_block"] = {k: t / ms["triton block x28"] for k, t in ms.items()}

    triton_shape = mlp_block.BlockShape.for_gpu(dev)
    want_x, want_h = blocks(triton_shape)()
    time_it("triton block x28", blocks(triton_shape))
    time_it("gluon block x28", blocks(mlp_block.BlockShape.for_gpu(dev, gluon=True, rest=REST)))
    print(json.dumps(row), flush=True)  # the baselines, in case the variant never returns

    buffers = Buffers(gate_up, down, norms, x0.clone(), h0.clone())
    descs = buffers.descriptors()
    launch(buffers, descs, variant)
    torch.cuda.synchronize()
    row["barrier_gave_up"] = bool(buffers.count[-1].item())
    for name, got, want in (("x", buffers.x, want_x), ("h", buffers.h, want_h)):
        row[f"{name}_rel_error"] = float((got.float() - want.float()).norm() / want.float().norm())
        row[f"{name}_bitwise"] = bool(torch.equal(got, want))

    def again():  # the same start every replay
        buffers.x.copy_(x0)
        buffers.h.copy_(h0)
        launch(buffers, descs, variant)

    time_it("variant", again)
    row["barrier_gave_up"] |= bool(buffers.count[-1].item())
    time_it("triton block x28 again", blocks(triton_shape))
    print(json.dumps(row), flush=True)


def _line(row: dict) -> str:
    times = "  ".join(f"{name} {t:.4f} ms ({row['weights_tb_s'][name]:.2f} TB/s)" if isinstance(t, float)
                      else f"{name} {t}" for name, t in row.get("ms", {}).items())
    checks = "  ".join(f"{k} {row[k]}" for k in ("x_rel_error", "h_rel_error", "barrier_gave_up", "skipped")
                       if k in row)
    tail = "" if row["ended"] == "exit 0" else f"  [{row['ended']}] {row.get('stderr', '')[-600:]!r}"
    return f"{row['variant']}: {times}  {checks}{tail}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--compile-only", action="store_true", help="compile every variant for sm_90a (no GPU) and exit")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # a child: one variant, JSON lines
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
    found = run_children(__file__, VARIANTS, label, TIMEOUT_S, _line)
    if args.out:
        write_json(args.out, {"device": torch.cuda.get_device_name(), "layers": LAYERS, "rows": ROWS, "hidden": H,
                              "intermediate": I, "programs": PROGRAMS, "variants": found})
    return 0


if __name__ == "__main__":
    sys.exit(main())
