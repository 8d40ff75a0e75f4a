"""Evaluating one checkpoint: generate for every question, score with the trainer's rewards.

The eval settings that change results (dataset, questions, decoding, rewards, base model) are one
frozen dataclass whose hash decides whether a step already evaluated can be skipped. The batch
size and the timeout only change speed, so they are not part of it.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

from trainer.data import Example
from trainer.rewards import extract_answer, is_correct, is_strict_format, load_reward

SUBSET_SEED = 1234
SAMPLE_SEED = 0
SAMPLE_TEMPERATURE = 1.0


class StepTimeout(Exception):
    """The step ran past --timeout-per-step."""


@dataclass(frozen=True)
class EvalSettings:
    dataset: str
    split: str
    template: str
    base_model: str
    subset_frac: float
    subset_seed: int
    questions: tuple[int, ...]  # indices into the split, sorted
    max_new_tokens: int
    num_samples: int
    temperature: float  # 0.0: greedy (num_samples 1); else sampling with sample_seed
    sample_seed: int
    rewards: tuple[tuple[str, float], ...]  # (function, weight)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def hash(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def for_config_file(self) -> dict[str, Any]:
        """eval_config.yaml: the settings with the question list shortened to its count."""
        out = asdict(self)
        out["questions"] = len(self.questions)
        out["rewards"] = [{"function": f, "weight": w} for f, w in self.rewards]
        out["decoding"] = "greedy" if self.greedy else f"sampling (temperature {self.temperature})"
        out["settings_hash"] = self.hash()
        return out


def subset_indices(total: int, frac: float, seed: int = SUBSET_SEED) -> tuple[int, ...]:
    """The same questions every time for the same (total, frac, seed); at least one."""
    if frac >= 1.0:
        return tuple(range(total))
    k = max(1, math.floor(total * frac))
    return tuple(sorted(random.Random(seed).sample(range(total), k)))


@dataclass
class StepScore:
    records: list[dict[str, Any]]  # one per (question, sample): the lines of completions.jsonl
    metrics: dict[str, Any]  # the consolidated_metrics.csv columns except step and seconds
    reward_means: dict[str, float]  # per reward function
    generation_seconds: float


def evaluate_prompts(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    prompts: Sequence[str],
    settings: EvalSettings,
    *,
    batch_size: int,
    deadline: float | None,
    on_batch: Callable[[int, int], None] | None = None,
) -> StepScore:
    """Generate `num_samples` completions per prompt in batches of `batch_size` sequences, score them.

    `on_batch(done, total)` is called after every batch: the job's keeper reads it as progress.
    """
    import torch

    from trainer.fast_generation import fast_or_plain

    generate = fast_or_plain(model)  # CUDA graphs on a GPU for Qwen2 models, else the plain loop
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(settings.sample_seed)
    jobs = [(q, s) for q in range(len(prompts)) for s in range(settings.num_samples)]
    records: list[dict[str, Any]] = []
    gen_seconds = 0.0
    for start in range(0, len(jobs), batch_size):
        if deadline is not None and time.monotonic() > deadline:
            raise StepTimeout(f"{len(records)} of {len(jobs)} completions done")
        chunk = jobs[start:start + batch_size]
        started = time.monotonic()
        out = generate(model, tokenizer, [prompts[q] for q, _ in chunk],
                       max_new_tokens=settings.max_new_tokens, do_sample=not settings.greedy,
                       temperature=settings.temperature or 1.0, generator=generator,
                       deadline=deadline)
        gen_seconds += time.monotonic() - started
        if out.timed_out:
            raise StepTimeout(f"{len(records)} of {len(jobs)} completions done")
        for (q, s), text, tokens, truncated in zip(chunk, out.texts, out.completion_lengths,
                                                    out.truncated):
            records.append(_record(examples[q], settings.questions[q], s, prompts[q], text,
                                   tokens, truncated))
        if on_batch is not None:
            on_batch(len(records), len(jobs))
    reward_means = _apply_rewards(records, settings)
    return StepScore(records, _metrics(records, settings, gen_seconds), reward_means, gen_seconds)


def _record(example: Example, index: int, sample: int, prompt: str, completion: str,
            tokens: int, truncated: bool) -> dict[str, Any]:
    return {
        "index": index, "sample": sample, "question": example.question, "prompt": prompt,
        "completion": completion, "extracted_answer": extract_answer(completion),
        "gold_answer": example.gold, "correct": is_correct(completion, example.gold),
        "format_ok": is_strict_format(completion), "tokens": tokens, "truncated": truncated,
    }


def _apply_rewards(records: list[dict[str, Any]], settings: EvalSettings) -> dict[str, float]:
    prompts = [r["prompt"] for r in records]
    completions = [r["completion"] for r in records]
    golds = [r["gold_answer"] for r in records]
    for r in records:
        r["rewards"], r["reward"] = {}, 0.0
    means: dict[str, float] = {}
    for function, weight in settings.rewards:
        values = load_reward(function)(prompts, completions, golds)
        for r, v in zip(records, values, strict=True):
            r["rewards"][function] = float(v)
            r["reward"] += weight * float(v)
        means[function] = sum(values) / len(values) if values else 0.0
    return means


def _metrics(records: list[dict[str, Any]], settings: EvalSettings, gen_seconds: float) -> dict[str, Any]:
    n = len(records)
    tokens = sum(r["tokens"] for r in records)
    metrics = {
        "accuracy": sum(r["correct"] for r in records) / n,
        "format_rate": sum(r["format_ok"] for r in records) / n,
        "mean_reward": sum(r["reward"] for r in records) / n,
        "mean_completion_length": tokens / n,
        "n": len(settings.questions),
        "tokens_per_s": tokens / gen_seconds if gen_seconds > 0 else 0.0,
    }
    if settings.num_samples > 1:
        metrics["pass_at_k"] = pass_at_k(records)
    return metrics


def pass_at_k(records: Sequence[dict[str, Any]]) -> float:
    """Fraction of questions with at least one correct sample among their k (k = num_samples)."""
    solved: dict[int, bool] = {}
    for r in records:
        solved[r["index"]] = solved.get(r["index"], False) or bool(r["correct"])
    return sum(solved.values()) / len(solved) if solved else 0.0
