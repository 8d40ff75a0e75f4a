"""Plain-torch Qwen2 forward for rollouts: fused weights with the LoRA folded in, static KV cache.

The training model (transformers Qwen2ForCausalLM, optionally a peft LoRA PeftModel) stays the
source of truth. `DecodeWeights.refresh(model)` copies its effective weights into fused buffers:
q/k/v as one matrix, gate/up as one matrix, and each LoRA adapter folded in as
W + scaling * B @ A computed in float32 and cast once. The base weights are only read, never
merged in place: a bf16 merge/unmerge round trip drifts them (trl#6688).

`prefill` runs the left-padded prompts through the layers once, filling the cache;
`decode_step` advances every sequence by one token reading only static buffers, so that one call
can be captured in a CUDA graph and replayed per token (trainer/fast_generation.py does that).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class UnsupportedModel(ValueError):
    """The model is outside what the fast path reproduces exactly; use the plain generate."""


@dataclass(frozen=True)
class ModelDims:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    eps: float
    rope_theta: float

    @property
    def q_size(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.kv_heads * self.head_dim


def causal_lm(model: nn.Module) -> nn.Module:
    """The Qwen2ForCausalLM under an optional PeftModel wrapper (LoRA layers stay injected)."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != "qwen2":
        raise UnsupportedModel(f"fast generation supports qwen2 models, not {getattr(config, 'model_type', None)!r}")
    return model


