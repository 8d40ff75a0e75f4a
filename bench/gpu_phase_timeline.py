"""Where a layer's gate/up phase loses its time: each program's start, first products and end,
read from the GPU's clocks, for the MLP block's gate/up phase launched once a layer.

Usage (on the GPU machine):
    python bench/gpu_phase_timeline.py [--out $OUT/phase_timeline.json]

The block's gate/up phase takes 0.56 ms for 28 layers where the same loads and multiplies in one
loop through all layers take 0.34 (bench/gpu_fabric.py): ~5.7 us a layer of restarting. Here the
phase's own code (`trainer.mlp_block._gate_up_phase`), wrapped in a kernel that reads the global
timer (%globaltimer, ns, the same on every SM) when its program starts and ends, and its SM's
cycle counter (clock64) at the start, after the first K step (its first tiles landed and were
multiplied) and at the end, runs 28 times in one CUDA graph (Qwen2.5-1.5B's shapes at batch
128, random bf16 weights). Per launch, over its 132 programs: the spread of their starts, the
time to their first step (the pipeline's fill: the first K step's loads and products, run once
more alone before the phase), the phase's own time after it, and the spread of their ends (the
slowest program against the median one), in us (cycles over each program's timer time give the
clock); medians over the 28 launches, beside the launches' period (graph time / 28) and the same
kernel untimed (what the timers and the extra first step cost).
"""

from __future__ import annotations

import statistics
import sys

from gpu_common import gpu_bench_start, write_json

from trainer.triton_base import tl, triton  # (None, None) where Triton is missing

LAYERS, BATCH, HIDDEN, INTERMEDIATE = 28, 128, 1536, 8960

