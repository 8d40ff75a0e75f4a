"""Fast rollouts for Qwen2 models: LoRA folded into fused weights, static KV cache, CUDA graphs.

    from trainer.fast_generation import generate, supports_fast_generation
    out = generate(model, tokenizer, prompts, max_new_tokens=256, do_sample=True,
                   temperature=1.0, top_p=1.0, generator=g)       # -> trainer.generation.GenerationOutput

Same call and result as `trainer.generation.generate`, plus `min_new_tokens` (EOS is masked out
before that many tokens, as in transformers). Per rollout: the adapter is folded into fused copies
of the projections (trainer/qwen2_decode.py), prompts repeated for a group are prefilled once,
then one decode step per token is replayed from a CUDA graph captured per attention length
(buckets of 64 cache slots). Per token the host only replays the graph and launches the sampling
kernels; it checks whether every row has finished every 16 tokens, the only device sync.
On a CPU the same code runs without graphs (that is how the tests check it against transformers).
"""

from __future__ import annotations

import os
import sys
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch
from torch import nn

from trainer import triton_products, triton_sampling
from trainer.decode_graphs import PrefillGraphs, choose_step
from trainer.fused_decode import attention_splits, fused_choice
from trainer.generation import GenerationOutput, eos_token_ids
from trainer.qwen2_decode import (
    Attention, DecodeState, DecodeWeights, ModelDims, UnsupportedModel, attention_inputs, check_foldable,
    attention_output_and_mlp, checked_once, decode_step, model_dims, prefill,
)
from trainer.triton_base import compile_options, repeatable
from trainer.triton_products import DecodeProducts

BUCKET = 64  # cache capacity is rounded up to a multiple of this
# Cache slots per attention-length bucket (one graph each): attention reads the slots up to the
# bucket's end, so a smaller bucket reads fewer empty slots and captures more graphs.
ATTENTION_BUCKET_ENV = "RLTUI_DECODE_BUCKET"
DEFAULT_ATTENTION_BUCKET = 64
SYNC_EVERY = 16  # tokens between "has every row finished?" checks
# "0" turns torch.compile of the layer pieces off on CUDA; "max-autotune" lets inductor also pick
# the projection matmul kernels by timing candidates (slower first capture).
COMPILE_ENV = "RLTUI_COMPILE_DECODE"
ATTENTION_ENV = "RLTUI_DECODE_ATTENTION"  # "sdpa" (default) or "bmm": see qwen2_decode.Attention
# The fused decode step (trainer/fused_decode.py): "0" never, "1" whenever its check passes,
# "auto" (default) when its check passes and its graph replays faster than the plain step's.
FUSED_ENV = "RLTUI_DECODE_FUSED"
# The chained step (the fused step's products as Triton kernels launched with programmatic
# dependent launch; trainer/fused_decode.py): "1" on a Hopper-or-newer GPU with graphs, its
# products timed at the engine's creation (about a minute) and the step kept when its graph
# replays fastest; unset or "0", never (on an H200 it replayed no faster than the fused step).
CHAIN_ENV = "RLTUI_DECODE_CHAIN"


def supports_fast_generation(model: nn.Module) -> bool:
    """True when `generate` here reproduces the model (Qwen2 architecture, plain LoRA or none)."""
    def check() -> bool:
        try:
            model_dims(model)
            check_foldable(model)
        except UnsupportedModel:
            return False
        return True

    return checked_once(model, "fast_generation", check)


@dataclass(frozen=True)
class EngineKey:
    batch: int
    capacity: int
    device: str
    dtype: torch.dtype
    graphs: bool
    compiled: bool


@dataclass(frozen=True)
class EngineChoices:
    """What an engine decided by timing and checking, for the batch size it serves (not its cache's
    length): `DecodeEngine.choices()`, handed to the engine that replaces it with a longer cache."""

    layer_fns: Any
    prefill_fns: Any
    attention: Attention
    products: DecodeProducts
    tuned_products: DecodeProducts
    chain: DecodeProducts | None
    fused: bool
    fused_timing: dict
    no_stream: bool


