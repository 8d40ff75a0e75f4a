"""What holds the MLP block's gate/up phase: its loads, its multiplies, its remainder, or its
restarting every layer? Loads and products timed with and without each part, on one GPU.

Usage (on the GPU machine):
    python bench/gpu_fabric.py [--out $OUT/fabric.json]

The decode step's gate/up at batch 128 reads, per layer, 55 MB of weights from memory and, since
every one of the 132 programs needs all of x [128, 1536] for its columns, 132 x 393 KB = 52 MB of
x from the L2. One persistent Triton kernel (`_read_kernel`: one program per multiprocessor,
tensor-descriptor loads pipelined over 6 stages, 4 warps) runs ONE loop through all 28 layers'
steps, so its load pipeline fills once, and times (ms for the 28 layers, the bytes a second that
crossed from the L2 to the multiprocessors, and those of them from memory):
  x only        every program reads x's 24 tiles of [128, 64] once a layer, each multiplied by a
                [64, 16] tile of ones (which makes Triton pipeline the loads: it does so for loads
                that feed a dot): 1.45 GB from the L2
  weights only  program p reads the gate and up rows at its first 64 columns in each layer (a
                [64, 64] tile of each a step, 24 steps a layer), times the ones: 1.54 GB
  x + weights   both in the same loop
  x + weights, gate/up's multiplies: the same loads, each step x times the gate and the up tile
                (no remainder rows, no SiLU x up, nothing stored)
and, in the same process, `trainer.mlp_block.mlp_block(..., phases=(1,))`, one launch a layer
(the same loads and multiplies, the remainder's 3-4 rows a program through masked pointer loads,
SiLU x up stored), the block's down phase alone with 64-column tiles (24 x 5 K slices: each program reads a fifth of the
activation, 55 MB a layer against the weights' 27.5) and 128-column tiles (12 x 11: 27.5 MB),
and the device-to-device copy rate. (At commit 57aa0ce the block also took `rest`, where the
gate/up phase reads its remainder, and this script timed it in a second loop and left out: calls
35-36 in docs/benchmarks.md.)
"""

from __future__ import annotations

import sys

from gpu_common import copy_bandwidth, gpu_bench_start, write_json

from trainer.triton_base import tl, triton  # (None, None) where Triton is missing

LAYERS, BATCH, HIDDEN, INTERMEDIATE = 28, 128, 1536, 8960

if triton is not None:
    @triton.jit
    def _read_kernel(x_desc, w_desc, out_ptr, LAYERS: tl.constexpr, H: tl.constexpr, I: tl.constexpr,
                     P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     X: tl.constexpr, W: tl.constexpr, FULL: tl.constexpr = False, F32_DOT: tl.constexpr = False):
        # Program p, layer l, step k: x's tile [0, k] (X) and gate's and up's [BLOCK_N, BLOCK_K]
        # tiles at p's first columns (W), each multiplied by a [BLOCK_K, 16] tile of ones (its
        # row sums, 16 times): a quarter of gate/up's multiplies, and what makes Triton pipeline
        # the loads (it does so for loads that feed a dot; summed in registers, they wait one by
        # one).
        p = tl.program_id(0)
        lo = p * I // P
        steps: tl.constexpr = H // BLOCK_K
        ones = tl.full([BLOCK_K, 16], 1.0, tl.float32 if F32_DOT else tl.bfloat16)
        acc_x = tl.zeros([BLOCK_M, 16], tl.float32)
        acc_w = tl.zeros([BLOCK_N, 16], tl.float32)
        acc_g = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        acc_u = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for i in range(LAYERS * steps):
            layer = i // steps
            k = (i % steps) * BLOCK_K
            if FULL:
                x = x_desc.load([0, k])
                g = w_desc.load([layer * 2 * I + lo, k])
                u = w_desc.load([layer * 2 * I + I + lo, k])
                acc_g = tl.dot(x, tl.trans(g), acc_g)
                acc_u = tl.dot(x, tl.trans(u), acc_u)
            else:
                if X:
                    x = x_desc.load([0, k])
                    acc_x = tl.dot(x.to(tl.float32) if F32_DOT else x, ones, acc_x)
                if W:
                    g = w_desc.load([layer * 2 * I + lo, k])
                    u = w_desc.load([layer * 2 * I + I + lo, k])
                    acc_w = tl.dot(g.to(tl.float32) if F32_DOT else g, ones, acc_w)
                    acc_w = tl.dot(u.to(tl.float32) if F32_DOT else u, ones, acc_w)
        total = tl.sum(tl.sum(acc_x, 1), 0) + tl.sum(tl.sum(acc_w, 1), 0)
        tl.store(out_ptr + p, total / 16 + tl.sum(tl.sum(acc_g, 1), 0) + tl.sum(tl.sum(acc_u, 1), 0))