if triton is not None:
    from trainer.mlp_block import _gate_up_phase

    @triton.jit
    def _now():
        return tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False,
                                         pack=1)

    @triton.jit
    def _cycles():
        return tl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l", [], dtype=tl.int64, is_pure=False, pack=1)

    @triton.jit
    def _cycles_after(value):
        # the cycle counter, read once `value` is known (an operand, so it cannot be read before)
        return tl.inline_asm_elementwise("mov.u64 $0, %clock64; // $1", "=l,r", [value], dtype=tl.int64,
                                         is_pure=False, pack=1)

    @triton.jit
    def _timed_gate_up(h_ptr, h_desc, gu_ptr, gu_desc, act_ptr, times_ptr, rows, H: tl.constexpr,
                       I: tl.constexpr, P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, TIMED: tl.constexpr):
        # times [P, 5]: start and end (global timer, ns); start, after the first K step and end
        # (clock64 cycles). The first K step is run once more, alone, before the phase (its
        # products thrown away): what a program waits for its first tiles.
        p = tl.program_id(0)
        if TIMED:
            t0 = _now()
            c0 = _cycles()
            x = h_desc.load([0, 0])
            g = gu_desc.load([p * I // P, 0])
            first = tl.sum(tl.sum(tl.dot(x, tl.trans(g)), 1), 0)
            c1 = _cycles_after(first)
        _gate_up_phase(h_ptr, h_desc, gu_ptr, gu_desc, act_ptr, p, rows, H, I, P, BLOCK_M, BLOCK_K, BLOCK_N,
                       BLOCK_R, True, False)
        if TIMED:
            c2 = _cycles()
            t1 = _now()
            base = times_ptr + p * 6
            tl.store(base, t0)
            tl.store(base + 1, t1)
            tl.store(base + 2, c0)
            tl.store(base + 3, c1)
            tl.store(base + 4, c2)
            tl.store(base + 5, first.to(tl.int64))  # keeps the first step's products


def main(argv: list[str] | None = None) -> int:
    args, dev, gen = gpu_bench_start(__doc__, argv)
    import torch
    from triton.tools.tensor_descriptor import TensorDescriptor

    from trainer import mlp_block
    from trainer.triton_products import _graph_ms

    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    shape = mlp_block.BlockShape.for_gpu(dev)
    plan = shape.plan(HIDDEN, INTERMEDIATE)
    gate_ups = [(torch.randn(2 * INTERMEDIATE, HIDDEN, device=dev, generator=gen) * HIDDEN ** -0.5).to(torch.bfloat16)
                for _ in range(LAYERS)]
    h = torch.randn(BATCH, HIDDEN, device=dev, generator=gen).to(torch.bfloat16)
    act = torch.empty(BATCH, INTERMEDIATE, device=dev, dtype=torch.bfloat16)
    times = torch.zeros(LAYERS, sms, 6, device=dev, dtype=torch.int64)
    bk = shape.block_k

    h_desc = TensorDescriptor.from_tensor(h, [BATCH, bk])
    gu_descs = [TensorDescriptor.from_tensor(w, [plan["BLOCK_N"], bk]) for w in gate_ups]

    def run(timed: bool):
        def go():
            for layer in range(LAYERS):
                _timed_gate_up[(sms,)](h, h_desc, gate_ups[layer], gu_descs[layer], act, times[layer], BATCH,
                                       H=HIDDEN, I=INTERMEDIATE, P=sms, BLOCK_M=BATCH, BLOCK_K=bk, TIMED=timed,
                                       BLOCK_N=plan["BLOCK_N"], BLOCK_R=plan["BLOCK_R"], num_warps=shape.warps,
                                       num_stages=shape.stages)
        return go

    # The phase's output is the block's: SiLU x up of the last layer, against the block's phase 1.
    run(True)()
    want_act = act.clone()
    mlp_block.mlp_block(h, h, gate_ups[-1], torch.zeros(HIDDEN, INTERMEDIATE, device=dev, dtype=torch.bfloat16),
                        torch.ones(HIDDEN, device=dev, dtype=torch.bfloat16), 1e-6, shape, phases=(1,))
    block_act = mlp_block.workspace(h.device, BATCH, HIDDEN, INTERMEDIATE, plan["SPLITS"], torch.bfloat16)[0]
    equal = bool(torch.equal(block_act, want_act))
    untimed_ms = _graph_ms(run(False), replays=30)
    timed_ms = _graph_ms(run(True), replays=30)
    t = times.double().cpu()  # the last replay's
    start, end = t[..., 0], t[..., 1]
    # cycles a ns, from each program's own cycles over its global-timer time
    clock_ghz = float(((t[..., 4] - t[..., 2]) / (end - start).clamp(min=1)).median())
    first_us = (t[..., 3] - t[..., 2]) / (clock_ghz * 1e3)
    own_us = (t[..., 4] - t[..., 3]) / (clock_ghz * 1e3)
    per_launch = {
        "start spread (first to last program)": ((start.max(1).values - start.min(1).values) / 1e3).tolist(),
        "first step (fill), median program": first_us.median(1).values.tolist(),
        "first step (fill), slowest program": first_us.max(1).values.tolist(),
        "program's phase after it, median": own_us.median(1).values.tolist(),
        "program's phase after it, slowest": own_us.max(1).values.tolist(),
        "end spread (median program to last)": ((end.max(1).values - end.median(1).values) / 1e3).tolist(),
        "launch (first start to last end)": ((end.max(1).values - start.min(1).values) / 1e3).tolist(),
        "gap to the next launch's first start": ((start[1:].min(1).values - end[:-1].max(1).values) / 1e3).tolist(),
    }
    found = {"act_equals_the_blocks": equal, "untimed_ms": untimed_ms, "timed_ms": timed_ms,
             "period_us": timed_ms * 1e3 / LAYERS, "clock_ghz": clock_ghz,
             "median_us": {k: statistics.median(v) for k, v in per_launch.items()}, "per_launch_us": per_launch}
    print(f"SiLU x up equals the block's phase: {equal}; 28 launches {untimed_ms:.4f} ms untimed, "
          f"{timed_ms:.4f} ms timed ({found['period_us']:.2f} us a launch)", flush=True)
    for k, v in found["median_us"].items():
        print(f"  {k:40s} {v:7.2f} us (median of {len(per_launch[k])})", flush=True)
    if args.out:
        write_json(args.out, {"device": torch.cuda.get_device_name(), "sms": sms, "found": found})
    return 0


if __name__ == "__main__":
    sys.exit(main())
