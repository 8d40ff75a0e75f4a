"""The decode step as two kernels a layer (trainer/gluon_stream.py): the attention, then
everything after it up to the next layer's q/k/v in one warp-specialized Gluon launch whose
weights stream through its five waits, against the fused steps the decode engine chooses from.

    python bench/gpu_gluon_layer_stream.py [--out $OUT/gluon_layer_stream.json]  # GPU machine (132 SMs)
    python bench/gpu_gluon_layer_stream.py --compile-only                        # anywhere: sm_90a, no GPU
    BENCH_STREAM_INIT=hf python bench/gpu_gluon_layer_stream.py  # weights as transformers initialises a Qwen2

Variants (trainer.gluon_stream.StreamVariant): 6 stages with the weights streaming ahead; the
same launched with programmatic dependent launch after the attention kernel; the weights waiting
at each dependency. trainer/gluon_products.py's o kernel, launched so, gained 0.07 ms a step on
an H200 (calls 57-63). The last two: 5 stages, its outputs written by TMA stores (session 25; the
first two's plain stores are 2 bytes an element, and each wait after them waits for them all).

Each variant runs in its own process, killed after TIMEOUT_S. Side by side in it, on Qwen2.5-1.5B's
shapes with random weights (q/k/v biases), batch 128, a random cache with 8-row groups sharing a
prompt: the plain step (trainer/qwen2_decode.decode_step, SDPA), the fused step with the MLP block,
the same with o as the Gluon kernel in its two fastest shapes (`decode_graphs.prefetched_o`), and
the stream step, each captured in a CUDA graph (`_graph_ms`, the state's slot and positions put
back in each replay). Checked: each step's logits against the plain step's from the same state
(relative error; the fused step's own check allows 0.1, bf16 rounding orders on random weights
give ~0.035), run eagerly and, for the stream step and the fused step with the MLP block, also
captured and replayed as the engine does it (`graphed`; in call 84 the same 0.028 as eagerly,
after one replay and after 25), the cache slot each wrote, and the barrier spin limit's flag; and
one layer of the kernel against `LayerStream.reference` (the same arithmetic in torch, which the tests run in the
kernel's place through a tiny model's step on a CPU, against the plain step), buffer by buffer.
The one layer and a first whole step run traced (StreamVariant.trace) and watched: a launch not
finished after WATCH_S is a hang, and the row then says which layer and counter it stopped at
and where each program's partitions stand (`hung`) before the child ends, so one call diagnoses a
deadlock.

What would decide it: the replay against the fastest fused step, the one the engine keeps (with
the MLP block and o as trainer/gluon_products.py's kernel: 1.73 ms at the first bucket in call 79;
with cuBLAS's o 1.77), both timed here in the same process. The engine itself times the stream
step beside its others where RLTUI_DECODE_STREAM=1 (bench/gpu_step.py, its decode table).
"""

import os
import sys
from dataclasses import replace

import torch
from gluon_stream_parts import bench_main, compile_all, print_row, row_line, time_into

from trainer.fused_decode import stream_step
from trainer.gluon_stream import (
    LayerStream,
    StreamShape,
    StreamVariant,
    compile_layer,
)
from trainer.qwen2_decode import ModelDims

DIMS = ModelDims(layers=28, hidden=1536, heads=12, kv_heads=2, head_dim=128, intermediate=8960, vocab=151936,
                 eps=1e-6, rope_theta=1e6)  # Qwen2.5-1.5B
ROWS, PROGRAMS = 128, 132
TIMEOUT_S = 240
CAPACITY, FILLED, PROMPT, GROUP = 384, 250, 96, 8  # cache slots, slots filled before the step, shared prompt
VARIANTS = (StreamVariant(), StreamVariant(pdl=True), StreamVariant(wait=True), StreamVariant(stages=5, tma_store=True),
            StreamVariant(stages=5, tma_store=True, pdl=True))