def main(argv: list[str] | None = None) -> int:
    args, dev, gen = gpu_bench_start(__doc__, argv)
    import torch
    from triton.tools.tensor_descriptor import TensorDescriptor

    from trainer import mlp_block
    from trainer.triton_products import _graph_ms

    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    shape = mlp_block.BlockShape.for_gpu(dev)
    plan = shape.plan(HIDDEN, INTERMEDIATE)
    gate_up = (torch.randn(LAYERS * 2 * INTERMEDIATE, HIDDEN, device=dev, generator=gen) * 0.03).to(torch.bfloat16)
    x = torch.randn(BATCH, HIDDEN, device=dev, generator=gen).to(torch.bfloat16)
    out = torch.empty(sms, device=dev, dtype=torch.float32)
    bk, bn = shape.block_k, plan["BLOCK_N"]
    x_desc = TensorDescriptor.from_tensor(x, [BATCH, bk])
    w_desc = TensorDescriptor.from_tensor(gate_up, [bn, bk])

    def reads(x_on: bool, w_on: bool, full: bool = False):
        def run():
            _read_kernel[(sms,)](x_desc, w_desc, out, LAYERS=LAYERS, H=HIDDEN, I=INTERMEDIATE, P=sms, BLOCK_M=BATCH,
                                 BLOCK_N=bn, BLOCK_K=bk, X=x_on, W=w_on, FULL=full, num_warps=shape.warps,
                                 num_stages=shape.stages)
        return run

    # The loads are not dropped: the sums match torch's over the same tiles.
    reads(True, True)()
    lo = [p * INTERMEDIATE // sms for p in range(sms)]
    gu = gate_up.view(LAYERS, 2 * INTERMEDIATE, HIDDEN).float()
    want = torch.stack([x.float().sum() * LAYERS + gu[:, q:q + bn].sum() + gu[:, INTERMEDIATE + q:INTERMEDIATE + q + bn].sum()
                        for q in lo])
    check = float((out - want).abs().max() / want.abs().max())
    print(f"sums against torch's: max relative difference {check:.2e}", flush=True)

    gus = gate_up.view(LAYERS, 2 * INTERMEDIATE, HIDDEN)
    down = torch.zeros(HIDDEN, INTERMEDIATE, device=dev, dtype=torch.bfloat16)
    norm = torch.ones(HIDDEN, device=dev, dtype=torch.bfloat16)

    def gate_up_phase(phase_shape):
        def run():
            for layer in range(LAYERS):
                mlp_block.mlp_block(x, x, gus[layer], down, norm, 1e-6, phase_shape, phases=(1,))
        return run

    downs = (torch.randn(LAYERS, HIDDEN, INTERMEDIATE, device=dev, generator=gen) * 0.01).to(torch.bfloat16)

    def down_phase(down_shape):
        def run():
            for layer in range(LAYERS):
                mlp_block.mlp_block(x, x, gus[layer], downs[layer], norm, 1e-6, down_shape, phases=(2,))
        return run

    def down_bytes(down_shape):
        # every program with a tile reads its K slice of the activation, all rows
        used = down_shape.plan(HIDDEN, INTERMEDIATE)
        programs = used["TILES_N"] * used["SPLITS"]
        return programs * LAYERS * BATCH * (INTERMEDIATE // used["SPLITS"]) * 2, LAYERS * HIDDEN * INTERMEDIATE * 2

    wide = mlp_block.BlockShape(programs=sms, down_n=128)

    x_bytes = sms * LAYERS * BATCH * HIDDEN * 2  # every program reads all of x once a layer
    w_bytes = sms * LAYERS * 2 * bn * HIDDEN * 2  # the tiles the read kernel asks for
    phase_w_bytes = LAYERS * 2 * INTERMEDIATE * HIDDEN * 2  # the block's own rows (tile + remainder)
    cases = {"x only": (reads(True, False), x_bytes, 0), "weights only": (reads(False, True), 0, w_bytes),
             "x + weights": (reads(True, True), x_bytes, w_bytes),
             "x + weights, gate/up's multiplies": (reads(True, True, full=True), x_bytes, w_bytes),
             "gate/up phase (mlp_block)": (gate_up_phase(shape), x_bytes, phase_w_bytes),
             "down phase, 64-column tiles": (down_phase(shape), *down_bytes(shape)),
             "down phase, 128-column tiles": (down_phase(wide), *down_bytes(wide)),
             "x only again": (reads(True, False), x_bytes, 0)}
    found: dict[str, dict | float] = {"check_max_rel_diff": check}
    for name, (run, from_l2, from_memory) in cases.items():
        ms = _graph_ms(run, replays=30)
        row = {"ms": ms, "l2_to_sm_tb_s": (from_l2 + from_memory) / ms / 1e9, "memory_tb_s": from_memory / ms / 1e9}
        found[name] = row
        print(f"{name:28s} {ms:.4f} ms  L2 -> SM {row['l2_to_sm_tb_s']:.2f} TB/s  "
              f"(from memory {row['memory_tb_s']:.2f} TB/s)", flush=True)
    found["copy_tb_s"] = copy_bandwidth() / 1e12
    print(f"device-to-device copy {found['copy_tb_s']:.2f} TB/s", flush=True)
    result = {"device": torch.cuda.get_device_name(), "sms": sms, "layers": LAYERS, "batch": BATCH, "found": found}
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