def model_dims(model: nn.Module) -> ModelDims:
    config = causal_lm(model).config
    rope = getattr(config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default")
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    if rope_type != "default" or theta is None:
        raise UnsupportedModel(f"fast generation supports default RoPE only, not {rope_type!r}")
    if getattr(config, "use_sliding_window", False):
        raise UnsupportedModel("fast generation does not implement sliding-window attention")
    if config.hidden_act != "silu":
        raise UnsupportedModel(f"fast generation supports silu MLPs, not {config.hidden_act!r}")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return ModelDims(
        layers=config.num_hidden_layers, hidden=config.hidden_size, heads=config.num_attention_heads,
        kv_heads=config.num_key_value_heads, head_dim=head_dim,
        intermediate=config.intermediate_size, vocab=config.vocab_size,
        eps=config.rms_norm_eps, rope_theta=float(theta),
    )


def effective_linear(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) this Linear applies now: base weight plus every active LoRA adapter.

    The sum is formed in float32 and cast once, so the result is the adapter-on function up to one
    rounding, and the base weight is left bitwise as it was.
    """
    base = getattr(module, "base_layer", None)
    if base is None:
        if not isinstance(module, nn.Linear):
            raise UnsupportedModel(f"cannot fold {type(module).__name__} into a fused weight")
        return module.weight, module.bias
    weight, bias = base.weight, base.bias
    if module.disable_adapters or module.merged:
        return weight, bias
    active = [name for name in module.active_adapters if name in module.lora_A]
    if not active:
        return weight, bias
    total = weight.float()
    for name in active:
        if name in getattr(module, "lora_variant", {}) or getattr(module, "fan_in_fan_out", False):
            raise UnsupportedModel(f"LoRA variant of adapter {name!r} (DoRA and the like) is not folded")
        if module.lora_B[name].bias is not None:
            raise UnsupportedModel(f"adapter {name!r} has a LoRA bias, which is not folded")
        b, a = module.lora_B[name].weight.float(), module.lora_A[name].weight.float()
        if total.is_cuda:  # one product with the add in its epilogue: two passes fewer per matrix
            total = torch.addmm(total, b, a, alpha=module.scaling[name])
        else:
            total = total + module.scaling[name] * (b @ a)
    return total.to(weight.dtype), bias


def adapter_state(model: nn.Module) -> tuple:
    """What decides each LoRA layer's effective weight besides its tensors (enabled, merged, active
    adapters, scalings): a captured graph that folded or applied the adapters is valid only while
    this is unchanged."""
    return tuple((module.disable_adapters, module.merged, tuple(module.active_adapters),
                  tuple(sorted(module.scaling.items())))
                 for module in model.modules() if hasattr(module, "lora_A"))


_CHECKED: weakref.WeakKeyDictionary[nn.Module, dict[str, tuple[tuple, bool]]] = weakref.WeakKeyDictionary()


def checked_once(model: nn.Module, what: str, check: Callable[[], bool], *extra: object) -> bool:
    """`check()`, run once per model, adapter set and `extra` values and remembered: the fast
    paths' support checks walk every module of the model (~4-8 ms of host time on the box here),
    several times a training step, with the GPU idle. Adapters are added, removed and switched
    through peft, which records them in `peft_config` and the active adapter: both are part of
    the key."""
    config = getattr(model, "peft_config", None)
    adapters = tuple(sorted(config)) if isinstance(config, dict) else ()
    active = str(getattr(getattr(model, "base_model", None), "active_adapter", None)) if adapters else ""
    key = (adapters, active, *extra)
    found = _CHECKED.setdefault(model, {}).get(what)
    if found is None or found[0] != key:
        found = _CHECKED[model][what] = (key, bool(check()))
    return found[1]


def check_foldable(model: nn.Module) -> None:
    """Raise UnsupportedModel for adapters `effective_linear` cannot fold (checked without copying)."""
    lm = causal_lm(model)
    if hasattr(lm.model.embed_tokens, "base_layer"):
        raise UnsupportedModel("an adapter on the embedding is not folded")
    for name, module in lm.named_modules():
        if not hasattr(module, "lora_A"):
            continue
        for adapter in module.lora_A:
            if adapter in getattr(module, "lora_variant", {}) or getattr(module, "fan_in_fan_out", False):
                raise UnsupportedModel(f"{name}: LoRA variant of adapter {adapter!r} is not folded")
            if module.lora_B[adapter].bias is not None:
                raise UnsupportedModel(f"{name}: adapter {adapter!r} has a LoRA bias, which is not folded")


@dataclass
class LayerWeights:
    input_norm: torch.Tensor
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    post_norm: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor


@dataclass
class DecodeWeights:
    """Fused copies of the projection weights; norms, embedding and a plain lm_head are shared."""

    dims: ModelDims
    embed: torch.Tensor
    layers: list[LayerWeights]
    norm: torch.Tensor
    lm_head: torch.Tensor
    fold: bool | None = None  # trainer/triton_fold.py folds the adapters (decided at the first refresh)

    @classmethod
    def allocate(cls, model: nn.Module) -> DecodeWeights:
        dims = model_dims(model)
        lm = causal_lm(model)
        ref = lm.model.layers[0].mlp.down_proj
        ref_weight = ref.base_layer.weight if hasattr(ref, "base_layer") else ref.weight
        kw = {"device": ref_weight.device, "dtype": ref_weight.dtype}
        has_bias = _linear_bias(lm.model.layers[0].self_attn.q_proj) is not None
        layers = [
            LayerWeights(
                input_norm=layer.input_layernorm.weight,
                qkv=torch.empty(dims.q_size + 2 * dims.kv_size, dims.hidden, **kw),
                qkv_bias=torch.empty(dims.q_size + 2 * dims.kv_size, **kw) if has_bias else None,
                o=torch.empty(dims.hidden, dims.q_size, **kw),
                post_norm=layer.post_attention_layernorm.weight,
                gate_up=torch.empty(2 * dims.intermediate, dims.hidden, **kw),
                down=torch.empty(dims.hidden, dims.intermediate, **kw),
            )
            for layer in lm.model.layers
        ]
        if not isinstance(lm.model.embed_tokens, nn.Embedding) or hasattr(lm.model.embed_tokens, "base_layer"):
            raise UnsupportedModel("an adapter on the embedding is not folded")
        head = lm.get_output_embeddings()
        lm_head = head.weight if not hasattr(head, "base_layer") else torch.empty_like(head.base_layer.weight)
        weights = cls(dims=dims, embed=lm.model.embed_tokens.weight, layers=layers,
                      norm=lm.model.norm.weight, lm_head=lm_head)
        weights.refresh(model)
        return weights

    @torch.no_grad()
    def refresh(self, model: nn.Module) -> None:
        """Copy the model's current effective weights into the fused buffers, in place."""
        lm = causal_lm(model)
        q, kv = self.dims.q_size, self.dims.kv_size
        if self.fold is None:
            self.fold = _fold_choice(self.layers[0].qkv)
        put = partial(_put, self.fold)
        for fused, layer in zip(self.layers, lm.model.layers):
            attn, mlp = layer.self_attn, layer.mlp
            for (start, stop), proj in (((0, q), attn.q_proj), ((q, q + kv), attn.k_proj),
                                         ((q + kv, q + 2 * kv), attn.v_proj)):
                put(fused.qkv[start:stop], proj)
                if fused.qkv_bias is not None:
                    fused.qkv_bias[start:stop].copy_(_linear_bias(proj))
            put(fused.o, attn.o_proj)
            inter = self.dims.intermediate
            put(fused.gate_up[:inter], mlp.gate_proj)
            put(fused.gate_up[inter:], mlp.up_proj)
            put(fused.down, mlp.down_proj)
        head = lm.get_output_embeddings()
        if hasattr(head, "base_layer"):
            self.lm_head.copy_(effective_linear(head)[0])

    def nbytes(self) -> int:
        """Bytes of weights one decode step reads (each matrix once; embedding rows are negligible)."""
        per_layer = sum(t.numel() * t.element_size() for t in (
            self.layers[0].qkv, self.layers[0].o, self.layers[0].gate_up, self.layers[0].down))
        return per_layer * len(self.layers) + self.lm_head.numel() * self.lm_head.element_size()


