"""Completion log-probs of a Qwen2 (+ LoRA) policy with gradients, the fast way: shared prompts,
fused layer pieces, no full logits.

    from trainer.qwen2_train import fast_logprobs_supported, prefix_shared_logprobs
    logps = prefix_shared_logprobs(model, input_ids, attention_mask, prompt_length, temperature)  # [N, C]

Same arguments, result and gradients as trainer.grpo.token_logps (float32 [N, C]; gradients flow
into the LoRA weights, which stay the model's own parameters), computed differently:

- **Each distinct prompt once.** A GRPO micro-batch holds G completions of the same prompt. Under
  causal attention a prompt's hidden states do not depend on what follows it, so the prompt
  tokens of a group go through the layers once and every completion of the group attends to
  that one copy of their keys and values (autograd adds the G gradients back into it). With
  128-token prompts, 256-token completions and G=8 this is 29% fewer tokens through every layer.
- **Fewer, larger products.** q/k/v and gate/up each take one product of stacked base weights
  (stacked once and cached while the base weights are unchanged), one of the stacked adapter A
  matrices and one of the block-diagonal B matrices (with LoRA dropout they stay separate).
- **Fused layer pieces.** The layers run as plain functions over the model's own tensors: the
  norm, q/k/v (+ LoRA), RoPE before attention, and the output projection, residuals, norm,
  gate/up (+ LoRA), SiLU x up, down (+ LoRA) after it. On CUDA each piece is torch.compile'd
  (forward and backward), which fuses the element-wise work that transformers + peft run as
  dozens of separate kernels per layer. On a CUDA bf16 model the adapter weights are cast to
  bf16 for the products, as mixed-precision training does (trainer.logprobs.bf16_adapter_compute);
  they and their gradients stay float32.
- **No [tokens, vocabulary] logits tensor.** trainer.logprobs.head_logprobs takes the LM head one
  chunk of tokens at a time and recomputes each chunk's logits in the backward pass.

The CPU trainer does not use this (grpo.token_logps takes it on CUDA only); the tests run it on
the CPU in float32 against the plain path, values and gradients.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import weakref
from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from trainer.logprobs import head_logprobs
from trainer.qwen2_decode import (
    ModelDims, UnsupportedModel, apply_rope, causal_lm, check_foldable, checked_once, model_dims, rms_norm,
    rope_tables,
)

COMPILE_ENV = "RLTUI_COMPILE_TRAIN"  # "0": run the layer pieces uncompiled on CUDA too
FAST_ENV = "RLTUI_FAST_LOGPROBS"      # "0": grpo.token_logps keeps trainer.logprobs.completion_logprobs

Lora = tuple[torch.Tensor, torch.Tensor, float, float] | None  # (A, B, scaling, dropout p)


def fast_logprobs_supported(model: nn.Module) -> bool:
    """True for a plain (non-DDP) Qwen2 model, optionally with plain LoRA adapters on its linear
    layers, none on the embedding or LM head, and no attention dropout (checked once per model
    and adapter set: qwen2_decode.checked_once)."""
    if os.environ.get(FAST_ENV, "1") == "0" or isinstance(model, nn.parallel.DistributedDataParallel):
        return False
    return checked_once(model, "fast_logprobs", partial(_supported, model),
                        getattr(getattr(model, "config", None), "attention_dropout", None))


def _supported(model: nn.Module) -> bool:
    try:
        model_dims(model)
        check_foldable(model)
        lm = causal_lm(model)
        if getattr(lm.config, "attention_dropout", 0.0) or hasattr(lm.get_output_embeddings(), "base_layer"):
            return False
        for module in lm.modules():
            if hasattr(module, "lora_A") and len(module.active_adapters) > 1:
                return False
    except UnsupportedModel:
        return False
    return True


_ADAPTERS_OFF = contextvars.ContextVar("rltui_adapters_off", default=False)


@contextlib.contextmanager
def adapters_off():
    """The base model through `prefix_shared_logprobs`, every adapter skipped, without switching
    them off module by module: peft's `disable_adapter()` walks the whole model on entry and exit,
    ~30 ms of host time with the GPU idle before each reference pass. Inside, a merged adapter
    (whose base weights are not at hand) raises UnsupportedModel."""
    token = _ADAPTERS_OFF.set(True)
    try:
        yield
    finally:
        _ADAPTERS_OFF.reset(token)


def _linear(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, Lora]:
    """(base weight, base bias, the active adapter or None) of a Linear or a peft LoRA Linear."""
    base = getattr(module, "base_layer", None)
    if base is None:
        return module.weight, module.bias, None
    if _ADAPTERS_OFF.get():
        if module.merged:
            raise UnsupportedModel("a merged adapter: its base weights are not at hand")
        return base.weight, base.bias, None
    if module.disable_adapters or module.merged:
        return base.weight, base.bias, None
    active = [name for name in module.active_adapters if name in module.lora_A]
    if not active:
        return base.weight, base.bias, None
    name = active[0]
    dropout = module.lora_dropout[name]
    p = dropout.p if isinstance(dropout, nn.Dropout) and module.training else 0.0
    return base.weight, base.bias, (module.lora_A[name].weight, module.lora_B[name].weight,
                                    float(module.scaling[name]), float(p))


def _project(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora: Lora) -> torch.Tensor:
    """base(x) + B(A(dropout(x))) * scaling, as peft's LoRA Linear; adapter products in x's dtype."""
    y = F.linear(x, weight, bias)
    if lora is None:
        return y
    a, b, scaling, p = lora
    h = F.dropout(x, p) if p > 0 else x
    return y + F.linear(F.linear(h, a.to(x.dtype)), b.to(x.dtype)) * scaling


_FUSED_BASE: weakref.WeakKeyDictionary[nn.Module, tuple] = weakref.WeakKeyDictionary()


def _fused_base(modules: Sequence[nn.Module], parts: Sequence[tuple]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The base weights (and biases) of `modules` stacked into one matrix, kept until they change."""
    tensors = [t for w, b, _ in parts for t in (w, b) if t is not None]
    stamp = tuple((t.data_ptr(), t._version) for t in tensors)
    found = _FUSED_BASE.get(modules[0])
    if found is None or found[0] != stamp:
        with torch.no_grad():
            weight = torch.cat([w for w, _, _ in parts])
            bias = None if parts[0][1] is None else torch.cat([b for _, b, _ in parts])
        found = _FUSED_BASE[modules[0]] = (stamp, weight, bias)
    return found[1], found[2]


