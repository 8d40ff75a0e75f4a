"""Per-token log-probs of completion tokens without a float32 [batch, length, vocab] tensor.

    from trainer.logprobs import completion_logprobs
    logps = completion_logprobs(model, input_ids, attention_mask, prompt_length, temperature)  # [N, C]

Same arguments and result as trainer.grpo.token_logps (float32, gradients flow to the adapter),
but: the model is asked only for the logits that predict completion tokens (`logits_to_keep`),
and log-softmax is taken one sequence at a time in float32 by `selective_logprobs`, whose
backward recomputes the softmax from the model's own (bf16) logits instead of keeping float32
copies. With Qwen2.5's 151,936-token vocabulary, 16 sequences of 256 completion tokens hold
1.2 GB of bf16 logits; the naive float32 log-softmax would add three float32 copies (7.5 GB)
and keep them for the backward pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


class _SelectiveLogprobs(torch.autograd.Function):
    """logits [N, L, V] (L >= C), targets [N, C] -> log_softmax(logits[:, :C] / T)[target], float32."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor, temperature: float,
                rows: int) -> torch.Tensor:
        n, length = targets.shape
        out = torch.empty(n, length, dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(out)
        for start in range(0, n, rows):
            x = logits[start:start + rows, :length].float() / temperature
            lse[start:start + rows] = torch.logsumexp(x, dim=-1)
            picked = x.gather(-1, targets[start:start + rows, :, None]).squeeze(-1)
            out[start:start + rows] = picked - lse[start:start + rows]
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature, ctx.rows = temperature, rows
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        logits, targets, lse = ctx.saved_tensors
        temperature, rows = ctx.temperature, ctx.rows
        n, length = targets.shape
        grad_logits = torch.zeros_like(logits)
        for start in range(0, n, rows):
            stop = start + rows
            g = grad[start:stop, :, None].float()
            # d(x_t - logsumexp(x))/dx = onehot(t) - softmax(x), and x = logits / T
            d = -(logits[start:stop, :length].float() / temperature - lse[start:stop, :, None]).exp() * g
            d.scatter_add_(-1, targets[start:stop, :, None], g)
            grad_logits[start:stop, :length] = (d / temperature).to(logits.dtype)
        return grad_logits, None, None, None


def selective_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                       rows: int = 1) -> torch.Tensor:
    """log_softmax(logits[:, :C] / temperature) at `targets` [N, C], `rows` sequences at a time."""
    return _SelectiveLogprobs.apply(logits, targets, temperature, rows)


