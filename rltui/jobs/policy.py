"""The restart policy of a supervised job: what to do when its process ends.

Pure logic, apart from the spawning code in rltui.jobs.keeper: the keeper describes how a process
ended (`Ending`) and how far the run's checkpoints had got, and the policy answers with a
`Decision` (succeed, stop, fail, or restart after a backoff). The clock is passed in so the
backoff and the whole state machine are tested without sleeping.

Rules (docs/ARCHITECTURE.md, section jobs):
- an end is *abnormal* when the process exited non-zero (and nobody asked it to stop), died by a
  signal, or hung (no progress for the hang timeout);
- with auto-resume on, an abnormal end restarts the run from its latest complete checkpoint, after
  a backoff that doubles each time (capped), at most `max_restarts` times;
- exit code 2 means bad input (flags, config, paths), and exit code 28 a full disk (the trainer
  said which one and how much it needs): a restart would fail the same way, so neither is
  recovered unless the user lists it in `recover_exit_codes`;
- an exit code in `recover_exit_codes` always means "recover", and such restarts do not count
  against `max_restarts` (SkyPilot's recover_on_exit_codes; e.g. a known NCCL error code);
- the policy gives up when two restarts in a row produced no new checkpoint (for a job that
  makes checkpoints; a fetch's restarts are bounded by `max_restarts` alone);
- a restart that is due becomes success when the run's final checkpoint is already saved, and
  failure when a resume needs a checkpoint and there is none yet.
"""

from __future__ import annotations

import signal as _signal
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

from rltui.runs.disk import DISK_FULL_EXIT  # the trainer's exit on a full disk

BAD_INPUT_EXIT = 2
STOPPED_EXIT = 130
NO_PROGRESS_LIMIT = 2


