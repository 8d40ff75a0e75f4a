"""A reward function that fails when called: a user's reward whose service is down.

    rewards: [{function: "tests.slurm.failing_reward:unreachable", weight: 1.0}]

It imports cleanly (the trainer loads rewards at start), so the run starts and the trainer
raises at step 1's scoring. The message is coloured, as a logging library would write it, so
whatever shows the failure has to make it safe.
"""

from __future__ import annotations

MESSAGE = "\x1b[31mreward service unreachable\x1b[0m: connection refused"
SHOWN = "RuntimeError: reward service unreachable: connection refused"  # the cause, made safe


def unreachable(prompts: list[str], completions: list[str], answers: list[str]) -> list[float]:
    raise RuntimeError(MESSAGE)