def _put(fold: bool, dest: torch.Tensor, module: nn.Module) -> None:
    """dest <- the module's effective weight: by the one-pass Triton fold when chosen and the
    module has one plain adapter, else effective_linear's torch sum."""
    if fold:
        from trainer.triton_fold import fold_into, single_adapter

        adapter = single_adapter(module)
        if adapter is not None:
            fold_into(dest, module.base_layer.weight, *adapter)
            return
    dest.copy_(effective_linear(module)[0])


def _fold_choice(weight: torch.Tensor) -> bool:
    """The Triton fold on CUDA (RLTUI_TRITON_FOLD=1 also in Triton's interpreter, for the tests)
    when it matches the torch sum on random adapters for this weight's shape; else the torch path."""
    import os
    import warnings

    from trainer import triton_fold

    if not triton_fold.available(weight.device) or (
            weight.device.type != "cuda" and os.environ.get("RLTUI_TRITON_FOLD") != "1"):
        return False
    try:
        found = triton_fold.check(torch.randn_like(weight))  # the buffer itself is not filled yet
    except Exception as exc:  # noqa: BLE001 - the torch path stays
        warnings.warn(f"Triton adapter fold failed its check ({exc!r:.300}); folding with torch", stacklevel=3)
        return False
    if not triton_fold.passes(found):
        warnings.warn(f"Triton adapter fold differs from torch's ({found}); folding with torch", stacklevel=3)
        return False
    return True


def _linear_bias(module: nn.Module) -> torch.Tensor | None:
    return module.base_layer.bias if hasattr(module, "base_layer") else module.bias


