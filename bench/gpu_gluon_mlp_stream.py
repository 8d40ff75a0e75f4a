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

import sys

import torch
from gluon_stream_parts import bench_main, compile_all, print_row, row_line, time_into

from trainer.gluon_products import gl, gluon
from trainer.gluon_stream import BLOCK_K, REST, TILE, tma_desc

LAYERS, ROWS, H, I = 28, 128, 1536, 8960
PROGRAMS = 132  # an H200's (and H100 SXM's) multiprocessors; one program each
TILES_N = H // TILE  # 24 down tiles of 64 columns
SPLITS = PROGRAMS // TILES_N  # 5 K slices of down: 120 down programs
TIMEOUT_S = 120
# (stages, the weights wait for each phase's dependency, one launch a layer instead of one for all)
VARIANTS = ((6, 0, 0), (6, 1, 0), (5, 0, 0), (6, 0, 1))


def label(variant) -> str:
    stages, wait, per_layer = variant
    return f"mlp stream s{stages} weights {'wait' if wait else 'ahead'}{', a launch a layer' if per_layer else ''}"


if gluon is not None:

    from trainer.gluon_ring import (
        _add_norm,
        _arrive,
        _gate_up,
        _load_gate_up,
        _load_tiles,
        _product,
        _ring,
        _slice,
        _wait_for_all,
    )

    @gluon.jit
    def _weights(gu_desc, r_desc, down_desc, g_bufs, u_bufs, gr_bufs, ur_bufs, w_ready, empty, count_ptr, failed_ptr,
                 p, layer0, H: gl.constexpr, I: gl.constexpr, P: gl.constexpr, LAYERS: gl.constexpr,
                 TILES_N: gl.constexpr, SPLITS: gl.constexpr, WAIT: gl.constexpr):
        # One warp: gate/up's tiles, then down's for its slice, layer after layer. With WAIT, each
        # phase's only after the dependency its inputs wait for (the stream restarting).
        block_k: gl.constexpr = g_bufs.shape[2]
        tile: gl.constexpr = g_bufs.shape[1]
        d_tile, _, d_first, d_steps = _slice(p, I // block_k, TILES_N, SPLITS)
        n = gl.to_tensor(0)
        for layer in range(LAYERS):
            if WAIT and layer > 0:  # h of this layer: the norm of the one before
                _wait_for_all(count_ptr + 3 * layer - 1, failed_ptr, P)
            n = _load_gate_up(gu_desc, r_desc, (layer0 + layer) * 2 * I, p * I // P, 0, H // block_k, n, g_bufs, u_bufs,
                              gr_bufs, ur_bufs, w_ready, empty, I)
            if WAIT:  # act: every program's gate/up
                _wait_for_all(count_ptr + 3 * layer, failed_ptr, P)
            n = _load_tiles(down_desc, (layer0 + layer) * H + d_tile * tile, d_first, d_steps, n, g_bufs, w_ready, empty)

    @gluon.jit
    def _activations(h_desc, act_desc, x_bufs, x_ready, empty, count_ptr, failed_ptr, p, H: gl.constexpr,
                     I: gl.constexpr, P: gl.constexpr, LAYERS: gl.constexpr, TILES_N: gl.constexpr,
                     SPLITS: gl.constexpr):
        # One warp: h's tiles after the layer before's norm, act's tiles of its slice after gate/up
        block_k: gl.constexpr = x_bufs.shape[2]
        _, _, d_first, d_steps = _slice(p, I // block_k, TILES_N, SPLITS)
        n = gl.to_tensor(0)
        for layer in range(LAYERS):
            if layer > 0:  # h: the layer before's norm, every row
                _wait_for_all(count_ptr + 3 * layer - 1, failed_ptr, P)
            n = _load_tiles(h_desc, 0, 0, H // block_k, n, x_bufs, x_ready, empty)
            if d_steps > 0:  # act: every program's gate/up
                _wait_for_all(count_ptr + 3 * layer, failed_ptr, P)
            n = _load_tiles(act_desc, 0, d_first, d_steps, n, x_bufs, x_ready, empty)

    @gluon.jit
    def _multiply(x_bufs, g_bufs, u_bufs, gr_bufs, ur_bufs, x_ready, w_ready, empty, act_ptr, part_ptr, x_ptr, h_ptr,
                  norm_ptr, count_ptr, failed_ptr, p, layer0, rows, eps, H: gl.constexpr, I: gl.constexpr,
                  P: gl.constexpr, LAYERS: gl.constexpr, TILES_N: gl.constexpr, SPLITS: gl.constexpr,
                  NORM_BLOCK: gl.constexpr, num_warps: gl.constexpr):
        # The warp group: per layer (1) gate/up with SiLU x up, (2) down's partial, (3) after every
        # program's down, row p's residual + RMSNorm with the layer's following norm, in place
        block_k: gl.constexpr = x_bufs.shape[2]
        tile: gl.constexpr = g_bufs.shape[1]
        d_tile, split, _, d_steps = _slice(p, I // block_k, TILES_N, SPLITS)
        n = gl.to_tensor(0)
        for layer in range(LAYERS):
            n = _gate_up(x_bufs, g_bufs, u_bufs, gr_bufs, ur_bufs, x_ready, w_ready, empty, n, act_ptr, p * I // P,
                         (p + 1) * I // P, rows, H, I, num_warps)
            _arrive(count_ptr + 3 * layer)
            n = _product(x_bufs, g_bufs, x_ready, w_ready, empty, d_steps, n, part_ptr, split, d_tile * tile, rows, H,
                         num_warps)
            _arrive(count_ptr + 3 * layer + 1)
            _wait_for_all(count_ptr + 3 * layer + 1, failed_ptr, P)
            _add_norm(part_ptr, x_ptr, norm_ptr + (layer0 + layer) * H, h_ptr, p, rows, eps, H, SPLITS, NORM_BLOCK,
                      num_warps)
            _arrive(count_ptr + 3 * layer + 2)

    @gluon.jit
    def _mlp_stream(h_desc, gu_desc, r_desc, act_desc, down_desc, act_ptr, part_ptr, x_ptr, h_ptr, norm_ptr, count_ptr,
                    failed_ptr, layer0, rows, eps, H: gl.constexpr, I: gl.constexpr, P: gl.constexpr,
                    LAYERS: gl.constexpr, STAGES: gl.constexpr, TILES_N: gl.constexpr, SPLITS: gl.constexpr,
                    NORM_BLOCK: gl.constexpr, WAIT: gl.constexpr, num_warps: gl.constexpr):
        p = gl.program_id(0)
        x_bufs, g_bufs, u_bufs, gr_bufs, ur_bufs, x_ready, w_ready, empty = _ring(h_desc, gu_desc, r_desc, STAGES)
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
        return (tma_desc(self.h, [ROWS, BLOCK_K]), tma_desc(self.gate_up, [TILE, BLOCK_K]),
                tma_desc(self.gate_up, [REST, BLOCK_K]), tma_desc(self.act, [ROWS, BLOCK_K]),
                tma_desc(self.down, [TILE, BLOCK_K]))


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
    """Every variant compiled for sm_90a without a GPU (`compile_all`)."""
    e = {"dtype": torch.bfloat16}
    buffers = Buffers(torch.empty(LAYERS * 2 * I, H, **e), torch.empty(LAYERS * H, I, **e), torch.empty(LAYERS, H, **e),
                      torch.empty(ROWS, H, **e), torch.empty(ROWS, H, **e))
    descs = buffers.descriptors()
    return compile_all((label(v), lambda v=v: launch(buffers, descs, v, compile_only=True)) for v in VARIANTS)


def one(index: int) -> None:
    """Variant `index` and the blocks on the same 28 layers, in this process: a JSON line after
    the baselines, the whole row after the variant."""
    from trainer import mlp_block

    variant = VARIANTS[index]
    dev = torch.device("cuda")
    programs = torch.cuda.get_device_properties(dev).multi_processor_count
    row = {"variant": label(variant), "stages": variant[0], "weights_wait": variant[1], "per_layer": variant[2],
           "device": torch.cuda.get_device_name(), "sms": programs, "ms": {}}
    if programs != PROGRAMS:
        row["skipped"] = f"{programs} multiprocessors; the split is {PROGRAMS} programs'"
        print_row(row)
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
        time_into(row, name, run, gb=gb, ratios=(("vs_triton_block", "triton block x28"),))

    triton_shape = mlp_block.BlockShape.for_gpu(dev)
    want_x, want_h = blocks(triton_shape)()
    time_it("triton block x28", blocks(triton_shape))
    time_it("gluon block x28", blocks(mlp_block.BlockShape.for_gpu(dev, gluon=True, rest=REST)))
    print_row(row)  # the baselines, in case the variant never returns

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
    print_row(row)


def _line(row: dict) -> str:
    return row_line(row, lambda key: key in ("x_rel_error", "h_rel_error", "barrier_gave_up"))


def main(argv: list[str] | None = None) -> int:
    return bench_main(argv, __doc__, __file__, compile_only, one, VARIANTS, label, TIMEOUT_S, _line,
                      {"layers": LAYERS, "rows": ROWS, "hidden": H, "intermediate": I, "programs": PROGRAMS})


if __name__ == "__main__":
    sys.exit(main())
