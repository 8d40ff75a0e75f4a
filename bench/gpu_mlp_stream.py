"""How much of the MLP block's time is its phase boundaries? 28 layers' MLP products in one
persistent launch, with and without the device-wide barriers between phases, against the block.

Usage (on the GPU machine):
    python bench/gpu_mlp_stream.py [--out $OUT/mlp_stream.json]

Qwen2.5-1.5B's shapes at batch 128, 28 layers of random bf16 weights stacked in one gate | up
tensor [28 x 17920, 1536] and one down tensor [28 x 1536, 8960]. Side by side in one process,
each captured in a CUDA graph (`trainer.triton_products._graph_ms`), ms for the 28 layers:
  block          `trainer.mlp_block.mlp_block`, one launch a layer (the decode step's form:
                 gate/up with SiLU x up, barrier, down, barrier, reduce + residual + RMSNorm)
  phases 1+2     its gate/up phase and its down phase as two launches a layer (no barriers, no
                 reduce): 56 launches
  one launch, barriers     the same two phases for all 28 layers in one cooperative launch of
                 one program per multiprocessor, a device-wide barrier after each phase (55)
  one launch, no barriers  the same without the barriers: every program streams its tiles of
                 all 28 layers back to back. The down phase then reads an activation that other
                 programs may not have written yet, so its numbers are wrong: this form is a
                 timing only, the time the two phases take when no program ever waits for
                 another, with the SMs' loads of one phase running into the next's
  ..., opaque zero         the same with a zero the compiler cannot see through added to its
                 addresses (see the kernel)
  a layer a launch         the one-launch kernel for one layer at a time, 28 launches
and the weights' bytes at the copy rate (gpu_common.copy_bandwidth). One launch without barriers
against the 56 launches is what the launches cost; with barriers against without, what the
barriers cost. On an H200 (docs/benchmarks.md, issue 18, calls 33-34) one launch saved nothing
(0.93 ms against 0.91 in 56), since each phase's loop still fills its load pipeline and drains
once a layer (bench/gpu_fabric.py times what that costs), and the barriers cost ~2 us each (1.06
with them).
"""

from __future__ import annotations

import sys

from gpu_common import copy_bandwidth, gpu_bench_start, write_json

from trainer.triton_base import tl, triton  # (None, None) where Triton is missing

LAYERS, BATCH, HIDDEN, INTERMEDIATE, EPS = 28, 128, 1536, 8960, 1e-6

if triton is not None:
    from trainer.mlp_block import _arrive_and_wait, _down_phase, _gate_up_phase

    @triton.jit
    def _stream_kernel(h_ptr, h_desc, gu_ptr, gu_desc, act_ptr, act_desc, down_ptr, down_desc, part_ptr, sync_ptr,
                       rows, first, LAYERS: tl.constexpr, H: tl.constexpr, I: tl.constexpr, P: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
                       DOWN_N: tl.constexpr, SPLITS: tl.constexpr, TILES_N: tl.constexpr, BARRIERS: tl.constexpr,
                       OPAQUE: tl.constexpr = False, F32_DOT: tl.constexpr = False):
        # Layers [first, first + LAYERS): each one's gate/up phase, then its down phase, with a
        # barrier after each (BARRIERS) or none. Barrier j of the launch waits on its own counter
        # (sync_ptr + j); the last program to leave the last one puts them all back to 0 (counter
        # 2 * LAYERS is the tickets).
        p = tl.program_id(0)
        for j in range(LAYERS):
            layer = first + j
            # OPAQUE: a zero the compiler cannot see through, so that the addresses built from it
            # are made again in every layer instead of hoisted out of the loop and kept live
            # across it (they spill, outside the inner loops). It also hides their alignment: on
            # an H200 the loads and stores that lose their width made the launch 1.56x slower.
            z = 0
            if OPAQUE:
                z = tl.inline_asm_elementwise("mov.u32 $0, 0;", "=r", [], dtype=tl.int32, is_pure=False, pack=1)
            _gate_up_phase(h_ptr + z, h_desc, gu_ptr + z, gu_desc, act_ptr + z, p, rows, H, I, P, BLOCK_M,
                           BLOCK_K, BLOCK_N, BLOCK_R, True, F32_DOT, row0=layer * 2 * I)
            if BARRIERS:
                _arrive_and_wait(sync_ptr + 2 * j, sync_ptr + 2 * LAYERS + 1, P, True)
            _down_phase(act_ptr + z, act_desc, down_ptr + z, down_desc, part_ptr + z, p, rows, H, I, BLOCK_M, BLOCK_K, DOWN_N,
                        SPLITS, TILES_N, True, F32_DOT, row0=layer * H)
            if BARRIERS:
                _arrive_and_wait(sync_ptr + 2 * j + 1, sync_ptr + 2 * LAYERS + 1, P, True)
        if BARRIERS:  # noqa: SIM102 - no ticket drawn without barriers
            if tl.atomic_add(sync_ptr + 2 * LAYERS, 1, sem="acq_rel", scope="gpu") == P - 1:
                for c in range(2 * LAYERS + 1):
                    tl.atomic_xchg(sync_ptr + c, 0)


