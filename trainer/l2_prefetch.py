"""Fill the L2 with what the decode step reads next, on a side branch of its graph, while the
step's own kernels leave the memory bus idle.

    from trainer.l2_prefetch import L2Plan
    plan = L2Plan(gate_up_mb=24, next_layer=True, next_kv=True)
    # fused_decode_step(..., DecodeProducts(l2=plan)) forks a side stream per layer

At batch 128 an H200's decode step reads 3.09 GB of weights and ~0.5 GB of keys and values, which
the bus could move in ~0.85 ms; the step takes ~2.0 ms, because half of its kernels (RMSNorm, the
q/k/v and o products, attention) are short and bound by start-up and latency, not bytes: while
they run, the bus carries ~1 TB/s of its ~4.2. Nothing the step reads in a layer depends on what
it computes (the weights are fixed during a step, the cache's old slots too), so a side stream
can ask the L2 for it ahead of time: per layer, at its start the first megabytes of its gate/up
weight (the largest product, which comes after attention), and right after its gate/up product
the next layer's q/k/v and o weights and the cache slots its attention will read. The kernels
then find those bytes in the L2 (50 MB on an H100/H200) instead of memory.

The requests are `cp.async.bulk.prefetch.L2` (one instruction per chunk, issued by the copy
engine, no registers held; `mode="bulk"`) or `prefetch.global.L2` per 128-byte line
(`mode="line"`). They are hints: nothing waits for them and nothing is written, so the step's
results are the same bit for bit with or without them (the tests check the plan's byte ranges; the
requests run on CUDA only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from trainer.qwen2_decode import DecodeState, DecodeWeights
from trainer.triton_base import tl, triton

MB = 1 << 20
LINE = 128

if triton is not None:
    @triton.jit
    def _ask(addr, size, BULK: tl.constexpr):
        if BULK:
            tl.inline_asm_elementwise("cp.async.bulk.prefetch.L2.global [$1], $2; // dummy $0", "=r,l,r",
                                      [addr, size], dtype=tl.int32, is_pure=False, pack=1)
        else:
            tl.inline_asm_elementwise("prefetch.global.L2 [$1]; // dummy $0 $2", "=r,l,r",
                                      [addr, size], dtype=tl.int32, is_pure=False, pack=1)

    @triton.jit
    def _fetch_kernel(base_ptr, chunks, CHUNK: tl.constexpr, PER: tl.constexpr, BULK: tl.constexpr):
        # Program p asks for chunks [p * PER, (p + 1) * PER) of `chunks` (CHUNK bytes each); the
        # ones past the end repeat the last (a repeated hint costs nothing, a mask is not possible).
        index = tl.minimum(tl.program_id(0) * PER + tl.arange(0, PER), chunks - 1)
        _ask(base_ptr + index.to(tl.int64) * CHUNK, tl.full([PER], CHUNK, tl.int32), BULK)

    @triton.jit
    def _fetch_cache_kernel(cache_ptr, write_ptr, leader_ptr, shared_ptr, stride_b, stride_h, slot_bytes,
                            CHUNK: tl.constexpr, PER: tl.constexpr, BULK: tl.constexpr):
        # Row b, KV head h: the slots its attention reads (fused_decode._rope_attention_kernel):
        # its own from the shared prompt's end (from 0 if it leads its group) to the slot written
        # this step, as CHUNK-byte pieces; one program per (row, head).
        b = tl.program_id(0)
        h = tl.program_id(1)
        slot = tl.load(write_ptr)
        first = tl.where(tl.load(leader_ptr + b) == b, 0, tl.load(shared_ptr))
        start = b.to(tl.int64) * stride_b + h * stride_h + first * slot_bytes
        size = (slot - first) * slot_bytes
        if size > 0:
            pieces = tl.cdiv(size, CHUNK)
            for piece0 in range(0, pieces, PER):
                index = tl.minimum(piece0 + tl.arange(0, PER), pieces - 1)
                _ask(cache_ptr + start + index * CHUNK, tl.full([PER], CHUNK, tl.int32), BULK)


@dataclass(frozen=True)
class L2Plan:
    """What the side branch asks the L2 for, per layer: `gate_up_mb` of the layer's gate/up weight
    and `down_mb` of its down weight at the layer's start; after its gate/up product, the next
    layer's q/k/v and o weights (`next_layer`) and the cache slots its attention reads
    (`next_kv`); the first layer's at the step's start. `chunk` bytes per bulk request."""

    gate_up_mb: float = 0.0
    down_mb: float = 0.0
    next_layer: bool = False
    next_kv: bool = False
    mode: str = "bulk"
    chunk: int = 16384

    def __post_init__(self) -> None:
        if self.mode not in ("bulk", "line"):
            raise ValueError(f"L2Plan mode must be bulk or line, not {self.mode!r}")
        if self.chunk < LINE or self.chunk % LINE:
            raise ValueError(f"L2Plan chunk must be a positive multiple of {LINE} bytes, not {self.chunk}")

    def describe(self) -> str:
        return (f"gate_up {self.gate_up_mb:g} MB, down {self.down_mb:g} MB, next layer {self.next_layer}, "
                f"next kv {self.next_kv}, {self.mode} {self.chunk}")

    def at_layer_start(self, weights: DecodeWeights, index: int) -> list[tuple[torch.Tensor, int]]:
        """(weight, bytes from its start) asked for before layer `index`'s q/k/v product."""
        layer = weights.layers[index]
        found = [(layer.gate_up, _bytes(layer.gate_up, self.gate_up_mb)), (layer.down, _bytes(layer.down, self.down_mb))]
        if index == 0 and self.next_layer:
            found += _attention_weights(weights, 0)
        return [(w, n) for w, n in found if n > 0]

    def after_gate_up(self, weights: DecodeWeights, index: int) -> list[tuple[torch.Tensor, int]]:
        """(weight, bytes) asked for after layer `index`'s gate/up product: the next layer's."""
        if not self.next_layer or index + 1 >= len(weights.layers):
            return []
        return _attention_weights(weights, index + 1)

    def cache_before(self, index: int, layers: int) -> int | None:
        """Which layer's cache slots to ask for at the point `index` (-1: the step's start, else
        after layer `index`'s gate/up), or None."""
        return index + 1 if self.next_kv and index + 1 < layers else None