def rope_tables(dims: ModelDims, length: int, device: torch.device, dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [length, head_dim] of the float32 angles transformers computes, cast as it does.

    On a CPU they are numpy's float64 cos and sin of those angles, rounded once: torch's own CPU
    cos (2.13, AVX512) sometimes returned other values on a process's first call from its worker
    threads (up to 1.5e-4 off at angles near 100 rad, in the rows the second thread computed), so
    two tables built in one process could differ."""
    inv_freq = 1.0 / (dims.rope_theta ** (
        torch.arange(0, dims.head_dim, 2, dtype=torch.int64, device=device).to(torch.float) / dims.head_dim))
    freqs = torch.arange(length, device=device, dtype=torch.float)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    if emb.device.type == "cpu":
        angles = emb.double().numpy()
        return torch.from_numpy(np.cos(angles)).to(dtype), torch.from_numpy(np.sin(angles)).to(dtype)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


def attention_inputs(dims: ModelDims, x: torch.Tensor, norm: torch.Tensor, qkv_weight: torch.Tensor,
                     qkv_bias: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Norm, fused q/k/v projection and RoPE for one token per row.

    x [B, hidden] -> q [B, heads, D] and the new cache entry [B, kv_heads, 2 D] (key, then value),
    so that one write per layer stores both.
    """
    h = rms_norm(x, norm, dims.eps)
    qkv = F.linear(h, qkv_weight, qkv_bias)
    q, k, v = qkv.split((dims.q_size, dims.kv_size, dims.kv_size), dim=-1)
    q = apply_rope(q.view(-1, dims.heads, dims.head_dim), cos[:, None], sin[:, None])
    k = apply_rope(k.view(-1, dims.kv_heads, dims.head_dim), cos[:, None], sin[:, None])
    return q, torch.cat((k, v.view(-1, dims.kv_heads, dims.head_dim)), dim=-1)


def attention_output_and_mlp(dims: ModelDims, x: torch.Tensor, attn: torch.Tensor, o_weight: torch.Tensor,
                             norm: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """Output projection, residual, norm, SiLU MLP, residual."""
    x = x + F.linear(attn, o_weight)
    h = rms_norm(x, norm, dims.eps)
    gate, up = F.linear(h, gate_up).chunk(2, dim=-1)
    return x + F.linear(F.silu(gate) * up, down)


@dataclass
class DecodeState:
    """Every buffer a decode step reads or writes; fixed addresses so a graph can replay it."""

    kv_cache: torch.Tensor     # [layers, batch, kv_heads, capacity, 2 * head_dim]: key | value
    valid: torch.Tensor        # [batch, capacity] bool: positions a query may attend to
    tokens: torch.Tensor       # [batch] the token each row feeds next
    positions: torch.Tensor    # [batch] its RoPE position
    write_index: torch.Tensor  # [1] the cache slot it is written to (same for all rows)
    cos: torch.Tensor          # [capacity, head_dim]
    sin: torch.Tensor
    # The fused step's attention reads the first `shared` [1] slots (the prompt) of row b from row
    # leaders[b] [batch], the first row of its group, so they come from L2 for the others
    # (trainer/fused_decode.py). The prefill sets both; every row still holds its own copy.
    leaders: torch.Tensor
    shared: torch.Tensor

    @classmethod
    def allocate(cls, dims: ModelDims, batch: int, capacity: int, device: torch.device,
                 dtype: torch.dtype) -> DecodeState:
        shape = (dims.layers, batch, dims.kv_heads, capacity, 2 * dims.head_dim)
        cos, sin = rope_tables(dims, capacity, device, dtype)
        return cls(
            kv_cache=torch.zeros(shape, device=device, dtype=dtype),
            valid=torch.zeros(batch, capacity, device=device, dtype=torch.bool),
            tokens=torch.zeros(batch, device=device, dtype=torch.long),
            positions=torch.zeros(batch, device=device, dtype=torch.long),
            write_index=torch.zeros(1, device=device, dtype=torch.long),
            cos=cos, sin=sin,
            leaders=torch.arange(batch, device=device), shared=torch.zeros(1, device=device, dtype=torch.long),
        )

    @property
    def capacity(self) -> int:
        return self.valid.shape[1]


@torch.no_grad()
def prefill(weights: DecodeWeights, state: DecodeState, input_ids: torch.Tensor,
            attention_mask: torch.Tensor, rows: torch.Tensor,
            layer_fns: tuple[Callable, Callable] | None = None) -> torch.Tensor:
    """Run left-padded prompts [U, P], write their K/V into cache rows, return last-token logits.

    `rows` [batch] maps each cache row to a prompt row, so a prompt repeated for a group of
    generations is computed once and its K/V copied to every row of the group. The layers run as
    decode's two pieces over all U * P tokens at once (`layer_fns`: compiled versions of them
    that accept any token count).
    """
    dims = weights.dims
    pre, post = layer_fns or (partial(attention_inputs, dims), partial(attention_output_and_mlp, dims))
    n, length = input_ids.shape
    d = dims.head_dim
    mask = attention_mask.bool()
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    causal = torch.ones(length, length, dtype=torch.bool, device=input_ids.device).tril()
    # A padding query row attends to itself, so no softmax row is empty (its output is never used).
    attend = (causal[None] & mask[:, None, :]) | torch.eye(length, dtype=torch.bool, device=input_ids.device)
    attend = attend[:, None]
    flat = positions.reshape(-1)
    cos, sin = state.cos.index_select(0, flat), state.sin.index_select(0, flat)
    groups = dims.heads // dims.kv_heads
    x = F.embedding(input_ids.reshape(-1), weights.embed)
    for index, layer in enumerate(weights.layers):
        q, entry = pre(x, layer.input_norm, layer.qkv, layer.qkv_bias, cos, sin)
        q = q.view(n, length, dims.heads, d).transpose(1, 2)
        entry = entry.view(n, length, dims.kv_heads, 2 * d).transpose(1, 2)
        state.kv_cache[index, :, :, :length] = entry.index_select(0, rows)
        out = F.scaled_dot_product_attention(
            q, entry[..., :d].repeat_interleave(groups, dim=1), entry[..., d:].repeat_interleave(groups, dim=1),
            attn_mask=attend, scale=d ** -0.5)
        x = post(x, out.transpose(1, 2).reshape(n * length, dims.q_size), layer.o, layer.post_norm,
                 layer.gate_up, layer.down)
    last = rms_norm(x.view(n, length, -1)[:, -1], weights.norm, dims.eps)
    state.valid.zero_()
    state.valid[:, :length] = mask.index_select(0, rows)
    state.positions.copy_(positions[:, -1].index_select(0, rows) + 1)
    state.write_index.fill_(length)
    batch = rows.shape[0]
    first = torch.full((n,), batch, device=rows.device, dtype=torch.long).scatter_reduce_(
        0, rows, torch.arange(batch, device=rows.device), reduce="amin")
    state.leaders.copy_(first.index_select(0, rows))
    state.shared.fill_(length)
    return F.linear(last, weights.lm_head).index_select(0, rows)


class Attention(str, Enum):
    SDPA = "sdpa"  # F.scaled_dot_product_attention with enable_gqa: one fused kernel on CUDA
    BMM = "bmm"    # baddbmm (scale, mask) + softmax + bmm: three kernels, ~0.2 ms slower per step
    TRITON = "triton"  # trainer/triton_decode.py: one kernel per KV head, the cache read in place


def _attend(dims: ModelDims, q: torch.Tensor, live: torch.Tensor, bias: torch.Tensor,
            attention: Attention) -> torch.Tensor:
    """One query per row against the live cache slots [B, kv_heads, L, 2 D] (key | value)."""
    batch, d = q.shape[0], dims.head_dim
    if attention is Attention.TRITON:
        from trainer.triton_decode import decode_attention

        return decode_attention(q, live, bias, d ** -0.5)
    if attention is Attention.SDPA:
        return F.scaled_dot_product_attention(q[:, :, None], live[..., :d], live[..., d:], attn_mask=bias,
                                              scale=d ** -0.5, enable_gqa=True).reshape(batch, dims.q_size)
    # Grouped-query attention without repeating K/V: each KV head serves its query heads as the
    # rows of one small product; scale and mask ride in baddbmm, softmax accumulates in float32
    # internally.
    q = q.reshape(batch * dims.kv_heads, dims.heads // dims.kv_heads, d)
    live = live.flatten(0, 1)
    scores = torch.baddbmm(bias, q, live[..., :d].transpose(1, 2), alpha=d ** -0.5)
    return torch.bmm(scores.softmax(-1), live[..., d:]).reshape(batch, dims.q_size)


def decode_step(weights: DecodeWeights, state: DecodeState, kv_len: int,
                layer_fns: tuple[Callable, Callable] | None = None,
                attention: Attention = Attention.SDPA) -> torch.Tensor:
    """Feed `state.tokens`, return next-token logits [batch, vocab]; advance position and slot.

    Attention reads only the first `kv_len` cache slots (>= write_index + 1), so early tokens
    do not pay for the whole cache. `layer_fns` optionally replaces the two per-layer pieces with
    compiled versions of `attention_inputs` and `attention_output_and_mlp` with `dims` bound.
    """
    dims = weights.dims
    pre, post = layer_fns or (partial(attention_inputs, dims), partial(attention_output_and_mlp, dims))
    batch, groups, d = state.tokens.shape[0], dims.heads // dims.kv_heads, dims.head_dim
    x = F.embedding(state.tokens, weights.embed)
    cos = state.cos.index_select(0, state.positions)
    sin = state.sin.index_select(0, state.positions)
    state.valid.index_fill_(1, state.write_index, True)
    # One additive mask per step, shared by all layers: 0 where a slot may be attended, -inf not.
    # Materialised at full size, so baddbmm starts from a plain copy rather than a broadcast.
    bias = torch.zeros(batch, 1, kv_len, device=x.device, dtype=x.dtype)
    bias = bias.masked_fill_(~state.valid[:, None, :kv_len], float("-inf"))
    if attention is Attention.BMM:
        bias = bias.expand(batch, dims.kv_heads * groups, kv_len).reshape(batch * dims.kv_heads, groups, kv_len)
    else:
        bias = bias[:, None]
    for index, layer in enumerate(weights.layers):
        q, entry = pre(x, layer.input_norm, layer.qkv, layer.qkv_bias, cos, sin)
        cache = state.kv_cache[index]
        cache.index_copy_(2, state.write_index, entry[:, :, None])
        attn = _attend(dims, q, cache[:, :, :kv_len], bias, attention)
        x = post(x, attn, layer.o, layer.post_norm, layer.gate_up, layer.down)
    logits = F.linear(rms_norm(x, weights.norm, dims.eps), weights.lm_head)
    state.positions.add_(1)
    state.write_index.add_(1)
    return logits
