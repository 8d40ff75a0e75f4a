"""What depends only on the step: the learning-rate schedule and the order of the prompts.

Both are pure functions of (config, step), never of where a session started or stopped, which is
what makes "3 steps + resume + 3 steps" equal "6 steps" bit for bit.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence, TypeVar

import torch

from trainer.config import OptimConfig

T = TypeVar("T")


def lr_lambda(opt: OptimConfig, schedule_steps: int, num_iterations: int) -> Callable[[int], float]:
    """Multiplier of the learning rate at optimizer step s (0-based).

    The horizon is the run's original target (`schedule_steps` training steps, each of
    `num_iterations` optimizer steps); steps past it keep the final value. Warmup rises linearly
    to 1 over `warmup_steps`, reaching it at the end of the warmup (never 0 at the first step).
    """
    warmup = opt.warmup_steps * num_iterations
    horizon = max(schedule_steps * num_iterations, 1)
    floor = opt.min_lr_ratio
    kind = opt.lr_scheduler_type

    def multiplier(s: int) -> float:
        if kind != "constant" and s < warmup:
            return (s + 1) / (warmup + 1)
        if kind in ("constant", "constant_with_warmup"):
            return 1.0
        progress = min(max((s - warmup) / max(horizon - warmup, 1), 0.0), 1.0)
        if kind == "linear":
            return floor + (1 - floor) * (1 - progress)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier


def build_scheduler(optimizer: torch.optim.Optimizer, opt: OptimConfig, schedule_steps: int,
                    num_iterations: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(opt, schedule_steps, num_iterations))


class DataOrder:
    """An endless stream of dataset indices: epoch e is a permutation seeded by (seed, e).

    Position p (prompts consumed by the whole run) maps to epoch p // n, offset p % n, so the
    stream can be entered anywhere without replaying it.
    """

    def __init__(self, size: int, seed: int) -> None:
        if size <= 0:
            raise ValueError("empty dataset")
        self.size = size
        self.seed = seed
        self._cache: dict[int, list[int]] = {}

    def epoch(self, e: int) -> list[int]:
        if e not in self._cache:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + e)
            self._cache = {e: torch.randperm(self.size, generator=g).tolist()}
        return self._cache[e]

    def indices(self, position: int, count: int) -> list[int]:
        return [self.epoch(p // self.size)[p % self.size] for p in range(position, position + count)]


def rank_micro_batches(items: Sequence[T], *, rank: int, world_size: int, micro_batches: int,
                       per_micro_batch: int) -> list[list[T]]:
    """This rank's micro-batches of one step's global batch (rank-interleaved, in order)."""
    out = []
    for m in range(micro_batches):
        start = (m * world_size + rank) * per_micro_batch
        out.append(list(items[start : start + per_micro_batch]))
    return out