WATCH_S = 30  # a launch not finished after this long is a hang: its marks are read and the child ends
# the random weights: "fan_in" (the default) or "hf", as transformers initialises them (`random_model`)
INIT = os.environ.get("BENCH_STREAM_INIT", "fan_in")


def watched(row: dict, what: str, run, work: LayerStream, seconds: float = WATCH_S) -> None:
    """Run `run` (GPU work on the current stream) and wait for it at most `seconds`. Past that,
    copy the kernel's counters and marks on a side stream (a copy engine reads them while the
    kernel still spins), print the row with where each program stands (LayerStream.trace) and end
    the process: a hung kernel cannot be stopped any other way, and the parent keeps the row."""
    import time

    # made first: nothing to allocate or create while a kernel spins
    host = torch.empty(work.count.shape, dtype=work.count.dtype, pin_memory=True)
    side = torch.cuda.Stream()
    run()
    done = torch.cuda.Event()
    done.record()
    deadline = time.monotonic() + seconds
    while not done.query():
        if time.monotonic() > deadline:
            with torch.cuda.stream(side):
                host.copy_(work.count, non_blocking=True)
            side.synchronize()
            row["hung"] = {"in": what, "after_s": seconds, "where": work.trace(host)}
            print_row(row)
            os._exit(3)
        time.sleep(0.02)


def label(variant: StreamVariant) -> str:
    return f"layer {variant}"