@dataclass(frozen=True)
class RestartSettings:
    """The `restart` block of job.json."""

    auto_resume: bool = False
    max_restarts: int = 3
    backoff_s: float = 5.0
    backoff_factor: float = 2.0
    backoff_max_s: float = 300.0
    recover_exit_codes: tuple[int, ...] = ()
    hang_timeout_s: float = 600.0
    save_hang_timeout_s: float = 1800.0
    stop_grace_s: float = 300.0
    kill_grace_s: float = 30.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "recover_exit_codes", tuple(int(c) for c in self.recover_exit_codes))
        for name in ("max_restarts", "backoff_s", "backoff_max_s", "hang_timeout_s",
                     "save_hang_timeout_s", "stop_grace_s", "kill_grace_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"bad restart setting {name}: {getattr(self, name)!r} (must be >= 0)")
        if self.backoff_factor < 1:
            raise ValueError(f"bad restart setting backoff_factor: {self.backoff_factor!r} (must be >= 1)")

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["recover_exit_codes"] = list(self.recover_exit_codes)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> "RestartSettings":
        d = d or {}
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if "recover_exit_codes" in known:
            known["recover_exit_codes"] = tuple(known["recover_exit_codes"] or ())
        return cls(**known)


@dataclass(frozen=True)
class Ending:
    """How one process of a job ended."""

    exit_code: int | None = None  # None when it died by a signal
    signal: int | None = None
    hung: bool = False
    user_stop: bool = False
    start_error: str | None = None  # the command could not be started at all
    phase: str | None = None  # the trainer's last phase (status.json), when it has one

    @property
    def clean(self) -> bool:
        return self.exit_code == 0 and not self.hung and self.start_error is None

    def describe(self) -> str:
        if self.start_error:
            return f"could not start: {self.start_error}"
        if self.hung:
            return "hung: no progress in its status file for the hang timeout; killed"
        if self.signal is not None:
            return f"killed by {signal_name(self.signal)}"
        if self.exit_code == BAD_INPUT_EXIT:
            return "exit code 2 (bad input: flags, config or paths)"
        if self.exit_code == DISK_FULL_EXIT:
            return f"exit code {DISK_FULL_EXIT} (disk full)"
        return f"exit code {self.exit_code}"


class Action(str, Enum):
    SUCCEED = "succeed"
    STOP = "stop"
    FAIL = "fail"
    RESTART = "restart"


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    delay_s: float = 0.0


@dataclass
class RestartPolicy:
    """Decides, ending after ending, whether a job restarts. One instance per job."""

    settings: RestartSettings
    clock: Callable[[], float] = time.monotonic
    restarts: int = 0  # every restart, the recover-code ones included
    counted_restarts: int = 0  # the ones that count against max_restarts
    no_progress_streak: int = 0
    _checkpoint_at_last_restart: int | None = field(default=None, repr=False)
    _next_start_at: float | None = field(default=None, repr=False)

    def decide(self, ending: Ending, latest_checkpoint: int | None, *, target: int | None = None,
               needs_checkpoint: bool = False, checkpoints: bool = True) -> Decision:
        """What to do after `ending`; `latest_checkpoint` is the run's newest complete step now,
        `target` the run's final step, `needs_checkpoint` whether a restart resumes from one,
        `checkpoints` whether the job makes checkpoints at all (a fetch does not: its restarts are
        bounded by `max_restarts` alone, not by the no-new-checkpoint rule)."""
        if ending.user_stop and not ending.hung:
            if ending.clean and ending.phase == "completed":
                return Decision(Action.SUCCEED, "completed")
            return Decision(Action.STOP, "stopped by the user")
        if ending.clean:
            if ending.phase == "stopped":
                return Decision(Action.STOP, "the process stopped on request (phase stopped)")
            if ending.phase == "failed":
                return self._abnormal(ending, latest_checkpoint, "exit code 0 but phase failed",
                                      target, needs_checkpoint, checkpoints)
            return Decision(Action.SUCCEED, "completed")
        return self._abnormal(ending, latest_checkpoint, ending.describe(), target, needs_checkpoint, checkpoints)

    def _abnormal(self, ending: Ending, latest: int | None, what: str, target: int | None,
                  needs_checkpoint: bool, checkpoints: bool = True) -> Decision:
        s = self.settings
        always = ending.exit_code is not None and ending.exit_code in s.recover_exit_codes
        if not s.auto_resume:
            # the cause first; the policy's part only where a restart could have helped (a
            # training job, input it did not refuse): not on an eval, not after exit code 2
            could_restart = needs_checkpoint and ending.exit_code != BAD_INPUT_EXIT
            return Decision(Action.FAIL, f"{what} (auto-resume is off)" if could_restart else what)
        if ending.start_error is not None:
            return Decision(Action.FAIL, what)
        if ending.exit_code in (BAD_INPUT_EXIT, DISK_FULL_EXIT) and not always:
            return Decision(Action.FAIL, f"{what}; a restart would fail the same way")
        if self.restarts and checkpoints:
            if latest is None or (self._checkpoint_at_last_restart is not None
                                  and latest <= self._checkpoint_at_last_restart):
                self.no_progress_streak += 1
            else:
                self.no_progress_streak = 0
        if self.no_progress_streak >= NO_PROGRESS_LIMIT:
            return Decision(
                Action.FAIL,
                f"{what}; gave up: {NO_PROGRESS_LIMIT} restarts in a row made no new checkpoint",
            )
        if not always and self.counted_restarts >= s.max_restarts:
            return Decision(Action.FAIL, f"{what}; gave up after {self.counted_restarts} restarts (max_restarts)")
        # A restart is due, unless there is nothing left to do or nothing to resume from; decided
        # before the counters move, so a job that never restarted does not count one.
        if latest is not None and target is not None and latest >= target:
            return Decision(Action.SUCCEED, f"{what} after its final checkpoint (step {latest})")
        if latest is None and needs_checkpoint:
            return Decision(Action.FAIL, f"{what}; no complete checkpoint to resume from "
                                         "(it ended before its first save)")
        delay = self.backoff(self.restarts)
        self.restarts += 1
        if not always:
            self.counted_restarts += 1
        self._checkpoint_at_last_restart = latest
        self._next_start_at = self.clock() + delay
        if not checkpoints:
            where = "of the same command"
        elif latest is not None:
            where = f"from checkpoint step {latest}"
        else:
            where = "from the start (no checkpoint yet)"
        return Decision(
            Action.RESTART,
            f"{what}; restart {self.restarts} {where} in {delay:g}s",
            delay_s=delay,
        )

    def backoff(self, n_before: int) -> float:
        """Delay before restart number n_before + 1: backoff_s * factor**n, capped."""
        s = self.settings
        return float(min(s.backoff_max_s, s.backoff_s * (s.backoff_factor ** n_before)))

    def remaining_wait(self) -> float:
        """Seconds left before the decided restart may start (0 when due)."""
        if self._next_start_at is None:
            return 0.0
        return max(0.0, self._next_start_at - self.clock())


def signal_name(signum: int) -> str:
    try:
        return _signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
