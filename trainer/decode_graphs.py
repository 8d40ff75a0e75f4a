"""The decode engine's CUDA graphs beyond one step's capture: which step to capture, and the
prefill replayed per prompt shape.

    from trainer.decode_graphs import PrefillGraphs, choose_step
    graph, logits = choose_step(engine, kv_len)          # first bucket: time the variants, keep the fastest
    logits = engine.prefill_graphs.run(engine, ids, mask, rows)   # None: run the prefill eagerly

`engine` is a trainer.fast_generation.DecodeEngine (used through its attributes: state, products,
chain, fused, fused_timing, prefill_fns, weights, attention, _capture).

The prefill of the benchmark's rollout (16 distinct prompts x 128 tokens through 28 layers) is
~10 ms of GPU work that took 34-39 ms of wall time on an H200, the host launching its kernels
one by one (docs/benchmarks.md, issue 18). Replayed from a graph captured for that prompt shape
it is one launch (13.9 ms measured). A rollout whose prompts have another shape captures another graph, up to
`PREFILL_LIMIT` shapes per engine; past that, and when a capture fails, the prefill runs eagerly.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import replace

import torch

from trainer.fused_decode import fused_checked
from trainer.mlp_block import requested
from trainer.qwen2_decode import prefill
from trainer.triton_base import repeatable
from trainer.triton_products import DecodeProducts

PREFILL_LIMIT = 8
GLUON_MLP_ENV = "RLTUI_DECODE_GLUON_MLP"  # 1: the engine also times the step with trainer/gluon_mlp.py's block
STREAM_ENV = "RLTUI_DECODE_STREAM"  # 1: the engine also times the step with trainer/gluon_stream.py's kernel


def prefetched_o(weights, products: DecodeProducts, batch: int, shapes: int = 2) -> dict[str, DecodeProducts]:
    """`products` with the o product as trainer/gluon_products.py's kernel, launched with PDL after
    the attention kernel, which lets it start early, and before residual + RMSNorm, which adds its
    partials: one per shape for the `shapes` fastest over all layers alone, by name. Alone is not
    in the step: there the o kernel's programs share multiprocessors with the attention's, and
    on an H200 the second fastest alone (64 columns x 4 K slices) replayed 0.018 ms faster than
    the fastest (x 3) in two calls (docs/benchmarks.md, calls 61-62), so the step's timing picks.
    Empty where Gluon cannot run (or RLTUI_DECODE_GLUON=0) or no shape ran."""
    from trainer import gluon_products

    ref = weights.layers[0].o
    if not gluon_products.supported(ref.device) or not 0 < batch <= gluon_products.BLOCK_M:
        return {}
    try:
        found = DecodeProducts.prefetched(weights, batch, kinds=("o",))
    except Exception as exc:  # noqa: BLE001 - the other steps serve
        warnings.warn(f"timing the Gluon o product failed ({exc!r:.300}); not used", stacklevel=3)
        return {}
    timing = found.timing["o"]
    ranked = sorted((s for s in DecodeProducts.gluon_shapes(weights, batch, "o") if str(s) in timing),
                    key=lambda s: timing[str(s)])
    return {f"fused_mlp_block_o_{s.block_n}x{s.splits}": replace(products, chosen={"o": s}, timing=found.timing,
                                                               pdl=True) for s in ranked[:shapes]}


def gluon_block(weights, products: DecodeProducts, batch: int) -> DecodeProducts | None:
    """`products` with its MLP block as trainer/gluon_mlp.py's kernel, launched with PDL (after
    residual + RMSNorm, which lets it start once its own wait is over), where RLTUI_DECODE_GLUON_MLP=1
    asks for it, Gluon runs and the kernel takes the model's widths; else None. Opt-in: on an H200
    the kernel is 12-16% slower than the Triton block (docs/benchmarks.md, issue 18, calls 64-74)."""
    if os.environ.get(GLUON_MLP_ENV) != "1" or products.mlp is None:
        return None
    from trainer import gluon_mlp, gluon_products

    if not gluon_products.supported(weights.layers[0].o.device):
        return None
    shape = replace(products.mlp, gluon=True, pdl=True)
    if gluon_mlp.fits(batch, weights.dims.hidden, weights.dims.intermediate, shape) is not None:
        return None
    return replace(products, mlp=shape)


def choose_step(engine, kv_len: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """Capture the chained step (if the engine timed its products and it passes the fused step's
    check), the fused step with the MLP half as one persistent kernel (trainer/mlp_block.py, on a
    Hopper or newer GPU unless RLTUI_DECODE_MLP_BLOCK=0, if it passes the check), the same with
    its o product as a Gluon kernel that loads its weights before it waits (`prefetched_o`), and
    with the first of those the MLP block as a Gluon kernel too where asked for (`gluon_block`), the
    layers as trainer/gluon_stream.py's kernel where RLTUI_DECODE_STREAM=1 asks for it (kept only if
    it also agrees with the plain step at this batch, `_disagreeing_streams`), the fused step
    with its Triton products (if any were chosen), the fused step with cuBLAS products and the
    plain step for this bucket; keep the fastest (replays timed with the position and slot put
    back after each, so the real step comes next). Where decoding is `repeatable`, the first of
    `fixed_variants` that captures, untimed."""
    if repeatable():
        return _first_captured(engine, kv_len, fixed_variants(engine))
    tuned, state = engine.products, engine.state
    variants: list[tuple[str, bool, DecodeProducts]] = [
        ("fused", True, DecodeProducts(attention_splits=tuned.attention_splits))]
    if any(tuned.chosen.values()):
        variants.insert(0, ("fused_products", True, tuned))
    dims = engine.weights.dims
    block = requested(state.tokens.device, state.tokens.shape[0], dims.hidden, dims.intermediate)
    if block is not None:
        products = DecodeProducts(attention_splits=tuned.attention_splits, mlp=block)
        if fused_checked(engine.weights, engine.attention, products):
            variants.insert(0, ("fused_mlp_block", True, products))
            for rank, (name, prefetched) in enumerate(
                    prefetched_o(engine.weights, products, state.tokens.shape[0]).items()):
                if fused_checked(engine.weights, engine.attention, prefetched):
                    variants.insert(0, (name, True, prefetched))
                    gluon = gluon_block(engine.weights, prefetched, state.tokens.shape[0]) if rank == 0 else None
                    if gluon is not None and fused_checked(engine.weights, engine.attention, gluon):
                        variants.insert(0, (name.replace("mlp_block", "gluon_block"), True, gluon))
    for variant in stream_variants(engine):
        products = DecodeProducts(stream=variant)
        if fused_checked(engine.weights, engine.attention, products):
            name = ("stream_pdl" if variant.pdl else "stream") + ("_tma" if variant.tma_store else "")
            variants.insert(0, (name, True, products))
    if engine.chain is not None:
        chain = engine.chain
        for name, products in (("chained", chain), ("chained_mlp_cublas", chain.without("gate_up", "down"))):
            if fused_checked(engine.weights, engine.attention, products):
                variants.insert(0, (name, True, products))
    variants.append(("plain", False, DecodeProducts()))
    saved = state.positions.clone(), state.write_index.clone()

    def replay(graph: torch.cuda.CUDAGraph) -> None:  # the position and slot put back after it
        graph.replay()
        state.positions.copy_(saved[0])
        state.write_index.copy_(saved[1])

    def timed(graph: torch.cuda.CUDAGraph) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for rep in range(12):
            if rep == 2:
                start.record()
            replay(graph)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 10

    captured = {name: (graph, engine.fused, engine.products) for name, graph in _captures(engine, kv_len, variants)}
    if not captured:
        raise RuntimeError("no decode step could be captured")
    timing: dict = {"kv_len": kv_len}
    for look in range(2):  # a second look at each: the first replays warm the clocks
        for name, (graph, _, _) in captured.items():
            ms = timed(graph[0])
            timing[f"{name}_ms"] = ms if look == 0 else min(ms, timing[f"{name}_ms"])

    def eager(name: str, reference: bool = False) -> torch.Tensor:
        # one ungraphed step of `name` from the same position and slot (`reference`: a stream
        # step's kernel replaced by its arithmetic in torch, gluon_stream.LayerStream.reference)
        _, engine.fused, products = captured[name]
        engine.products = replace(products, stream=replace(products.stream, reference=True)) if reference else products
        logits = engine.run_step(kv_len).float()
        state.positions.copy_(saved[0])
        state.write_index.copy_(saved[1])
        return logits

    for name in _disagreeing_streams(captured, state.tokens.device, replay, timing, eager):
        del captured[name]
    best = min(captured, key=lambda name: timing[f"{name}_ms"])
    graph, engine.fused, engine.products = captured[best]
    engine.fused_timing = timing | {"chosen": best}
    return graph


def fixed_variants(engine) -> list[tuple[str, bool, DecodeProducts]]:
    """The steps a repeatable engine may keep, in this order: the fused step with the MLP block
    (where the block runs here and passes the fused step's check), the fused step, the plain one.
    Their kernels and shapes are fixed per card kind: none of them comes from a timing."""
    state, dims = engine.state, engine.weights.dims
    splits = engine.products.attention_splits
    variants = [("fused", True, DecodeProducts(attention_splits=splits)), ("plain", False, DecodeProducts())]
    block = requested(state.tokens.device, state.tokens.shape[0], dims.hidden, dims.intermediate)
    if block is not None:
        products = DecodeProducts(attention_splits=splits, mlp=block)
        if fused_checked(engine.weights, engine.attention, products):
            variants.insert(0, ("fused_mlp_block", True, products))
    return variants


def _first_captured(engine, kv_len: int, variants: list) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    for name, graph in _captures(engine, kv_len, variants):
        engine.fused_timing = {"kv_len": kv_len, "chosen": name, "repeatable": True}
        return graph
    raise RuntimeError("no decode step could be captured")


def _captures(engine, kv_len: int, variants: list) -> Iterator[tuple[str, tuple[torch.cuda.CUDAGraph, torch.Tensor]]]:
    """Each of `variants` captured in turn, set on the engine while it is the one yielded: its
    name ("plain" where the fused capture fell back to the plain step) and its graph. One that
    fails to capture is warned about and passed over."""
    for name, fused, products in variants:
        engine.fused, engine.products = fused, products
        try:
            graph = engine._capture(kv_len)
        except Exception as exc:  # noqa: BLE001 - the other variants serve
            warnings.warn(f"{name} decode step failed to capture ({exc!r:.300})", stacklevel=3)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            continue
        yield (name if engine.fused == fused else "plain"), graph


def stream_variants(engine) -> list:
    """The stream steps (trainer/gluon_stream.py) for the engine to time: where RLTUI_DECODE_STREAM=1
    asks, the engine has not dropped them (`DecodeEngine.stream_gave_up`) and the kernel runs here
    (`gluon_stream.offered`)."""
    if os.environ.get(STREAM_ENV) != "1" or engine.no_stream:
        return []
    from trainer.gluon_stream import offered  # (Gluon imported only where asked for)

    state = engine.state
    return offered(state.tokens.device, state.tokens.shape[0], engine.weights.dims, state.kv_cache.dtype)


def _disagreeing_streams(captured: dict, device: torch.device, replay, timing: dict, eager) -> list[str]:
    """The stream steps among the `captured` graphs to drop: all of them when one gave up waiting
    at a barrier while timed or the plain step is not there to compare with, else those
    `disagreeing` with the plain step at the engine's own batch (the check before capture ran at a
    batch of 3; the kernel's barriers and row tiles are exercised only at the engine's batch).
    `replay(graph)`: one replay from the position and slot the timing started at. `eager(name,
    reference)`: the same step ungraphed from there, with the layer kernel or its torch reference;
    when one disagrees, both errors against the plain graph go into `timing` for each that does
    ("<name>_eager_logits_rel_error", "<name>_reference_logits_rel_error"), and the plain step's
    own ungraphed: they tell a capture fault from one of the kernel on this state and these
    weights, and those from one of the step around it."""
    streams = [name for name, (_, _, products) in captured.items() if products.stream is not None]
    if not streams:
        return []
    from trainer.gluon_stream import failed as stream_failed

    if stream_failed(device) or "plain" not in captured:
        why = "gave up waiting at a barrier while timed" if "plain" in captured else "has no plain step to agree with"
        warnings.warn(f"the stream decode step {why}; not used", stacklevel=3)
        timing["stream_dropped"] = why
        return streams

    def logits_of(name: str) -> torch.Tensor:
        graph, logits = captured[name][0]
        replay(graph)
        return logits.float()

    found = disagreeing(streams, logits_of, timing)
    if found:
        want = logits_of("plain")
        for name, how in (("plain", "eager"), *((name, how) for name in found for how in ("eager", "reference"))):
            try:
                got = eager(name, reference=how == "reference")
                timing[f"{name}_{how}_logits_rel_error"] = float((got - want).norm() / want.norm())
            except Exception as exc:  # noqa: BLE001 - a diagnosis only: the step is dropped either way
                timing[f"{name}_{how}_logits_rel_error"] = f"failed: {exc!r:.200}"
    return found


def disagreeing(names: list[str], logits_of, timing: dict) -> list[str]:
    """Those of `names` whose logits (`logits_of(name)`) differ from the plain step's by more than
    the fused step's check allows (`fused_decode.check_passes`: 0.1 relative), each with a warning;
    every relative error into `timing`."""
    want = logits_of("plain")
    found = []
    for name in names:
        error = float((logits_of(name) - want).norm() / want.norm())
        timing[f"{name}_logits_rel_error"] = error
        if not error < 0.1:
            warnings.warn(f"{name} decode step differs from the plain one at batch {want.shape[0]} "
                          f"(relative error {error:.3g}); not used", stacklevel=3)
            found.append(name)
    return found


class PrefillGraphs:
    """The prefill captured per (prompts, length) shape; inputs copied in, the graph replayed.

    The replay writes the same cache slots, masks, positions and slot index as the eager prefill
    (all of them the engine's static buffers) and returns the same logits buffer each time."""

    def __init__(self) -> None:
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, ...], torch.Tensor]] = {}
        self.failed = False

    def run(self, engine, input_ids: torch.Tensor, attention_mask: torch.Tensor,
            rows: torch.Tensor) -> torch.Tensor | None:
        key = (tuple(input_ids.shape), rows.shape[0])
        found = self.graphs.get(key)
        if found is None:
            if self.failed or len(self.graphs) >= PREFILL_LIMIT:
                return None
            try:
                with engine.spent("prefill_captures"):
                    found = self._capture(engine, input_ids, attention_mask, rows)
            except Exception as exc:  # noqa: BLE001 - the eager prefill serves from now on
                warnings.warn(f"capturing the prefill failed ({exc!r:.300}); running it eagerly", stacklevel=3)
                torch.cuda.synchronize()
                self.failed = True
                return None
            self.graphs[key] = found
        graph, static, logits = found
        for buffer, value in zip(static, (input_ids, attention_mask, rows)):
            buffer.copy_(value)
        graph.replay()
        return logits

    @staticmethod
    def _capture(engine, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor):
        static = (input_ids.clone(), attention_mask.clone(), rows.clone())

        def run() -> torch.Tensor:
            return prefill(engine.weights, engine.state, *static, engine.prefill_fns)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # compiles for this shape; its writes are redone by the replay
            run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = run()
        return graph, static, logits

