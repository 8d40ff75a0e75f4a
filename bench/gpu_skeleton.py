"""What the decode step's shape costs with no work in it: its 150 launches and 56 barriers,
each kernel reading what the one before wrote and doing nothing else.

Usage (on the GPU machine):
    python bench/gpu_skeleton.py [--out $OUT/skeleton.json]

The fused step with the MLP block (trainer/fused_decode.py) runs, per layer, five kernels: the
q/k/v product (cuBLAS, ~96 tiles), `rope_attention` (256 programs: row x KV head), the o product
(~96 tiles), residual + RMSNorm (128 programs, one a row) and the MLP block (one program a
multiprocessor, a cooperative launch with two device-wide barriers); 28 layers and ~10 more
kernels a step (embedding, mask, first norm, head, counters): 150 kernels. Here each of them is a
Triton kernel of the same grid whose programs read one int32 the kernel before wrote and write
one, and the block's stand-in passes the same two barriers (`trainer.mlp_block._arrive_and_wait`
and `_reset_barriers`). Each skeleton in a CUDA graph, 200 replays after a warm one, ms a replay:
  step          the whole step's 150 kernels and 56 barriers
  no barriers   the same launches, the block's stand-in passing no barrier
  one program   150 launches of one program each (the launch chain alone)
  blocks        the block's stand-in alone, 28 launches with their barriers; without them; again
What the step's real kernels take beyond the skeleton is their memory and arithmetic plus what the
skeleton cannot show (a real kernel's pipeline fill and drain, its slowest program). The stand-ins
hold no shared memory (the block's programs hold ~200 KB each).
"""

from __future__ import annotations

import sys

from gpu_common import gpu_bench_start, write_json

from trainer.triton_base import tl, triton  # (None, None) where Triton is missing

LAYERS = 28
# The fused step's kernels per layer as (grid, warps): q/k/v, attention, o, residual + RMSNorm;
# the block (one program a multiprocessor) follows each layer; EXTRA kernels once a step.
LAYER_GRIDS = ((96, 4), (256, 4), (96, 4), (128, 4))
EXTRA = ((128, 4), (128, 4), (128, 4), (128, 4), (1, 1), (1, 1), (96, 4), (1, 1), (1, 1), (1, 1))

if triton is not None:
    from trainer.mlp_block import _arrive_and_wait, _reset_barriers

    @triton.jit
    def _touch(src, dst, n):
        # read what the kernel before wrote (one int32), write one
        p = tl.program_id(0)
        v = tl.load(src + p % n)
        tl.store(dst + p, v + 1)

    @triton.jit
    def _block(src, dst, sync, n, P: tl.constexpr, BARRIERS: tl.constexpr):
        # the MLP block's stand-in: its grid, its two barriers and their reset, no work
        p = tl.program_id(0)
        v = tl.load(src + p % n)
        if BARRIERS:
            _arrive_and_wait(sync, sync + 3, P, False)
            _arrive_and_wait(sync + 1, sync + 3, P, False)
            _reset_barriers(sync, p, P)
        tl.store(dst + p, v + 1)


def main(argv: list[str] | None = None) -> int:
    args, dev, _ = gpu_bench_start(__doc__, argv)
    import torch

    from trainer.triton_products import _graph_ms

    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    bufs = [torch.zeros(1024, device=dev, dtype=torch.int32) for _ in range(2)]
    sync = torch.zeros(4, device=dev, dtype=torch.int32)
    state = {"at": 0, "n": 1}

    def touch(grid: int, warps: int) -> None:
        src, dst = bufs[state["at"]], bufs[1 - state["at"]]
        _touch[(grid,)](src, dst, state["n"], num_warps=warps)
        state["at"], state["n"] = 1 - state["at"], grid

    def block(barriers: bool) -> None:
        src, dst = bufs[state["at"]], bufs[1 - state["at"]]
        _block[(sms,)](src, dst, sync, state["n"], P=sms, BARRIERS=barriers, num_warps=4,
                       launch_cooperative_grid=True)
        state["at"], state["n"] = 1 - state["at"], sms

    def step(barriers: bool = True):
        def run() -> None:
            for grid, warps in EXTRA[:3]:
                touch(grid, warps)
            for _ in range(LAYERS):
                for grid, warps in LAYER_GRIDS:
                    touch(grid, warps)
                block(barriers)
            for grid, warps in EXTRA[3:]:
                touch(grid, warps)
        return run

    launches = len(EXTRA) + LAYERS * (len(LAYER_GRIDS) + 1)

    def one_program() -> None:
        for _ in range(launches):
            touch(1, 1)

    def blocks(barriers: bool):
        def run() -> None:
            for _ in range(LAYERS):
                block(barriers)
        return run

    skeletons = {"step": step(), "no barriers": step(barriers=False), "one program": one_program,
                 "blocks": blocks(True), "blocks without barriers": blocks(False), "blocks again": blocks(True),
                 "step again": step()}
    found: dict[str, object] = {"device": torch.cuda.get_device_name(dev), "sms": sms, "launches": launches,
                                "barriers": 2 * LAYERS}
    for name, run in skeletons.items():
        ms = _graph_ms(run, replays=200)
        found[name] = {"ms": ms, "us_per_launch": ms * 1e3 / (LAYERS if name.startswith("blocks") else launches)}
        print(f"{name:24s} {ms:.4f} ms  ({found[name]['us_per_launch']:.2f} us a launch)", flush=True)
    found["sync_left_at_zero"] = bool((sync[:3] == 0).all().item())
    found["barrier_gave_up"] = bool(sync[3].item())
    print(f"counters back at 0: {found['sync_left_at_zero']}, a barrier gave up: {found['barrier_gave_up']}", flush=True)
    if args.out:
        write_json(args.out, found)
    return 0


if __name__ == "__main__":
    sys.exit(main())