def _pick_and_lse(logits: torch.Tensor, targets: torch.Tensor, temperature: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(log_softmax(logits / T)[target], logsumexp(logits / T)) per row, float32."""
    x = logits.float() / temperature
    lse = torch.logsumexp(x, dim=-1)
    return x.gather(-1, targets[:, None]).squeeze(-1) - lse, lse


def _logits_grad(logits: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor, grad: torch.Tensor,
                 temperature: float) -> torch.Tensor:
    """d(picked log-prob)/d logits * grad = (onehot(target) - softmax(logits / T)) * grad / T."""
    p = (logits.float() / temperature - lse[:, None]).exp()
    columns = torch.arange(logits.shape[-1], device=logits.device)
    onehot = (columns[None, :] == targets[:, None]).to(p.dtype)
    return ((onehot - p) * (grad / temperature)[:, None]).to(logits.dtype)


_FUSED: dict[str, object] = {}


def _fused(name: str, fn):
    """On CUDA, `fn` compiled into one kernel per call site (reads the bf16 logits once)."""
    if name not in _FUSED:
        import os

        compile_it = os.environ.get("RLTUI_COMPILE_TRAIN", "1") != "0"
        _FUSED[name] = torch.compile(fn, fullgraph=True) if compile_it else fn
    return _FUSED[name]


class _HeadLogprobs(torch.autograd.Function):
    """hidden [M, H] @ weight[V, H].T -> log_softmax(. / T)[targets] [M] float32, `chunk` rows at a time.

    Neither pass keeps a [M, V] tensor. When only `hidden` needs a gradient (a frozen LM head,
    the LoRA case) the forward also forms d logp / d hidden per chunk and the backward only scales
    it; otherwise the backward recomputes each chunk's logits.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                temperature: float, chunk: int) -> torch.Tensor:
        m = hidden.shape[0]
        out = torch.empty(m, dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(out)
        pick = _fused("pick", _pick_and_lse) if hidden.is_cuda else _pick_and_lse
        dlogits = _fused("grad", _logits_grad) if hidden.is_cuda else _logits_grad
        # With only `hidden` needing a gradient, d logp / d hidden (a [M, H] tensor) is formed here
        # while each chunk's logits exist, so the backward pass only scales it: no second product.
        early = ctx.needs_input_grad[0] and not ctx.needs_input_grad[1]
        dhidden = torch.empty_like(hidden) if early else None
        for start in range(0, m, chunk):
            stop = min(start + chunk, m)
            logits = hidden[start:stop] @ weight.T
            out[start:stop], lse[start:stop] = pick(logits, targets[start:stop], temperature)
            if dhidden is not None:
                ones = torch.ones(stop - start, dtype=torch.float32, device=hidden.device)
                dhidden[start:stop] = dlogits(logits, targets[start:stop], lse[start:stop], ones, temperature) @ weight
            del logits
        ctx.save_for_backward(hidden, weight, targets, lse, dhidden)
        ctx.temperature, ctx.chunk = temperature, chunk
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, targets, lse, dhidden = ctx.saved_tensors
        if dhidden is not None:
            return (dhidden.float() * grad[:, None]).to(hidden.dtype), None, None, None, None
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        dlogits = _fused("grad", _logits_grad) if hidden.is_cuda else _logits_grad
        for start in range(0, hidden.shape[0], ctx.chunk):
            stop = min(start + ctx.chunk, hidden.shape[0])
            h = hidden[start:stop]
            d = dlogits(h @ weight.T, targets[start:stop], lse[start:stop], grad[start:stop].float(), ctx.temperature)
            if grad_hidden is not None:
                grad_hidden[start:stop] = d @ weight
            if grad_weight is not None:
                grad_weight += (d.T @ h).float()
        return grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype), None, None, None


def head_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                  chunk: int = 2048) -> torch.Tensor:
    """log_softmax(hidden @ weight.T / temperature)[targets] per row of `hidden` [M, H]: [M] float32,
    without the [M, vocabulary] logits (a linear cross-entropy, chunked over rows)."""
    return _HeadLogprobs.apply(hidden, weight, targets, temperature, chunk)


def wants_bf16_adapter(model: torch.nn.Module) -> bool:
    """True on CUDA when the frozen weights are bf16 and the trainable ones float32 (peft's default
    for a bf16 model: it keeps adapter weights in float32)."""
    frozen, trainable = set(), set()
    for param in model.parameters():
        if param.device.type != "cuda":
            return False
        (trainable if param.requires_grad else frozen).add(param.dtype)
    return frozen == {torch.bfloat16} and torch.float32 in trainable


@contextlib.contextmanager
def bf16_adapter_compute(model: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """Run the adapter branch in bf16, as mixed-precision training does (TRL/transformers' Trainer
    with bf16=True): autocast, and peft's cast of each LoRA input to float32 switched off.

    The float32 adapter weights (the optimizer's master copy) and their gradients stay float32;
    only the products x @ A and (x A) @ B are computed in bf16 like the rest of the model. Without
    this, peft casts every LoRA input activation to float32 and multiplies in float32: on the
    1.5B benchmark that was about half of a training micro-batch's GPU time (casts, float32 adds
    and float32 GEMMs; docs/benchmarks.md).
    """
    if not enabled:
        yield
        return
    from peft.helpers import disable_input_dtype_casting

    device = next(model.parameters()).device.type
    with torch.autocast(device, dtype=torch.bfloat16), disable_input_dtype_casting(model):
        yield


def completion_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        prompt_length: int, temperature: float = 1.0, rows: int = 1,
                        bf16_adapter: bool | None = None) -> torch.Tensor:
    """Log-probability of each completion token (positions from `prompt_length` on): [N, C] float32.

    Positions follow the attention mask (left padding), as in generation. `model` may be a
    PeftModel or its DDP wrapper: it is called through its own forward. `bf16_adapter`: compute
    the adapter branch in bf16 (`bf16_adapter_compute`); None = when `wants_bf16_adapter(model)`,
    i.e. only on CUDA with a bf16 base, so CPU results are unchanged. The log-softmax is float32
    either way.
    """
    if bf16_adapter is None:
        bf16_adapter = wants_bf16_adapter(model)
    completion = input_ids.shape[1] - prompt_length
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    with bf16_adapter_compute(model, bf16_adapter):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       use_cache=False, logits_to_keep=completion + 1).logits
    return selective_logprobs(logits, input_ids[:, prompt_length:], temperature, rows)