class DecodeEngine:
    """Buffers and graphs for one batch size and cache capacity, reused across rollouts."""

    def __init__(self, model: nn.Module, key: EngineKey, weights: DecodeWeights | None = None,
                 decided: EngineChoices | None = None) -> None:
        """`weights`: another engine's of this model, refreshed and shared. `decided`: the choices
        of the engine of this batch size whose cache was too short: they hold for this one, which
        then only captures (no timing, no checks again)."""
        self.key = key
        # Wall seconds by part of the engine's warm-up, summed (`spent`): where a job's first
        # rollout goes before its first replay (bench/gpu_ours.py reports it).
        self.warm_up_s: dict[str, float] = {}
        with self.spent("allocate"):
            if weights is not None:
                weights.refresh(model)
            self.weights = weights if weights is not None else DecodeWeights.allocate(model)
            ref = self.weights.layers[0].qkv
            self.state = DecodeState.allocate(self.weights.dims, key.batch, key.capacity, ref.device, ref.dtype)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.prefill_graphs = PrefillGraphs()
        if decided is not None:
            for name, value in vars(decided).items():
                setattr(self, name, value)
            return
        self.layer_fns = _compiled_layer_fns(self.weights.dims, _compile_mode()) if key.compiled else None
        # Prefill sees a different token count per rollout: compiled once for any count.
        self.prefill_fns = _compiled_layer_fns(self.weights.dims, None, dynamic=True) if key.compiled else None
        with self.spent("attention_check"):
            self.attention = _attention_choice(self.weights.dims, ref.device, ref.dtype)
        # Which projections of the fused step run as split-K Triton kernels: timed per kind here
        # (`tuned_products`, kept for the notes); `products` is what the captured step uses.
        self.products = DecodeProducts()
        if (key.graphs and os.environ.get(FUSED_ENV, "auto") != "0" and triton_products.enabled()
                and not repeatable()):
            try:
                with self.spent("products_timing"):
                    self.products = DecodeProducts.tuned(self.weights, key.batch)
            except Exception as exc:  # noqa: BLE001 - cuBLAS serves every product
                warnings.warn(f"timing the Triton products failed ({exc!r:.300}); using cuBLAS", stacklevel=2)
        splits = attention_splits()
        self.products = replace(self.products, attention_splits=splits)
        self.tuned_products = self.products
        with self.spent("chain_timing"):
            self.chain = None if repeatable() else _chain_products(self.weights, key, splits)
        # True / False, or None: decided by timing both graphs at the first capture.
        self.fused: bool | None = fused_choice(self.weights, self.attention, key.graphs, FUSED_ENV, self.products)
        self.fused_timing: dict[str, float] = {}
        self.no_stream = False  # True once the stream step gave up at a barrier (`stream_gave_up`)

    def run_step(self, kv_len: int, fused: bool | None = None) -> torch.Tensor:
        """One ungraphed decode step (the fused or the plain one)."""
        if self.fused if fused is None else fused:
            from trainer.fused_decode import element_fns, fused_decode_step

            return fused_decode_step(self.weights, self.state, kv_len,
                                     element_fns(self.weights.dims, self.layer_fns is not None), self.products)
        return decode_step(self.weights, self.state, kv_len, self.layer_fns, self.attention)

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if self.prefill_fns is not None:
            try:
                if self.key.graphs:  # one graph per prompt shape, replayed (trainer/decode_graphs.py)
                    logits = self.prefill_graphs.run(self, input_ids, attention_mask, rows)
                    if logits is not None:
                        return logits
                return prefill(self.weights, self.state, input_ids, attention_mask, rows, self.prefill_fns)
            except Exception as exc:  # noqa: BLE001 - a compiler failure must not cost the rollout
                warnings.warn(f"torch.compile of the prefill failed ({exc!r:.300}); continuing uncompiled",
                              stacklevel=2)
                self.prefill_fns = None
        return prefill(self.weights, self.state, input_ids, attention_mask, rows)

    def step(self, kv_len: int) -> torch.Tensor:
        if not self.key.graphs:
            return self.run_step(kv_len)
        with torch.cuda.device(self.state.tokens.device):  # the rank's GPU under torchrun
            if kv_len not in self.graphs:
                # the first bucket's choice compiles, checks, captures and times every variant
                with self.spent("step_choice" if self.fused is None else "bucket_captures"):
                    self.graphs[kv_len] = choose_step(self, kv_len) if self.fused is None else self._capture(kv_len)
            graph, logits = self.graphs[kv_len]
            graph.replay()
        return logits

    def choices(self) -> EngineChoices | None:
        """What this engine decided (None until its first capture decided the step)."""
        if self.fused is None:
            return None
        return EngineChoices(**{name: getattr(self, name) for name in EngineChoices.__dataclass_fields__})

    @contextmanager
    def spent(self, part: str) -> Iterator[None]:
        """Add the wall seconds of the block (its GPU work waited for) to `warm_up_s[part]`."""
        started = time.perf_counter()
        try:
            yield
            if self.key.device.startswith("cuda"):  # (not after a failure: the caller's handling comes first)
                torch.cuda.synchronize(self.key.device)
        finally:
            self.warm_up_s[part] = self.warm_up_s.get(part, 0.0) + time.perf_counter() - started

    def stream_gave_up(self) -> bool:
        """After a rollout with the stream step (trainer/gluon_stream.py): whether one of its
        waits gave up at its spin limit (a host sync). Then the rollout's logits may be wrong: a
        warning says so, and the engine chooses its step again without the stream step."""
        if self.products.stream is None or not self.fused:
            return False
        from trainer.gluon_stream import failed

        if not failed(self.state.tokens.device):
            return False
        warnings.warn("the stream decode step gave up waiting at a barrier during a rollout (its completions may "
                      "be wrong); choosing the decode step again without it", stacklevel=3)
        self.no_stream = True
        self.graphs.clear()
        self.fused, self.products = None, self.tuned_products
        return True

    def _warm_up(self, kv_len: int) -> None:
        saved = self.state.positions.clone(), self.state.write_index.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.run_step(kv_len)
                self.state.positions.copy_(saved[0])
                self.state.write_index.copy_(saved[1])
        torch.cuda.current_stream().wait_stream(side)

    def _capture(self, kv_len: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        # Warm-up runs really execute (compiling, creating cuBLAS handles) and advance the
        # position and slot; put those back so the captured replay is the next real step.
        try:
            self._warm_up(kv_len)
        except Exception as exc:  # noqa: BLE001 - a compiler failure must not cost the rollout
            if self.fused:
                warnings.warn(f"fused decode step failed ({exc!r:.300}); using the plain step", stacklevel=2)
                torch.cuda.synchronize()
                self.fused = False
                return self._capture(kv_len)
            if self.attention is Attention.TRITON:
                warnings.warn(f"Triton decode attention failed ({exc!r:.300}); using SDPA", stacklevel=2)
                torch.cuda.synchronize()
                self.attention = Attention.SDPA
                return self._capture(kv_len)
            if self.layer_fns is None:
                raise
            warnings.warn(f"torch.compile of the decode layers failed ({exc!r:.300}); "
                          "continuing uncompiled", stacklevel=2)
            torch.cuda.synchronize()  # let whatever the failed warm-up queued finish first
            self.layer_fns = None
            self._warm_up(kv_len)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = self.run_step(kv_len)
        return graph, logits


def _chain_products(weights: DecodeWeights, key: EngineKey, attention_splits: int) -> DecodeProducts | None:
    """The chained step's products (timed here) with `attention_splits`, or None where it cannot
    run or is switched off."""
    ref = weights.layers[0].qkv
    if (not key.graphs or ref.device.type != "cuda" or os.environ.get(CHAIN_ENV) != "1"
            or os.environ.get(FUSED_ENV) == "0" or not triton_products.available(ref.device)
            or torch.cuda.get_device_capability(ref.device) < (9, 0)):
        return None
    try:
        return replace(DecodeProducts.chained(weights, key.batch), attention_splits=attention_splits)
    except Exception as exc:  # noqa: BLE001 - the fused and plain steps serve
        warnings.warn(f"timing the chained step's products failed ({exc!r:.300}); not used", stacklevel=3)
        return None


_ATTENTION_CHECKED: dict[tuple, Attention] = {}


def _attention_choice(dims: ModelDims, device: torch.device, dtype: torch.dtype) -> Attention:
    """RLTUI_DECODE_ATTENTION if set; else the Triton kernel on CUDA when Triton is there and the
    kernel agrees with SDPA on random data (checked once per shape), else SDPA."""
    if os.environ.get(ATTENTION_ENV):
        return Attention(os.environ[ATTENTION_ENV])
    from trainer import triton_decode

    if device.type != "cuda" or not triton_decode.available(device):
        return Attention.SDPA
    key = (dims, str(device), dtype)
    if key not in _ATTENTION_CHECKED:
        _ATTENTION_CHECKED[key] = Attention.SDPA
        try:
            error = triton_decode.check_error(dims, device, dtype)
            if error < 0.02:
                _ATTENTION_CHECKED[key] = Attention.TRITON
            else:
                warnings.warn(f"Triton decode attention differs from SDPA (relative error {error:.3g}); using SDPA",
                              stacklevel=3)
        except Exception as exc:  # noqa: BLE001 - SDPA stays
            warnings.warn(f"Triton decode attention failed its check ({exc!r:.300}); using SDPA", stacklevel=3)
    return _ATTENTION_CHECKED[key]


_ENGINES: weakref.WeakKeyDictionary[nn.Module, DecodeEngine] = weakref.WeakKeyDictionary()  # the one used last
# A model's engines for other batch sizes, the one used last first, at most KEPT_ENGINES of them;
# they share the fused weights with the one in use. An evaluation's batches are 32 prompts and then the rest
# (GSM8K's 1,319 questions: 41 x 32 + 7): with one engine a model, every checkpoint built two, each
# timing, checking and capturing again (trainer/decode_graphs.py; the compiles are cached).
_KEPT: weakref.WeakKeyDictionary[nn.Module, list[DecodeEngine]] = weakref.WeakKeyDictionary()
KEPT_ENGINES = 1
_COMPILED: dict[tuple[ModelDims, str | None, bool, bool], tuple[Callable, Callable]] = {}


def _compile_mode() -> str | None:
    return "max-autotune-no-cudagraphs" if os.environ.get(COMPILE_ENV) == "max-autotune" else None


def _compiled_layer_fns(dims: ModelDims, mode: str | None = None, dynamic: bool = False) -> tuple[Callable, Callable]:
    """torch.compile fuses each layer's norms, RoPE, SiLU and residual adds into a few kernels.

    Compiled once per model shape as two small functions (attention is left out, so the
    attention-length buckets do not recompile them); every layer reuses the same code.
    """
    fixed = repeatable()
    mode = None if fixed else mode  # (max-autotune times kernels; torch.compile takes a mode or options)
    key = (dims, mode, dynamic, fixed)
    if key not in _COMPILED:
        def pre(*args: torch.Tensor | None):
            return attention_inputs(dims, *args)

        def post(*args: torch.Tensor):
            return attention_output_and_mlp(dims, *args)

        options = {"fullgraph": True, "dynamic": dynamic} | ({"mode": mode} if mode else {}) | compile_options()
        _COMPILED[key] = (torch.compile(pre, **options), torch.compile(post, **options))
    return _COMPILED[key]


def release_engines() -> None:
    """Free every cached engine (fused weights, KV cache, graphs), e.g. before a memory-hungry phase."""
    _ENGINES.clear()
    _KEPT.clear()
    stream = sys.modules.get("trainer.gluon_stream")  # (its workspaces, where it was used)
    if stream is not None:
        stream.release_workspaces()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def engine_for(model: nn.Module, batch: int, capacity: int, *, graphs: bool, compiled: bool) -> DecodeEngine:
    """The cached engine for this model and batch size (weights refreshed from it), or a new one.

    An engine whose cache is at least `capacity` slots long is reused: prompt lengths vary
    between rollouts, and reallocating and recapturing for each would cost more than the slots.
    The engine of another batch size is kept (`_KEPT`, up to KEPT_ENGINES, the one used last
    first) for when that size comes back; a new engine shares the fused weights of the model's
    engines on its device, and one that replaces an engine of its batch size whose cache was too
    short takes over that engine's choices (`DecodeEngine(decided=...)`): a longer prompt than
    any before costs a new cache and captures, not the products' timing and the step's choice."""
    weight = next(p for p in model.parameters())
    key = EngineKey(batch, capacity, str(weight.device), weight.dtype, graphs, compiled)

    def fits(engine: DecodeEngine) -> bool:
        return replace(engine.key, capacity=capacity) == key and engine.key.capacity >= capacity

    current = _ENGINES.get(model)
    if current is not None and fits(current):
        current.weights.refresh(model)
        return current
    before = ([current] if current is not None else []) + _KEPT.get(model, [])
    found = next((engine for engine in before if fits(engine)), None)
    # kept: other batch sizes on this device, dtype and modes; dropped: the rest (a cache too short
    # for this batch, whose choices the new engine takes over; another device's or dtype's)
    alike = [engine for engine in before if replace(engine.key, batch=batch, capacity=capacity) == key]
    others = [engine for engine in alike if engine.key.batch != batch][:KEPT_ENGINES]
    decided = next((engine.choices() for engine in alike if engine.key.batch == batch), None)
    _KEPT[model] = others
    if found is not None:
        found.weights.refresh(model)
    else:
        shared = next((engine.weights for engine in alike), None)
        _ENGINES.pop(model, None)
        if len(before) > len(others) and torch.cuda.is_available():
            del before, current, alike  # the dropped engines' buffers go back before the new one's are made
            torch.cuda.empty_cache()
        found = DecodeEngine(model, key, weights=shared, decided=decided)
    _ENGINES[model] = found
    return found


def _race_argmax(logits: torch.Tensor, race: torch.Tensor, inv_temperature: float) -> torch.Tensor:
    # argmax softmax(l / T)_i / E_i = argmax (l_i / T - log E_i): no normalisation pass needed.
    return (logits.float() * inv_temperature - race.clamp_min(torch.finfo(torch.float32).tiny).log()).argmax(-1)


_COMPILED_RACE: dict[bool, Callable] = {}  # by `repeatable()`
_TRITON_FAILED: list[bool] = []


def _race(logits: torch.Tensor, race: torch.Tensor, inv_temperature: float) -> torch.Tensor:
    """On CUDA one fused kernel reads the bf16 logits and the noise once (eager: five passes)."""
    if logits.device.type != "cuda" or not _default_compile(logits.device):
        return _race_argmax(logits, race, inv_temperature)
    fixed = repeatable()
    if fixed not in _COMPILED_RACE:
        _COMPILED_RACE[fixed] = torch.compile(_race_argmax, fullgraph=True, dynamic=False, **compile_options())
    try:
        return _COMPILED_RACE[fixed](logits, race, inv_temperature)
    except Exception as exc:  # noqa: BLE001 - fall back to the eager kernels for good
        warnings.warn(f"torch.compile of sampling failed ({exc!r:.300}); using eager kernels", stacklevel=2)
        _COMPILED_RACE[fixed] = _race_argmax
        return _race_argmax(logits, race, inv_temperature)


def sample_tokens(logits: torch.Tensor, *, do_sample: bool, temperature: float, top_p: float,
                  generator: torch.Generator | None, banned: torch.Tensor | None) -> torch.Tensor:
    """One token per row. Same distribution as trainer.generation.sample_next, drawn on device.

    Sampling is an exponential race: the argmax of p_i / E_i with E_i ~ Exp(1) is distributed as
    p, and needs neither a cumulative sum nor a host round trip. Top-p filtering (a sort) is the
    same rule as the plain path and only runs when top_p < 1. `banned` ids are never drawn.
    """
    if not do_sample:
        if banned is not None:
            logits = logits.index_fill(1, banned, float("-inf"))
        return logits.argmax(dim=-1)
    if top_p < 1.0:
        scaled = logits.float() / max(temperature, 1e-6)
        if banned is not None:
            scaled.index_fill_(1, banned, float("-inf"))
        sorted_logits, order = scaled.sort(dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p
        logits, temperature, banned = scaled.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf"))), 1.0, None
    if logits.is_cuda and triton_sampling.available(logits.device) and not _TRITON_FAILED:
        try:  # the race with in-kernel noise, or the inverse CDF (trainer/triton_sampling.py)
            return triton_sampling.sampler()(logits, 1.0 / max(temperature, 1e-6), generator, banned)
        except Exception as exc:  # noqa: BLE001 - the torch race below is the same distribution
            warnings.warn(f"Triton sampling failed ({exc!r:.300}); using the torch race", stacklevel=2)
            _TRITON_FAILED.append(True)
    race = torch.empty(logits.shape, dtype=torch.float32, device=logits.device).exponential_(generator=generator)
    if banned is not None:
        race.index_fill_(1, banned, float("inf"))  # an infinite wait never wins
    return _race(logits, race, 1.0 / max(temperature, 1e-6))


def attention_bucket() -> int:
    return max(1, int(os.environ.get(ATTENTION_BUCKET_ENV, DEFAULT_ATTENTION_BUCKET)))


def kv_length(slots: int, capacity: int) -> int:
    """Cache slots a decode step attends over when `slots` are filled: `slots` rounded up to the
    attention bucket, at most the capacity."""
    bucket = attention_bucket()
    return min(capacity, -(-slots // bucket) * bucket)


def decode_texts(tokenizer: Any, rows: list[list[int]]) -> list[str]:
    """`tokenizer.decode(row, skip_special_tokens=True)` for every row; for a fast tokenizer that
    does no clean-up afterwards, one call of its Rust `decode_batch`, which decodes the rows in
    parallel threads (the same strings)."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is not None and hasattr(backend, "decode_batch") and not getattr(
            tokenizer, "clean_up_tokenization_spaces", True) and len(rows) > 1:
        return list(backend.decode_batch(rows, skip_special_tokens=True))
    return [tokenizer.decode(row, skip_special_tokens=True) for row in rows]


def _device_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    """A generator on the model's device: the given one, or one seeded from it (advancing it)."""
    if generator is None or generator.device.type == device.type:
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


def _tokenize_left(tokenizer: Any, prompts: Sequence[str], max_prompt_length: int | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    # Each distinct prompt tokenized once (a GRPO rollout repeats every prompt G times): the same
    # rows, since every row is padded to the longest prompt either way.
    distinct: dict[str, int] = {}
    index = [distinct.setdefault(prompt, len(distinct)) for prompt in prompts]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(list(distinct), return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    ids, mask = enc["input_ids"], enc["attention_mask"]
    if len(distinct) < len(index):
        rows = torch.tensor(index)
        ids, mask = ids[rows], mask[rows]
    if max_prompt_length is not None and ids.shape[1] > max_prompt_length:
        ids, mask = ids[:, -max_prompt_length:], mask[:, -max_prompt_length:]
    return ids, mask


def _unique_rows(ids: torch.Tensor, mask: torch.Tensor) -> tuple[list[int], list[int]]:
    """(first row of each distinct prompt, for each row the index of its distinct prompt). Rows are
    the same prompt when their ids and their attention masks are (a pad id can also be a real
    token, e.g. EOS as pad)."""
    group_of: dict[tuple[int, ...], int] = {}
    starts: list[int] = []
    inverse: list[int] = []
    for row, values in enumerate(torch.cat([ids, mask.to(ids.dtype)], dim=1).tolist()):
        key = tuple(values)
        if key not in group_of:
            group_of[key] = len(starts)
            starts.append(row)
        inverse.append(group_of[key])
    return starts, inverse


def _default_compile(device: torch.device) -> bool:
    return device.type == "cuda" and os.environ.get(COMPILE_ENV, "1") != "0"


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    do_sample: bool,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    stop_at_eos: bool = True,
    max_prompt_length: int | None = None,
    deadline: float | None = None,
    min_new_tokens: int = 0,
    use_graphs: bool | None = None,
    compile_layers: bool | None = None,
) -> GenerationOutput:
    """Complete every prompt in one batch; arguments as trainer.generation.generate."""
    device = next(model.parameters()).device
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    generator = _device_generator(generator, device)
    graphs = device.type == "cuda" if use_graphs is None else use_graphs
    compiled = _default_compile(device) if compile_layers is None else compile_layers
    prompt_ids, prompt_mask = _tokenize_left(tokenizer, prompts, max_prompt_length)
    batch, length = prompt_ids.shape
    pad_id = tokenizer.pad_token_id
    eos = eos_token_ids(model, tokenizer)
    stop_ids = torch.tensor(eos if stop_at_eos else [], device=device, dtype=torch.long)
    banned = torch.tensor(eos, device=device, dtype=torch.long) if eos else None

    capacity = -(-(length + max_new_tokens) // BUCKET) * BUCKET
    engine = engine_for(model, batch, capacity, graphs=graphs, compiled=compiled)
    capacity = engine.state.capacity
    starts, inverse = _unique_rows(prompt_ids, prompt_mask)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    logits = engine.prefill(prompt_ids[starts], prompt_mask[starts], torch.tensor(inverse, device=device))

    tokens = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
    alive = torch.zeros((batch, max_new_tokens), dtype=torch.bool, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    timed_out = False
    for i in range(max_new_tokens):
        token = sample_tokens(logits, do_sample=do_sample, temperature=temperature, top_p=top_p,
                              generator=generator, banned=banned if i < min_new_tokens else None)
        token = torch.where(finished, pad_id, token)
        alive[:, i] = ~finished
        tokens[:, i] = token
        finished |= torch.isin(token, stop_ids)
        if i == max_new_tokens - 1:
            break
        # Before min_new_tokens no row can finish (EOS is banned): no sync to ask.
        if (i + 1) % SYNC_EVERY == 0 and i + 1 >= min_new_tokens and bool(finished.all()):
            break
        if deadline is not None and time.monotonic() > deadline:
            timed_out = True
            break
        engine.state.tokens.copy_(token)
        logits = engine.step(kv_length(length + i + 1, capacity))

    engine.stream_gave_up()
    width = int(alive.any(dim=0).nonzero().max()) + 1 if max_new_tokens else 0
    completion_ids, completion_mask = tokens[:, :width], alive[:, :width].long()
    lengths = completion_mask.sum(dim=1).tolist()
    texts = decode_texts(tokenizer, [row[:n] for row, n in zip(completion_ids.tolist(), lengths)])
    return GenerationOutput(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
        completion_mask=completion_mask, texts=texts, prompt_lengths=prompt_mask.sum(dim=1).tolist(),
        completion_lengths=lengths, truncated=(~finished).tolist(), timed_out=timed_out,
    )


@torch.no_grad()
def forced_logits(model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                  completion_ids: torch.Tensor, *, use_graphs: bool | None = None,
                  compile_layers: bool | None = None) -> torch.Tensor:
    """Teacher-forced next-token logits of the fast path: [N, C, vocab] float32.

    Position i holds the logits that predict completion token i given the prompt and the
    completion tokens before it (the rows of `prompt_ids` must be left-padded). The same prefill
    and decode steps as `generate`, so this is how its numerics are compared with transformers'
    on one fixed token sequence, free of the divergence that free-running sampling adds.
    """
    device = next(model.parameters()).device
    graphs = device.type == "cuda" if use_graphs is None else use_graphs
    compiled = _default_compile(device) if compile_layers is None else compile_layers
    batch, length = prompt_ids.shape
    steps = completion_ids.shape[1]
    capacity = -(-(length + steps) // BUCKET) * BUCKET
    engine = engine_for(model, batch, capacity, graphs=graphs, compiled=compiled)
    capacity = engine.state.capacity
    starts, inverse = _unique_rows(prompt_ids, prompt_mask)  # repeated prompts computed once, as in generate
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    logits = engine.prefill(prompt_ids[starts], prompt_mask[starts], torch.tensor(inverse, device=device))
    found = [logits.to(torch.float32, copy=True)]
    for i in range(steps - 1):
        engine.state.tokens.copy_(completion_ids[:, i])
        found.append(engine.step(kv_length(length + i + 1, capacity)).to(torch.float32, copy=True))
    return torch.stack(found, dim=1)


def fast_or_plain(model: nn.Module) -> Callable[..., GenerationOutput]:
    """The generate to use for `model`: this one on CUDA for supported models, else the plain one."""
    from trainer.generation import generate as plain

    device = next(model.parameters()).device
    if device.type == "cuda" and supports_fast_generation(model):
        return generate
    if device.type == "cuda":
        warnings.warn("fast generation does not support this model; using the plain generate", stacklevel=2)
    return plain