def main(argv: list[str] | None = None) -> int:
    args, dev, gen = gpu_bench_start(__doc__, argv)
    import torch
    from triton.tools.tensor_descriptor import TensorDescriptor

    from trainer import mlp_block
    from trainer.qwen2_decode import rms_norm
    from trainer.triton_products import _graph_ms

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, device=dev, generator=gen) * scale).to(torch.bfloat16)

    gate_up = rand(LAYERS * 2 * INTERMEDIATE, HIDDEN, scale=HIDDEN ** -0.5)
    down = rand(LAYERS * HIDDEN, INTERMEDIATE, scale=INTERMEDIATE ** -0.5)
    norms = [1 + 0.1 * rand(HIDDEN) for _ in range(LAYERS)]
    x0 = rand(BATCH, HIDDEN)
    h0 = rms_norm(x0, norms[0], EPS)
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    shape = mlp_block.BlockShape.for_gpu(dev)
    plan = shape.plan(HIDDEN, INTERMEDIATE)
    gus = gate_up.view(LAYERS, 2 * INTERMEDIATE, HIDDEN)
    downs = down.view(LAYERS, HIDDEN, INTERMEDIATE)

    def block():
        x, h = x0, h0
        for layer in range(LAYERS):
            x, h = mlp_block.mlp_block(x, h, gus[layer], downs[layer], norms[layer], EPS, shape)
        return x, h

    def phases():
        for layer in range(LAYERS):
            mlp_block.mlp_block(x0, h0, gus[layer], downs[layer], norms[layer], EPS, shape, phases=(1, 2))

    act, part, _ = mlp_block.workspace(h0.device, BATCH, HIDDEN, INTERMEDIATE, plan["SPLITS"], torch.bfloat16)
    sync = torch.zeros(2 * LAYERS + 2, device=dev, dtype=torch.int32)
    bm, bk = BATCH, shape.block_k

    desc = TensorDescriptor.from_tensor
    descs = (desc(h0, [bm, bk]), desc(gate_up, [plan["BLOCK_N"], bk]), desc(act, [bm, bk]),
             desc(down, [shape.down_n, bk]))

    def launch(first: int, layers: int, barriers: bool, opaque: bool = False):
        _stream_kernel[(sms,)](h0, descs[0], gate_up, descs[1], act, descs[2], down, descs[3], part, sync, BATCH,
                               first, LAYERS=layers, H=HIDDEN, I=INTERMEDIATE, P=sms, BLOCK_M=bm, BLOCK_K=bk,
                               DOWN_N=shape.down_n, BARRIERS=barriers, OPAQUE=opaque, num_warps=shape.warps,
                               num_stages=shape.stages, launch_cooperative_grid=True, **plan)

    def one_launch(barriers: bool, opaque: bool = False):
        return lambda: launch(0, LAYERS, barriers, opaque)

    def layer_a_launch(barriers: bool):
        return lambda: [launch(layer, 1, barriers) for layer in range(LAYERS)]

    # The one launch with barriers computes what the 28 phase pairs compute (the last layer's
    # partials): a check that it runs the same products, and that no barrier gave up.
    phases()
    want = part.clone()
    one_launch(True)()
    torch.cuda.synchronize()
    check = {"partials_rel_error": float((part - want).norm() / want.norm()),
             "barrier_gave_up": int(sync[2 * LAYERS + 1].item()), "counters_left": int(sync[:2 * LAYERS + 1].abs().sum())}
    print("one launch with barriers against the phase launches:", check, flush=True)

    copy_tb_s = copy_bandwidth() / 1e12
    weight_bytes = (gate_up.numel() + down.numel()) * 2
    floor_ms = weight_bytes / copy_tb_s / 1e9
    variants = {"block": block, "phases 1+2": phases, "one launch, barriers": one_launch(True),
                "one launch, no barriers": one_launch(False),
                "one launch, no barriers, opaque zero": one_launch(False, opaque=True),
                "a layer a launch, barriers": layer_a_launch(True), "a layer a launch, no barriers": layer_a_launch(False),
                "block again": block}
    found: dict[str, float | str] = {}
    for name, run in variants.items():
        try:
            found[name] = _graph_ms(run, replays=30)
            print(f"{name:28s} {found[name]:.4f} ms  ({floor_ms / found[name]:.0%} of the copy rate)", flush=True)
        except Exception as exc:  # noqa: BLE001 - a variant failing is a finding
            found[name] = repr(exc)[:300]
            print(f"{name:28s} {found[name]}", flush=True)
            torch.cuda.synchronize()
    print(f"weights {weight_bytes / 1e9:.3f} GB at the copy rate {copy_tb_s:.2f} TB/s: {floor_ms:.4f} ms", flush=True)
    result = {"device": torch.cuda.get_device_name(), "sms": sms, "layers": LAYERS, "batch": BATCH,
              "copy_tb_s": copy_tb_s, "weights_floor_ms": floor_ms, "check": check, "ms": found}
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
