"""The trainer's progress in its own output: one line per logged step, or a bar on a terminal.

Usage:
    progress = Progress(start=0, target=150, enabled=d.is_main)
    progress.warming_up(on_gpu)  # once, before the first step: a line saying why it is slow
    progress.finished(step)      # after every step, logged or not
    progress.step(record)        # a step_record of trainer.rl_runner, at each log interval
    progress.close()

Where stdout is not a terminal (a job's output.log, `logs -f`, the TUI's live log, a pipe) each
logged step is one plain line, flushed at once:

    step 12/150  reward 0.412  loss 0.0213  kl 0.00120  lr 1.00e-05  3.21 s/step  ETA 7m23s

On a terminal a tqdm bar shows the same numbers. Seconds per step are this session's wall time
since its first step ended, divided by the steps since (saves and logging included, so the ETA is
honest). The first step is left out: it carries the warm-up (on a GPU the decode engine's
compiles, timings and graph captures: 1-2.5 minutes on a box the first time, ~20 s for a later
start once the compile caches are on disk, against ~1.4 s for a step: docs/benchmarks.md, issue 18
and "Session 29"). Counted in, a 96 s warm-up and 1.4 s steps made step 10's ETA 16 minutes for 2 minutes
of work, and step 50's still 2.3 times too long. The first step's line gives its own time instead:

    step 1/150  reward 0.398  loss 0.0187  kl 0  lr 1.00e-05  first step 96.2 s (warm-up), ETA from the next
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m"
    return f"{m}m{s:02d}s" if m else f"{s}s"


def step_fields(record: dict[str, Any]) -> dict[str, str]:
    """The numbers a person reads first, formatted (absent ones left out)."""
    out = {}
    for key, label, fmt in (("reward_mean", "reward", "{:.3f}"), ("loss", "loss", "{:.4g}"),
                            ("kl", "kl", "{:.3g}"), ("learning_rate", "lr", "{:.2e}")):
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[label] = fmt.format(value)
    return out


class Progress:
    def __init__(self, *, start: int, target: int, enabled: bool = True,
                 stream: TextIO | None = None, clock=time.monotonic) -> None:
        self.start, self.target, self.enabled = start, target, enabled
        self.stream = stream if stream is not None else sys.stdout
        self.clock = clock
        self.began = clock()
        self.first: tuple[int, float] | None = None  # (step, when it ended): this session's first
        self.bar = None
        if enabled and _isatty(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=target, initial=start, file=self.stream, unit="step",
                            dynamic_ncols=True, desc="train")

    def warming_up(self, on_gpu: bool) -> None:
        """Before a session's first step on a GPU: one line saying why nothing comes for a while
        (the decode engine's compiles, timings and captures: docs/benchmarks.md, issue 18)."""
        if not (self.enabled and on_gpu and self.bar is None and self.start < self.target):
            return
        self.stream.write(f"step {self.start + 1}/{self.target} under way: a session's first step on a GPU "
                          "compiles the kernels and captures the decode graphs (for a 1.5B model on an "
                          "H100 or H200: 1-2.5 minutes the first time on a box, ~20 s once its compile "
                          "caches are on disk); s/step and the ETA start after it\n")
        self.stream.flush()

    def finished(self, step: int) -> None:
        """Step `step` has ended (logged or not): the first such call ends the warm-up."""
        if self.first is None:
            self.first = (step, self.clock())

    def seconds_per_step(self, step: int) -> float | None:
        """Wall time per step since this session's first step ended; None until a step after it."""
        if self.first is None or step <= self.first[0]:
            return None
        first_step, ended = self.first
        return (self.clock() - ended) / (step - first_step)

    def line(self, record: dict[str, Any]) -> str:
        step = int(record["step"])
        parts = [f"step {step}/{self.target}"]
        parts += [f"{k} {v}" for k, v in step_fields(record).items()]
        per_step = self.seconds_per_step(step)
        if per_step is not None:
            parts.append(f"{per_step:.2f} s/step")
            parts.append(f"ETA {format_duration(per_step * max(self.target - step, 0))}")
        elif self.first is not None and step == self.first[0] and step < self.target:
            parts.append(f"first step {self.first[1] - self.began:.1f} s (warm-up), ETA from the next")
        return "  ".join(parts)

    def step(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.finished(int(record["step"]))  # (for a caller that does not say so itself)
        if self.bar is not None:
            self.bar.n = int(record["step"])
            self.bar.set_postfix(step_fields(record), refresh=False)
            self.bar.refresh()
            return
        self.stream.write(self.line(record) + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