def _group(modules: Sequence[nn.Module]) -> tuple:
    """Projections that read the same input, as one product where that is exact.

    ("fused", W, b, As, Bs, scalings): base weights stacked (cached), adapters' A stacked and B
    block-diagonal, so q/k/v (or gate/up) take three products instead of nine (six). ("split",
    parts) when the projections differ in kind (some adapted, some not, or a biased mix) or use
    dropout, where each projection draws its own mask as peft does.
    """
    parts = [_linear(m) for m in modules]
    loras = [part[2] for part in parts]
    mixed = any(lora is None for lora in loras) and not all(lora is None for lora in loras)
    biased = {part[1] is None for part in parts}
    if mixed or len(biased) > 1 or any(lora is not None and lora[3] > 0 for lora in loras):
        return ("split", tuple(parts))
    weight, bias = _fused_base(modules, parts)
    if loras[0] is None:
        return ("fused", weight, bias, None, None, None)
    return ("fused", weight, bias, tuple(lora[0] for lora in loras), tuple(lora[1] for lora in loras),
            tuple(lora[2] for lora in loras))


def _project_group(x: torch.Tensor, group: tuple, sizes: Sequence[int]) -> Sequence[torch.Tensor]:
    if group[0] == "split":
        return [_project(x, *part) for part in group[1]]
    _, weight, bias, a, b, scaling = group
    y = F.linear(x, weight, bias)
    if a is not None:
        z = F.linear(x, torch.cat(a).to(x.dtype))
        y = y + F.linear(z, torch.block_diag(*[(bi * si).to(x.dtype) for bi, si in zip(b, scaling)]))
    return y.split(list(sizes), dim=-1)