def random_model(device, dims: ModelDims = DIMS, dtype=torch.bfloat16, seed: int = 0, init: str = "fan_in"):
    """Decode weights and a decode state, random: weights scaled by their fan-in, norm weights near
    1, q/k/v biases (`init` "fan_in"); or as transformers initialises a Qwen2 (`init` "hf", the
    model bench/gpu_step.py builds: every matrix N(0, 0.02), norm weights 1, biases 0, the head the
    embedding); ROWS rows in groups of GROUP sharing a prompt of PROMPT slots (each row its own
    copy, as the prefill leaves them), left padding in some groups, FILLED slots filled."""
    from trainer.qwen2_decode import DecodeState, DecodeWeights, LayerWeights

    gen = torch.Generator(device=device).manual_seed(seed)
    hf = init == "hf"

    def rand(*size, scale=1.0):
        return (torch.randn(*size, device=device, generator=gen) * (0.02 if hf else scale)).to(dtype)

    def near_one(size):
        return torch.ones(size, device=device, dtype=dtype) if hf else 1 + 0.1 * rand(size)

    hidden, inter = dims.hidden, dims.intermediate
    qkv_n = (dims.heads + 2 * dims.kv_heads) * dims.head_dim
    layers = [LayerWeights(input_norm=near_one(hidden), qkv=rand(qkv_n, hidden, scale=hidden ** -0.5),
                           qkv_bias=torch.zeros(qkv_n, device=device, dtype=dtype) if hf else 0.1 * rand(qkv_n),
                           o=rand(hidden, dims.heads * dims.head_dim, scale=hidden ** -0.5),
                           post_norm=near_one(hidden), gate_up=rand(2 * inter, hidden, scale=hidden ** -0.5),
                           down=rand(hidden, inter, scale=inter ** -0.5))
              for _ in range(dims.layers)]
    embed = rand(dims.vocab, hidden)
    weights = DecodeWeights(dims=dims, embed=embed, layers=layers, norm=near_one(hidden),
                            lm_head=embed if hf else rand(dims.vocab, hidden, scale=hidden ** -0.5))
    state = DecodeState.allocate(dims, ROWS, CAPACITY, device, dtype)
    state.kv_cache.copy_(rand(*state.kv_cache.shape))
    leaders = torch.arange(ROWS, device=device) // GROUP * GROUP
    state.kv_cache[:, :, :, :PROMPT] = state.kv_cache[:, leaders, :, :PROMPT]
    state.valid[:, :FILLED] = True
    pad = torch.randint(0, PROMPT // 2, (ROWS // GROUP,), device=device, generator=gen).repeat_interleave(GROUP)
    state.valid[torch.arange(CAPACITY, device=device)[None, :] < pad[:, None]] = False
    state.positions.copy_(FILLED - pad)
    state.write_index.fill_(FILLED)
    state.leaders.copy_(leaders)
    state.shared.fill_(PROMPT)
    state.tokens.copy_(torch.randint(0, dims.vocab, (ROWS,), device=device, generator=gen))
    return weights, state


def compile_only() -> int:
    """The layer kernel of every variant, with and without the next q/k/v, and the first traced
    (as the one-layer check runs it), compiled for sm_90a without a GPU (`compile_all`)."""
    kernels = [(variant, last) for variant in VARIANTS for last in (False, True)]
    kernels.append((replace(VARIANTS[0], trace=True), False))
    return compile_all((f"{label(variant)}{', last layer' if last else ''}",
                        lambda variant=variant, last=last: compile_layer(DIMS, ROWS, PROGRAMS, variant, last=last))
                       for variant, last in kernels)


def one(index: int) -> None:
    """Variant `index`, the plain step and the fused step with the MLP block on the same random model
    and state, in this process: a JSON line after the baselines, the whole row after the variant."""
    from trainer.decode_graphs import prefetched_o
    from trainer.fused_decode import element_fns, fused_decode_step
    from trainer.mlp_block import BlockShape
    from trainer.qwen2_decode import Attention, DecodeState, decode_step
    from trainer.triton_products import DecodeProducts

    variant = VARIANTS[index]
    dev = torch.device("cuda")
    programs = torch.cuda.get_device_properties(dev).multi_processor_count
    row = {"variant": label(variant), "stages": variant.stages, "weights_wait": variant.wait, "pdl": variant.pdl,
           "init": INIT, "device": torch.cuda.get_device_name(), "sms": programs, "ms": {}}
    if programs != PROGRAMS:
        row["skipped"] = f"{programs} multiprocessors; the split is {PROGRAMS} programs'"
        print_row(row)
        return
    weights, start = random_model(dev, init=INIT)
    kv_len = 256 if FILLED < 256 else CAPACITY

    def fresh() -> DecodeState:
        s = DecodeState(**{k: getattr(start, k).clone() for k in start.__dataclass_fields__})
        return s

    plain_state = fresh()
    want = decode_step(weights, plain_state, kv_len, None, Attention.SDPA).float()
    products = DecodeProducts(mlp=BlockShape.for_gpu(dev))
    fns = element_fns(weights.dims, compiled=True)
    steps = {"plain": lambda s: decode_step(weights, s, kv_len, None, Attention.SDPA),
             "fused + MLP block": lambda s: fused_decode_step(weights, s, kv_len, fns, products)}
    # the engine's kept step on an H200 since call 63: o as the Gluon kernel, its two fastest shapes
    for name, with_o in prefetched_o(weights, products, ROWS).items():
        steps[name] = lambda s, with_o=with_o: fused_decode_step(weights, s, kv_len, fns, with_o)

    def check(name, step) -> None:
        s = fresh()
        got = step(s).float()
        torch.cuda.synchronize()
        row[f"{name} logits_rel_error"] = float((got - want).norm() / want.norm())
        slot = FILLED
        row[f"{name} new_slot_rel_error"] = float(
            (s.kv_cache[:, :, :, slot].float() - plain_state.kv_cache[:, :, :, slot].float()).norm()
            / plain_state.kv_cache[:, :, :, slot].float().norm())
        row[f"{name} positions_equal"] = bool(torch.equal(s.positions, plain_state.positions)
                                              and torch.equal(s.write_index, plain_state.write_index))

    def check_graphed(name, step) -> None:
        """The step as the decode engine runs it (trainer/fast_generation.DecodeEngine._capture):
        two warm-up steps on a side stream, the slot and positions put back after each, then
        captured in a CUDA graph and replayed; its logits against the plain step's after the first
        replay and after 24 more (the engine's timing replays each step before it compares them)."""
        s = fresh()
        saved = s.positions.clone(), s.write_index.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                step(s)
                s.positions.copy_(saved[0])
                s.write_index.copy_(saved[1])
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = step(s)
        for replays, key in ((1, "graphed"), (24, "graphed x25")):
            for _ in range(replays):
                graph.replay()
                s.positions.copy_(saved[0])
                s.write_index.copy_(saved[1])
            torch.cuda.synchronize()
            row[f"{name} {key} logits_rel_error"] = float((logits.float() - want).norm() / want.norm())

    def time_it(name, step) -> None:
        s = fresh()

        def replay():  # the same slot and positions every replay
            s.write_index.copy_(start.write_index)
            s.positions.copy_(start.positions)
            step(s)
        time_into(row, name, replay, ratios=(("vs_fused_mlp_block", "fused + MLP block"), ("vs_fastest_fused", "fused*")))

    for name, step in steps.items():
        check(name, step)
        time_it(name, step)
    check_graphed("fused + MLP block", steps["fused + MLP block"])  # (the engine's path, known to agree)
    print_row(row)  # the baselines, in case the variant never returns

    shape = StreamShape.of(DIMS, ROWS, PROGRAMS)
    work, ref = (LayerStream(dev, torch.bfloat16, shape, DIMS.layers, DIMS.eps) for _ in range(2))
    # one layer: the kernel against its torch reference from the same inputs, buffer by buffer
    gen = torch.Generator(device=dev).manual_seed(1)
    attn = torch.randn(ROWS, DIMS.hidden, device=dev, generator=gen).to(torch.bfloat16)
    x0 = torch.randn(ROWS, DIMS.hidden, device=dev, generator=gen).to(torch.bfloat16)
    first, second = weights.layers[0], weights.layers[1]
    traced = replace(variant, trace=True)  # the marks at the phases' edges, for a hang's diagnosis
    for w in (work, ref):
        w.x.copy_(x0)
        w.count.zero_()
    ref.reference(0, attn, first, second, first.post_norm, second.input_norm, variant)
    watched(row, "one layer", lambda: work.launch(0, attn, first, second, first.post_norm, second.input_norm, traced),
            work)
    torch.cuda.synchronize()
    row["one layer trace"] = work.trace()
    for name in ("o_part", "x", "h", "act", "d_part", "qkv_part"):
        got, want_ = getattr(work, name).float(), getattr(ref, name).float()
        row[f"one layer {name} rel_error"] = float((got - want_).norm() / want_.norm())
    row["barrier_gave_up"] = work.gave_up()
    watched(row, "the whole step", lambda: stream_step(weights, fresh(), kv_len, traced, work), work)
    check("variant", lambda s: stream_step(weights, s, kv_len, variant, work))
    row["barrier_gave_up"] |= work.gave_up()
    check_graphed("variant", lambda s: stream_step(weights, s, kv_len, variant, work))
    row["barrier_gave_up"] |= work.gave_up()
    time_it("variant", lambda s: stream_step(weights, s, kv_len, variant, work))
    row["barrier_gave_up"] |= work.gave_up()
    time_it("fused + MLP block again", steps["fused + MLP block"])
    print_row(row)


def _line(row: dict) -> str:
    return row_line(row, lambda key: key.endswith(("rel_error", "equal", "gave_up", "trace")) or key == "hung")


def main(argv: list[str] | None = None) -> int:
    if INIT not in ("fan_in", "hf"):
        print(f"BENCH_STREAM_INIT must be fan_in or hf, not {INIT!r}", file=sys.stderr)
        return 2
    return bench_main(argv, __doc__, __file__, compile_only, one, VARIANTS, label, TIMEOUT_S, _line,
                      {"rows": ROWS, "hidden": DIMS.hidden, "intermediate": DIMS.intermediate, "layers": DIMS.layers,
                       "programs": PROGRAMS,
                       "capacity": CAPACITY, "filled": FILLED})


if __name__ == "__main__":
    sys.exit(main())