def _bytes(weight: torch.Tensor, mb: float) -> int:
    return min(int(mb * MB) // LINE * LINE, weight.numel() * weight.element_size())


def _attention_weights(weights: DecodeWeights, index: int) -> list[tuple[torch.Tensor, int]]:
    layer = weights.layers[index]
    return [(w, w.numel() * w.element_size()) for w in (layer.qkv, layer.o)]


def fetch(weight: torch.Tensor, nbytes: int, plan: L2Plan) -> None:
    """Ask the L2 for the first `nbytes` of `weight` (contiguous) on the current stream."""
    chunk = plan.chunk if plan.mode == "bulk" else LINE
    chunks = max(1, nbytes // chunk)
    per = 128
    raw = weight.view(-1).view(torch.uint8)
    _fetch_kernel[(triton.cdiv(chunks, per),)](raw, chunks, CHUNK=chunk, PER=per, BULK=plan.mode == "bulk",
                                               num_warps=4)


def fetch_cache(state: DecodeState, layer: int, plan: L2Plan) -> None:
    """Ask the L2 for the cache slots layer `layer`'s attention will read this step."""
    cache = state.kv_cache[layer]
    size = cache.element_size()
    batch, heads = cache.shape[0], cache.shape[1]
    chunk = plan.chunk if plan.mode == "bulk" else LINE
    _fetch_cache_kernel[(batch, heads)](cache.view(torch.uint8), state.write_index, state.leaders, state.shared,
                                        cache.stride(0) * size, cache.stride(1) * size, cache.stride(2) * size,
                                        CHUNK=chunk, PER=32, BULK=plan.mode == "bulk", num_warps=1)


class SideBranch:
    """The step's side stream: each `ask` forks from the main stream where it is called (so it
    starts no earlier than the kernels queued before it) and `join` merges it back, as a CUDA
    graph's capture requires. Inactive (every call a no-op) off CUDA."""

    _STREAMS: ClassVar[dict[int, torch.cuda.Stream]] = {}

    def __init__(self, plan: L2Plan | None, weights: DecodeWeights, state: DecodeState) -> None:
        device = state.tokens.device
        self.plan = plan if plan is not None and device.type == "cuda" and triton is not None else None
        self.weights, self.state = weights, state
        if self.plan is not None:
            index = device.index if device.index is not None else torch.cuda.current_device()
            if index not in self._STREAMS:
                self._STREAMS[index] = torch.cuda.Stream(device)
            self.stream = self._STREAMS[index]

    def _run(self, regions: list[tuple[torch.Tensor, int]], cache_layer: int | None) -> None:
        if self.plan is None or (not regions and cache_layer is None):
            return
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            for weight, nbytes in regions:
                fetch(weight, nbytes, self.plan)
            if cache_layer is not None:
                fetch_cache(self.state, cache_layer, self.plan)

    def step_start(self) -> None:
        if self.plan is not None:
            self._run(self.plan.at_layer_start(self.weights, 0), 0 if self.plan.next_kv else None)

    def layer_start(self, index: int) -> None:
        if self.plan is not None and index > 0:
            self._run(self.plan.at_layer_start(self.weights, index), None)

    def after_gate_up(self, index: int) -> None:
        if self.plan is not None:
            self._run(self.plan.after_gate_up(self.weights, index),
                      self.plan.cache_before(index, len(self.weights.layers)))

    def join(self) -> None:
        if self.plan is not None:
            torch.cuda.current_stream().wait_stream(self.stream)
