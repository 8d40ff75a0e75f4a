"""GRPO as small functions with tensors in and out, joined by one `Batch` of episodes.

    batch = rollout(model, tokenizer, examples, ...)        sample G completions per prompt
    score(batch, rewards)                                   reward functions -> batch.rewards
    batch.advantages = group_advantages(batch.reward, G, scale_rewards)
    old/ref log-probs (no grad) -> batch.old_logps, batch.ref_logps
    stats = policy_update(model, optimizer, scheduler, [batch], ...)   loss, clip, step

Rollout and generation sit behind `rollout` so that generation can be made faster without
touching the rest.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from trainer import train_graph
from trainer.data import Example
from trainer.fast_generation import fast_or_plain
from trainer.logprobs import completion_logprobs
from trainer.qwen2_decode import UnsupportedModel
from trainer.qwen2_train import (
    adapters_off, fast_or_plain_logprobs, held_weights, prefix_shared_logprobs, prompt_groups,
)

RewardFn = Callable[[list[str], list[str], list[str]], list[float]]
GRAPH_WIDTH = 64  # a captured training micro-batch's prompt and completion widths are multiples of this
NO_GRAD_CHUNK_FACTOR = 4  # frozen_logps on the CUDA fast path: sequences per forward, x forward_batch_size


@dataclass
class Batch:
    """One rollout: `len(prompts) * G` sequences, each a left-padded prompt and its completion."""

    prompts: list[str]  # one per sequence (each prompt repeated G times)
    answers: list[str]  # gold answers, normalised (what the reward functions compare with)
    completions: list[str]
    input_ids: torch.Tensor  # [N, P + C]
    attention_mask: torch.Tensor  # [N, P + C]
    completion_mask: torch.Tensor  # [N, C]: 1 on completion tokens up to and including EOS
    prompt_length: int  # P
    truncated: torch.Tensor  # [N] bool: no EOS within max_completion_length
    rewards: torch.Tensor | None = None  # [N, R] one column per reward function
    reward: torch.Tensor | None = None  # [N] weighted sum
    advantages: torch.Tensor | None = None  # [N]
    old_logps: torch.Tensor | None = None  # [N, C] when num_iterations > 1
    ref_logps: torch.Tensor | None = None  # [N, C] when beta > 0
    generation_tokens: int = 0

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    def slice(self, start: int, stop: int) -> "Batch":
        def cut(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[start:stop]

        return Batch(
            prompts=self.prompts[start:stop], answers=self.answers[start:stop],
            completions=self.completions[start:stop], input_ids=self.input_ids[start:stop],
            attention_mask=self.attention_mask[start:stop],
            completion_mask=self.completion_mask[start:stop], prompt_length=self.prompt_length,
            truncated=self.truncated[start:stop], rewards=cut(self.rewards), reward=cut(self.reward),
            advantages=cut(self.advantages), old_logps=cut(self.old_logps),
            ref_logps=cut(self.ref_logps),
        )

    def chunks(self, size: int) -> Iterator["Batch"]:
        for start in range(0, self.size, size):
            yield self.slice(start, min(start + size, self.size))


@dataclass
class LossStats:
    loss: float
    kl: float  # mean per-token KL to the reference (0 when beta == 0)
    clip_low: float  # fraction of tokens clipped at 1 - epsilon (negative advantage)
    clip_high: float  # fraction clipped at 1 + epsilon_high (positive advantage)
    ratio_mean: float
    ratio_min: float
    ratio_max: float
    tokens: int

    @classmethod
    def of(cls, values: torch.Tensor) -> LossStats:
        """From `stats_tensor`'s eight values (one read from the GPU)."""
        loss, kl, low, high, mean, lowest, highest, tokens = values.tolist()
        return cls(loss, kl, low, high, mean, lowest, highest, int(tokens))


# ---------------------------------------------------------------- rollout and rewards