def attention_inputs(dims: ModelDims, x: torch.Tensor, norm: torch.Tensor, qkv: tuple,
                     cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [T, hidden] -> q [T, heads, D], k and v [T, kv_heads, D], RoPE applied (cos/sin [T, D])."""
    h = rms_norm(x, norm, dims.eps)
    cos, sin = cos[:, None], sin[:, None]
    q, k, v = _project_group(h, qkv, (dims.q_size, dims.kv_size, dims.kv_size))
    qs = apply_rope(q.reshape(-1, dims.heads, dims.head_dim), cos, sin)
    ks = apply_rope(k.reshape(-1, dims.kv_heads, dims.head_dim), cos, sin)
    return qs, ks, v.reshape(-1, dims.kv_heads, dims.head_dim)


def attention_output_and_mlp(dims: ModelDims, x: torch.Tensor, attn: torch.Tensor, o: tuple,
                             norm: torch.Tensor, gate_up: tuple, down: tuple) -> torch.Tensor:
    """x + o(attn), then + down(silu(gate(h)) * up(h)) with h its norm: [T, hidden]."""
    x = x + _project(attn, *o)
    h = rms_norm(x, norm, dims.eps)
    gate, up = _project_group(h, gate_up, (dims.intermediate, dims.intermediate))
    return x + _project(F.silu(gate) * up, *down)


_COMPILED: dict[ModelDims, tuple[Callable, Callable]] = {}


def _layer_fns(dims: ModelDims, device: torch.device) -> tuple[Callable, Callable]:
    eager = partial(attention_inputs, dims), partial(attention_output_and_mlp, dims)
    if device.type != "cuda" or os.environ.get(COMPILE_ENV, "1") == "0":
        return eager
    if dims not in _COMPILED:
        def pre(*args):
            return attention_inputs(dims, *args)

        def post(*args):
            return attention_output_and_mlp(dims, *args)

        # dynamic=None: static shapes first, one symbolic-shape recompile when the token count
        # changes (completion widths vary between rollouts), not one per width.
        _COMPILED[dims] = (torch.compile(pre, fullgraph=True), torch.compile(post, fullgraph=True))
    return _COMPILED[dims]


def prompt_groups(input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_length: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(first row of each run of identical prompts, each row's run index): rows [N] -> groups [U].

    Only neighbouring rows are merged (a rollout lists the G completions of a prompt together);
    identical prompts further apart stay separate groups, which is still exact. One device sync.
    """
    ids, mask = input_ids[:, :prompt_length], attention_mask[:, :prompt_length]
    same = (ids[1:] == ids[:-1]).all(1) & (mask[1:] == mask[:-1]).all(1)
    new = torch.cat([torch.ones(1, dtype=torch.bool, device=ids.device), ~same])
    starts = new.nonzero().squeeze(1)
    return starts, new.long().cumsum(0) - 1


def _masks(prompt_mask: torch.Tensor, completion_mask: torch.Tensor, group: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean attention masks: prompts [U, 1, P, P] and completions [N, 1, C, P + C].

    A query attends to earlier-or-same positions whose attention mask is 1, as in transformers; a
    query with no such position (left padding) attends to itself, so no softmax row is empty (its
    output is never used for a real token).
    """
    p, c = prompt_mask.shape[1], completion_mask.shape[1]
    device = prompt_mask.device
    pm, cm = prompt_mask.bool(), completion_mask.bool()
    eye_p = torch.eye(p, dtype=torch.bool, device=device)
    prompt = (torch.ones(p, p, dtype=torch.bool, device=device).tril()[None] & pm[:, None, :]) | eye_p
    causal_c = torch.ones(c, c, dtype=torch.bool, device=device).tril()
    own = causal_c[None] & cm[:, None, :]
    shared = pm.index_select(0, group)[:, None, :].expand(-1, c, -1)
    empty = ~(shared.any(-1) | own.any(-1))  # [N, C]: only with an all-padding prompt
    own = own | (torch.eye(c, dtype=torch.bool, device=device)[None] & empty[:, :, None])
    return prompt[:, None], torch.cat([shared, own], dim=2)[:, None]


def _attend(dims: ModelDims, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
            ) -> torch.Tensor:
    """q [B, Lq, heads, D], k/v [B, Lk, kv_heads, D] -> [B, Lq, heads * D]."""
    groups = dims.heads // dims.kv_heads
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2).repeat_interleave(groups, dim=1),
        v.transpose(1, 2).repeat_interleave(groups, dim=1), attn_mask=mask, scale=dims.head_dim ** -0.5)
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[1], dims.q_size)


def _layer(dims: ModelDims, fns: tuple[Callable, Callable], layer: nn.Module, shape: tuple[int, int, int, int],
           group: torch.Tensor, masks: tuple[torch.Tensor, torch.Tensor], cos: torch.Tensor, sin: torch.Tensor,
           x: torch.Tensor) -> torch.Tensor:
    """One decoder layer over the prompt tokens [U * P] and completion tokens [N * C], stacked."""
    u, p, n, c = shape
    attn, mlp = layer.self_attn, layer.mlp
    pre, post = fns
    q, k, v = pre(x, layer.input_layernorm.weight, _group((attn.q_proj, attn.k_proj, attn.v_proj)), cos, sin)
    split = u * p
    qp, kp, vp = (t[:split].view(u, p, *t.shape[1:]) for t in (q, k, v))
    qc, kc, vc = (t[split:].view(n, c, *t.shape[1:]) for t in (q, k, v))
    out_p = _attend(dims, qp, kp, vp, masks[0])
    keys = torch.cat([kp.index_select(0, group), kc], dim=1)
    values = torch.cat([vp.index_select(0, group), vc], dim=1)
    out_c = _attend(dims, qc, keys, values, masks[1])
    attn_out = torch.cat([out_p.reshape(split, -1), out_c.reshape(n * c, -1)])
    return post(x, attn_out, _linear(attn.o_proj), layer.post_attention_layernorm.weight,
                _group((mlp.gate_proj, mlp.up_proj)), _linear(mlp.down_proj))


def checkpointing(model: nn.Module) -> bool:
    """Whether gradient checkpointing is on anywhere in `model`: the `gradient_checkpointing` flag
    transformers sets on each module it wraps, which both its properties read (transformers 5
    renamed `is_gradient_checkpointing` to `is_activation_checkpointing`; the old name warns, and
    goes in v6, where a getattr of it with a default would say False)."""
    return any(getattr(module, "gradient_checkpointing", False) is True for module in model.modules())


def prefix_shared_logprobs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           prompt_length: int, temperature: float = 1.0, *, chunk_tokens: int = 2048,
                           groups: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Log-probability of each completion token (positions from `prompt_length` on): [N, C] float32.

    Positions follow the attention mask (left padding), as in trainer.grpo.token_logps. With
    gradient checkpointing enabled on the model (and gradients on), each layer is recomputed in
    the backward pass instead of keeping its activations. `groups`: prompt_groups' result computed
    beforehand (its device sync cannot happen inside a CUDA graph capture: trainer/train_graph.py).
    """
    lm = causal_lm(model)
    dims = model_dims(model)
    body = lm.model
    n, length = input_ids.shape
    c, p = length - prompt_length, prompt_length
    starts, group = groups if groups is not None else prompt_groups(input_ids, attention_mask, p)
    u = int(starts.numel())
    prompt_ids, prompt_mask = input_ids[starts, :p], attention_mask[starts, :p]
    completion_ids, completion_mask = input_ids[:, p:], attention_mask[:, p:]
    prompt_pos = (prompt_mask.long().cumsum(-1) - 1).clamp(min=0)
    completion_pos = ((prompt_mask.long().sum(-1).index_select(0, group)[:, None]
                       + completion_mask.long().cumsum(-1)) - 1).clamp(min=0)
    positions = torch.cat([prompt_pos.reshape(-1), completion_pos.reshape(-1)])
    weight = body.embed_tokens.weight
    cos, sin = rope_tables(dims, length, input_ids.device, weight.dtype)
    cos, sin = cos.index_select(0, positions), sin.index_select(0, positions)
    masks = _masks(prompt_mask, completion_mask, group)
    x = F.embedding(torch.cat([prompt_ids.reshape(-1), completion_ids.reshape(-1)]), weight)
    fns = _layer_fns(dims, input_ids.device)
    checkpointed = checkpointing(lm) and torch.is_grad_enabled() and lm.training
    shape = (u, p, n, c)
    for layer in body.layers:
        step = partial(_layer, dims, fns, layer, shape, group, masks, cos, sin)
        if checkpointed:
            x = torch.utils.checkpoint.checkpoint(step, x, use_reentrant=False)
        else:
            x = step(x)
    # Position P-1 (the prompt's last token, shared by the group) predicts completion token 0,
    # completion position j predicts token j + 1.
    last = x[:u * p].view(u, p, -1)[:, -1].index_select(0, group)[:, None]
    hidden = torch.cat([last, x[u * p:].view(n, c, -1)[:, :-1]], dim=1)
    hidden = rms_norm(hidden, body.norm.weight, dims.eps)
    head = lm.get_output_embeddings().weight
    return head_logprobs(hidden.reshape(n * c, -1), head, completion_ids.reshape(-1), temperature,
                         chunk_tokens).view(n, c)


def held_weights() -> tuple:
    """The cached stacked base weights (a captured graph reads them: it keeps them alive)."""
    return tuple(_FUSED_BASE.values())


def fast_or_plain_logprobs(model: nn.Module) -> Callable[..., torch.Tensor] | None:
    """prefix_shared_logprobs for a supported model on CUDA, else None (the caller's own path)."""
    device = next(model.parameters()).device
    if device.type == "cuda" and fast_logprobs_supported(model):
        return prefix_shared_logprobs
    return None

