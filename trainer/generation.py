"""Batched, left-padded sampling with a KV cache: the rollouts of the trainer, the evaluator's answers.

One function, `generate`, with its own decoding loop rather than `model.generate`, for two reasons:
sampling draws only from the `torch.Generator` it is given, so a rollout is bitwise reproducible
from a saved generator state (exact resume); and a `deadline` can stop a generation between two
tokens, which is how the evaluator enforces its per-step timeout in-process.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch


@dataclass
class GenerationOutput:
    prompt_ids: torch.Tensor  # (B, P) left-padded with the pad id
    prompt_mask: torch.Tensor  # (B, P) 1 on prompt tokens
    completion_ids: torch.Tensor  # (B, T) right-padded with the pad id
    completion_mask: torch.Tensor  # (B, T) 1 on generated tokens, the stopping eos included
    texts: list[str]  # decoded completions, special tokens skipped
    prompt_lengths: list[int]
    completion_lengths: list[int]
    truncated: list[bool]  # stopped by max_new_tokens (or the deadline) before an eos
    timed_out: bool  # the deadline passed before every sequence finished

    @property
    def completion_tokens(self) -> int:
        return sum(self.completion_lengths)


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a completion: the tokenizer's eos and the generation config's."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return sorted(i for i in ids if i is not None)


def sample_next(logits: torch.Tensor, *, do_sample: bool, temperature: float, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """One token per row from float32 logits (B, V): greedy, or temperature + nucleus sampling."""
    if not do_sample:
        return logits.argmax(dim=-1)
    logits = logits / max(temperature, 1e-6)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_logits.softmax(dim=-1) > top_p  # keep the token that crosses top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _cache_argument(model: Any) -> str:
    """transformers 5.24 renamed `past_key_values` to `cache`; 5.17 (the GPU machine) has the old name."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(type(inner).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _returned_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


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
) -> GenerationOutput:
    """Complete every prompt in one left-padded batch.

    Sampling uses `generator` (or a fresh one seeded with `seed`) and nothing else, so the same
    generator state gives the same tokens. `max_prompt_length` keeps the last tokens of longer
    prompts. `deadline` (a time.monotonic() value) stops decoding early and sets `timed_out`.
    """
    device = next(model.parameters()).device
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    prompt_ids, prompt_mask = enc["input_ids"], enc["attention_mask"]
    if max_prompt_length is not None and prompt_ids.shape[1] > max_prompt_length:
        prompt_ids, prompt_mask = prompt_ids[:, -max_prompt_length:], prompt_mask[:, -max_prompt_length:]
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    batch = prompt_ids.shape[0]
    pad_id = tokenizer.pad_token_id
    stop_ids = torch.tensor(eos_token_ids(model, tokenizer) if stop_at_eos else [], device=device,
                            dtype=torch.long)

    mask = prompt_mask
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    cache_arg = _cache_argument(model)
    out = model(input_ids=prompt_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                logits_to_keep=1)
    cache = _returned_cache(out)
    next_pos = positions[:, -1:] + 1
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    tokens: list[torch.Tensor] = []
    alive: list[torch.Tensor] = []
    timed_out = False
    for i in range(max_new_tokens):
        token = sample_next(out.logits[:, -1, :].float(), do_sample=do_sample,
                            temperature=temperature, top_p=top_p, generator=generator)
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        alive.append(~finished)
        tokens.append(token)
        finished = finished | torch.isin(token, stop_ids)
        if i == max_new_tokens - 1 or bool(finished.all()):
            break
        if deadline is not None and time.monotonic() > deadline:
            timed_out = True
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_pos,
                    use_cache=True, **{cache_arg: cache})
        cache = _returned_cache(out)
        next_pos = next_pos + 1

    completion_ids = torch.stack(tokens, dim=1) if tokens else prompt_ids.new_zeros((batch, 0))
    completion_mask = (torch.stack(alive, dim=1) if alive else completion_ids.bool()).long()
    lengths = completion_mask.sum(dim=1).tolist()
    rows = completion_ids.tolist()
    texts = [tokenizer.decode(row[:n], skip_special_tokens=True) for row, n in zip(rows, lengths)]
    truncated = (~finished).tolist()
    return GenerationOutput(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
        completion_mask=completion_mask, texts=texts, prompt_lengths=prompt_mask.sum(dim=1).tolist(),
        completion_lengths=lengths, truncated=truncated, timed_out=timed_out,
    )