def rollout(
    model: torch.nn.Module,
    tokenizer,
    examples: Sequence[Example],
    prompts: Sequence[str],
    *,
    num_generations: int,
    max_prompt_length: int,
    max_completion_length: int,
    temperature: float,
    top_p: float,
    generator: torch.Generator,
) -> Batch:
    """Sample `num_generations` completions of every prompt with the policy (adapter on)."""
    repeated = [p for p in prompts for _ in range(num_generations)]
    # On CUDA a Qwen2 policy samples through the CUDA-graph engine; elsewhere the plain generate.
    out = fast_or_plain(model)(
        model, tokenizer, repeated, max_new_tokens=max_completion_length, do_sample=True,
        temperature=temperature, top_p=top_p, generator=generator,
        max_prompt_length=max_prompt_length,
    )
    answers = [ex.gold for ex in examples for _ in range(num_generations)]
    input_ids = torch.cat([out.prompt_ids, out.completion_ids], dim=1)
    attention_mask = torch.cat([out.prompt_mask, out.completion_mask], dim=1)
    return Batch(
        prompts=repeated, answers=answers, completions=list(out.texts), input_ids=input_ids,
        attention_mask=attention_mask, completion_mask=out.completion_mask,
        prompt_length=out.prompt_ids.shape[1], truncated=torch.tensor(out.truncated, dtype=torch.bool),
        generation_tokens=out.completion_tokens,
    )


def score(batch: Batch, reward_fns: Sequence[RewardFn], weights: Sequence[float]) -> None:
    """Fill `batch.rewards` (one column per function) and `batch.reward` (their weighted sum)."""
    columns = []
    for fn in reward_fns:
        values = fn(list(batch.prompts), list(batch.completions), list(batch.answers))
        if len(values) != batch.size:
            raise ValueError(f"reward function {fn!r} returned {len(values)} values for {batch.size}")
        columns.append(torch.tensor([float(v) for v in values], dtype=torch.float32))
    batch.rewards = torch.stack(columns, dim=1)
    batch.reward = batch.rewards @ torch.tensor(list(weights), dtype=torch.float32)


def group_advantages(reward: torch.Tensor, num_generations: int, scale_rewards: str) -> torch.Tensor:
    """(r - group mean), divided by the group's std ("group"), the batch's ("batch") or 1 ("none")."""
    grouped = reward.view(-1, num_generations)
    centred = (grouped - grouped.mean(dim=1, keepdim=True)).view(-1)
    if scale_rewards == "group":
        std = grouped.std(dim=1, keepdim=True).expand_as(grouped).reshape(-1)
    elif scale_rewards == "batch":
        std = reward.std().expand_as(reward)
    else:
        return centred
    return centred / (std + 1e-4)


# ---------------------------------------------------------------- log-probs and the loss


def token_logps(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
    prompt_length: int, temperature: float, groups: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Log-probability of each completion token under `model`: [N, C] (float32). `groups`: the
    prompt groups of the CUDA fast path, found beforehand (qwen2_train.prompt_groups)."""
    if input_ids.is_cuda:
        # Qwen2 (+ LoRA), one process: each prompt once per group, fused layers, chunked head
        # (trainer/qwen2_train.py). Otherwise the model's own forward without a float32
        # [N, T, vocab] tensor (151,936 columns for Qwen2.5).
        fast = fast_or_plain_logprobs(model)
        if fast is not None:
            return fast(model, input_ids, attention_mask, prompt_length, temperature, groups=groups)
        return completion_logprobs(model, input_ids, attention_mask, prompt_length, temperature)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False).logits
    logits = logits[:, prompt_length - 1 : -1].float() / temperature
    targets = input_ids[:, prompt_length:]
    return torch.gather(F.log_softmax(logits, dim=-1), 2, targets.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def frozen_logps(
    model: torch.nn.Module, batch: Batch, temperature: float, chunk: int, *, reference: bool
) -> torch.Tensor:
    """Log-probs without gradients: the current policy, or the reference (adapter disabled)."""
    fast = batch.input_ids.is_cuda and fast_or_plain_logprobs(model) is not None
    if fast:
        # Without gradients the fast path keeps no activations: 4x the sequences per forward
        # costs little memory and launches a quarter of the kernels.
        chunk *= NO_GRAD_CHUNK_FACTOR

    def run(ctx: contextlib.AbstractContextManager, logps: Callable = token_logps) -> torch.Tensor:
        with ctx:
            return torch.cat([logps(model, part.input_ids, part.attention_mask, part.prompt_length, temperature)
                              for part in batch.chunks(chunk)], dim=0)

    if not reference:
        return run(contextlib.nullcontext())
    # The reference policy is the base model, with no second copy in memory: the fast path skips
    # the adapters itself; otherwise peft disables them.
    if fast:
        try:
            return run(adapters_off(), prefix_shared_logprobs)
        except UnsupportedModel:  # a merged adapter: only peft can take it out
            pass
    return run(model.disable_adapter())


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss_type: str,
    epsilon: float,
    epsilon_high: float,
    beta: float,
    max_completion_length: int,
    n_sequences: int | None = None,
    n_tokens: int | None = None,
) -> tuple[torch.Tensor, LossStats]:
    """The clipped GRPO surrogate (+ beta * KL) over one chunk, and its statistics (read back from
    the GPU now: see grpo_loss_lazy)."""
    loss, stats = grpo_loss_lazy(
        logps, old_logps, ref_logps, advantages, mask, loss_type=loss_type, epsilon=epsilon,
        epsilon_high=epsilon_high, beta=beta, max_completion_length=max_completion_length,
        n_sequences=n_sequences, n_tokens=n_tokens)
    return loss, LossStats.of(stats())


def grpo_loss_lazy(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss_type: str,
    epsilon: float,
    epsilon_high: float,
    beta: float,
    max_completion_length: int,
    n_sequences: int | None = None,
    n_tokens: int | torch.Tensor | None = None,
) -> tuple[torch.Tensor, Callable[[], torch.Tensor]]:
    """The clipped GRPO surrogate (+ beta * KL) over one chunk of sequences.

    Normalisation (as TRL): grpo = mean over sequences of each sequence's token mean; dr_grpo =
    token sum / (sequences * max_completion_length); dapo = token sum / token count. When the
    batch is split into chunks, pass the whole batch's `n_sequences` and `n_tokens` so that the
    chunks' losses add up to the batch's loss (`n_tokens` may be a float32 tensor holding the
    count, as a captured micro-batch has it). The statistics come as a function returning
    `stats_tensor` (LossStats.of reads it): reading them waits for the GPU, which is best left
    until after the backward passes.
    """
    mask = mask.to(logps.dtype)
    ratio = torch.exp(logps - old_logps)
    adv = advantages.unsqueeze(1)
    per_token = -torch.min(ratio * adv, torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high) * adv)
    kl = torch.zeros_like(logps)
    if beta > 0:
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1  # k3 estimator, >= 0
        per_token = per_token + beta * kl
    n_seq = n_sequences if n_sequences is not None else logps.shape[0]
    n_tok = n_tokens if n_tokens is not None else int(mask.sum())
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).sum() / n_seq
    elif loss_type == "dr_grpo":
        loss = (per_token * mask).sum() / (n_seq * max_completion_length)
    elif loss_type == "dapo":
        loss = (per_token * mask).sum() / (n_tok.clamp(min=1) if isinstance(n_tok, torch.Tensor) else max(n_tok, 1))
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}")
    return loss, partial(stats_tensor, loss.detach(), ratio.detach(), adv, kl.detach(), mask, epsilon, epsilon_high)


@torch.no_grad()
def stats_tensor(loss, ratio, adv, kl, mask, epsilon, epsilon_high) -> torch.Tensor:
    """LossStats' eight values as one float32 tensor, without waiting for the GPU: loss, mean KL,
    clipped fractions, ratio mean / min / max over completion tokens (1 when there are none),
    token count."""
    total = mask.sum()
    count = total.clamp(min=1)
    low = ((ratio < 1 - epsilon) & (adv < 0)).to(mask.dtype)
    high = ((ratio > 1 + epsilon_high) & (adv > 0)).to(mask.dtype)
    on = mask.bool()
    one = torch.ones((), dtype=ratio.dtype, device=ratio.device)
    some = on.any()
    values = (loss, (kl * mask).sum() / count, (low * mask).sum() / count, (high * mask).sum() / count,
              torch.where(some, (ratio * mask).sum() / count, one),
              torch.where(some, ratio.masked_fill(~on, float("inf")).min(), one),
              torch.where(some, ratio.masked_fill(~on, float("-inf")).max(), one), total)
    return torch.stack([v.to(torch.float32) for v in values])


# ---------------------------------------------------------------- the update


@dataclass
class UpdateStats:
    loss: float
    kl: float
    clip_low: float
    clip_high: float
    ratio_mean: float
    ratio_min: float
    ratio_max: float
    grad_norm: float
    learning_rate: float


def policy_update(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batches: Sequence[Batch],
    *,
    loss_type: str,
    epsilon: float,
    epsilon_high: float,
    beta: float,
    temperature: float,
    max_completion_length: int,
    forward_batch_size: int,
    max_grad_norm: float,
    no_sync: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> UpdateStats:
    """One optimizer step over `batches` (gradient accumulation: each batch weighs 1/len).

    `model` is what the gradients flow through (the DDP wrapper under torchrun); `no_sync`
    skips DDP's all-reduce on every backward but the last.
    """
    parts = [(i, c) for i, b in enumerate(batches) for c in b.chunks(forward_batch_size)]
    fast = parts[0][1].input_ids.is_cuda and fast_or_plain_logprobs(model) is prefix_shared_logprobs
    graphs = train_graph.MicroBatchGraphs.of(model) if fast and train_graph.usable(model) else None
    # A captured micro-batch accumulates into the gradient tensors it was captured with.
    optimizer.zero_grad(set_to_none=graphs is None)
    # What every replay relies on, read once (a walk over the model's modules: host time that
    # overlaps whatever the GPU still runs, e.g. the reference pass, as it comes before any sync).
    current = graphs.current() if graphs is not None else None
    tokens = [int(b.completion_mask.sum()) for b in batches]  # once per batch: a GPU sync each
    settings = [{"loss_type": loss_type, "epsilon": epsilon, "epsilon_high": epsilon_high, "beta": beta,
                 "max_completion_length": max_completion_length, "n_sequences": batches[b].size} for b, _ in parts]
    # Every micro-batch's prompt groups first (a device sync each), so that the micro-batches (or
    # their replays) are queued back to back.
    groups = [prompt_groups(c.input_ids, c.attention_mask, c.prompt_length) if fast else None for _, c in parts]
    replays = [_graph_inputs(model, chunk, temperature, settings[i], tokens[b], len(batches), groups[i])
               if graphs is not None else None for i, (b, chunk) in enumerate(parts)]
    pending: list[torch.Tensor] = []  # stats_tensor per micro-batch, read after every backward
    for i, (b, chunk) in enumerate(parts):
        if replays[i] is not None:
            replayed = graphs.run(*replays[i], held_weights, current=current)
            if replayed is not None:
                pending.append(replayed)
                continue
        with contextlib.nullcontext() if i == len(parts) - 1 else no_sync():
            logps = token_logps(model, chunk.input_ids, chunk.attention_mask,
                                chunk.prompt_length, temperature, groups=groups[i])
            # num_iterations == 1: the sampling policy is the current one, so the ratio is exactly 1
            old = chunk.old_logps if chunk.old_logps is not None else logps.detach()
            loss, stats = grpo_loss_lazy(logps, old, chunk.ref_logps, chunk.advantages, chunk.completion_mask,
                                         n_tokens=tokens[b], **settings[i])
            (loss / len(batches)).backward()
        pending.append(stats())  # no GPU sync: the values are read after every backward
    params = current[0] if current is not None else [p for p in model.parameters() if p.requires_grad]
    limit = max_grad_norm if max_grad_norm > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, limit)
    learning_rate = optimizer.param_groups[0]["lr"]
    # The clip and the optimizer step are queued behind the backward passes; only then are the
    # statistics and the norm read (one wait for the GPU, with the step's launches already done).
    optimizer.step()
    scheduler.step()
    found = [LossStats.of(stats) for stats in pending]
    loss_total = sum(st.loss / len(batches) for st in found)  # st.loss is float(loss)
    return _merge(found, loss_total, float(grad_norm), learning_rate)


def _graph_inputs(model: torch.nn.Module, chunk: Batch, temperature: float, settings: dict, n_tokens: int,
                  n_batches: int, groups: tuple[torch.Tensor, torch.Tensor]
                  ) -> tuple[tuple, Callable, dict[str, torch.Tensor]] | None:
    """(key, body, inputs) for replaying one micro-batch's forward, loss and backward from a CUDA
    graph (trainer/train_graph.py); None for old log-probs from an earlier iteration (eager)."""
    if chunk.old_logps is not None:
        return None
    starts, group = groups
    device = chunk.input_ids.device
    # Prompts left-padded and completions right-padded to multiples of GRAPH_WIDTH with masked-out
    # tokens: a few shapes serve rollouts whose longest prompt and longest completion vary (a real
    # dataset's prompts differ in length at every step, and a captured shape is kept per exact
    # width). Positions follow the attention mask, so the masked tokens move no real token and add
    # nothing to the loss or the gradients; the prompts' extra width is computed once per group.
    lead = -chunk.prompt_length % GRAPH_WIDTH  # columns short of the next multiple
    prompt_length = chunk.prompt_length + lead
    pad = -chunk.completion_mask.shape[1] % GRAPH_WIDTH

    def padded(t: torch.Tensor, left: int = 0) -> torch.Tensor:
        return F.pad(t, (left, pad)) if left or pad else t

    inputs = {"input_ids": padded(chunk.input_ids, lead), "attention_mask": padded(chunk.attention_mask, lead),
              "completion_mask": padded(chunk.completion_mask), "advantages": chunk.advantages, "starts": starts,
              "group": group, "n_tokens": torch.tensor(float(n_tokens), device=device),
              "batches": torch.tensor(float(n_batches), device=device)}
    if chunk.ref_logps is not None:
        inputs["ref_logps"] = padded(chunk.ref_logps)
    key = (tuple(inputs["input_ids"].shape), prompt_length, int(starts.numel()), "ref_logps" in inputs,
           temperature, tuple(sorted(settings.items())))

    def body(static: dict[str, torch.Tensor]) -> torch.Tensor:
        logps = prefix_shared_logprobs(model, static["input_ids"], static["attention_mask"], prompt_length,
                                       temperature, groups=(static["starts"], static["group"]))
        loss, stats = grpo_loss_lazy(logps, logps.detach(), static.get("ref_logps"), static["advantages"],
                                     static["completion_mask"], n_tokens=static["n_tokens"], **settings)
        (loss / static["batches"]).backward()
        return stats()

    return key, body, inputs


def _merge(found: list[LossStats], loss: float, grad_norm: float, lr: float) -> UpdateStats:
    tokens = max(sum(s.tokens for s in found), 1)

    def mean(name: str) -> float:
        return sum(getattr(s, name) * s.tokens for s in found) / tokens

    return UpdateStats(
        loss=loss, kl=mean("kl"), clip_low=mean("clip_low"), clip_high=mean("clip_high"),
        ratio_mean=mean("ratio_mean"), ratio_min=min(s.ratio_min for s in found),
        ratio_max=max(s.ratio_max for s in found), grad_norm=grad_norm, learning_rate=lr,
    )
