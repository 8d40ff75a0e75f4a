"""Typed records of a localfs, as the index reads them, and the run-status rule.

The index (rltui.runs.index) builds these; `rltui --batch status`, the TUI, the archive and the jobs
supervisor read them. Everything here is plain data plus `classify_run`, which is a pure function
of a status.json, the clock, this host and a process check, so it is unit-tested without sleeping.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable

from rltui.runs import machine
from rltui.text import clean

#: A run whose status.json `time` is older than this, though its process lives, is "stalled":
#: still shown as running (its process may yet save), with the reason saying so.
STALE_AFTER_S = 15 * 60.0

_IN_PROGRESS_PHASES = frozenset(
    {"starting", "loading", "generating", "scoring", "training", "saving", "evaluating"}
)


class RunStatus(Enum):
    RUNNING = "running"
    COMPLETED = "completed"
    STOPPED = "stopped"
    CRASHED = "crashed"
    UNKNOWN = "unknown"

    @property
    def symbol(self) -> str:
        """One character that reads without colour."""
        return _RUN_SYMBOLS[self]

    @property
    def finished(self) -> bool:
        return self in (RunStatus.COMPLETED, RunStatus.STOPPED)


_RUN_SYMBOLS = {
    RunStatus.RUNNING: "▶",
    RunStatus.COMPLETED: "✓",
    RunStatus.STOPPED: "■",
    RunStatus.CRASHED: "✗",
    RunStatus.UNKNOWN: "?",
}


class JobState(Enum):
    """A job's state as its keeper writes it in jobs/ID/state.json (docs/ARCHITECTURE.md)."""

    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    RESTARTING = "restarting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    LOST = "lost"
    UNKNOWN = "unknown"  # no state.json yet, or a damaged one

    @property
    def active(self) -> bool:
        """The keeper is (supposed to be) looking after it."""
        return self in _ACTIVE_JOB_STATES

    @property
    def ended(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED, JobState.LOST)


_ACTIVE_JOB_STATES = frozenset(
    {JobState.QUEUED, JobState.STARTING, JobState.RUNNING, JobState.STOPPING, JobState.RESTARTING}
)


_CAUSE_SHOWN = frozenset({"failed", "restarting"})
_PROGRAM_SAYS = re.compile(r"[\w.-]+: error: ")


def job_reason(state: str, reason: str | None, cause: str | None) -> str:
    """A job's reason as shown: for a failed or restarting job, its process's own line on why
    (state.json `cause`, `rltui.jobs.output.cause_line`) first, then the keeper's reason: `base
    model X is not in the Hugging Face cache ...; exit code 2 (bad input: flags, config or paths)`.
    `state` is the state's value ("failed")."""
    reason = reason or ""
    if not cause or state not in _CAUSE_SHOWN:
        return reason
    said = _PROGRAM_SAYS.sub("", cause, count=1) if _PROGRAM_SAYS.match(cause) else cause
    return f"{said}; {reason}" if reason else said


@dataclass(frozen=True)
class FileError:
    """A file the index could not read as what it should be; the record shows it, the scan goes on."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class CheckpointRecord:
    step: int
    path: Path
    complete: bool
    problems: list[str]
    size_bytes: int | None  # recorded sizes of a complete one; what is on disk otherwise
    is_latest: bool = False  # what step_latest points at
    created: float | None = None

    @property
    def reason(self) -> str:
        return "; ".join(self.problems)


@dataclass
class EvalStepRecord:
    step: int
    accuracy: float | None
    format_rate: float | None = None
    mean_reward: float | None = None
    n: int | None = None
    error: str | None = None  # the reason this step's evaluation failed


@dataclass
class EvalRecord:
    run: str
    dataset: str
    path: Path
    steps: list[EvalStepRecord]
    best_accuracy: float | None = None
    best_step: int | None = None
    last_accuracy: float | None = None  # at the highest evaluated step
    last_step: int | None = None
    error: str | None = None
    progress: dict[str, Any] | None = None  # eval_status.json of an evaluation under way
    damaged: list[FileError] = field(default_factory=list)
    #: why no run owns this folder (rltui.runs.folders); None when `run` owns it
    owner_note: str | None = None


@dataclass
class JobRecord:
    id: str
    kind: str | None
    run: str | None
    state: JobState
    argv: list[str]
    gpus: list[int] | None
    restarts: int = 0
    last_reason: str | None = None
    cause: str | None = None  # the process's own line on why it failed (state.json)
    created: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    usage: dict[str, float | None] = field(default_factory=dict)
    error: str | None = None
    path: Path | None = None
    keeper_pid: int | None = None
    updated_at: float | None = None
    boot_time: float | None = None  # the machine's boot time when the job started

    #: the state says active but its keeper is gone (dead pid, or started before the last boot):
    #: the supervisor will mark it lost; until then the index already treats it as lost.
    orphaned: bool = False
    damaged: list[FileError] = field(default_factory=list)

    @property
    def trains(self) -> bool:
        """A train or resume job: the run's writer (a live archive or an eval only reads it)."""
        return self.kind in ("train", "resume")

    @property
    def reason(self) -> str:
        """The reason shown for the job (`job_reason`), the unreadable file's error first."""
        return self.error or job_reason(self.state.value, self.last_reason, self.cause)


@dataclass
class ConfigSummary:
    model: str | None = None
    dataset: str | None = None
    lora_r: int | None = None
    learning_rate: float | None = None
    num_generations: int | None = None
    max_steps: int | None = None


@dataclass(frozen=True)
class Provenance:
    """Where a run started (provenance.json, written by the trainer when the run begins)."""

    base: str | None = None  # the base model as named in the config
    base_repo: str | None = None  # its Hub repo id, when it came from the Hub
    base_commit: str | None = None  # the Hub commit loaded
    adapter_path: str | None = None  # the starting adapter (--ckpt / model.init_adapter)
    adapter_label: str | None = None  # e.g. checkpoint-156
    adapter_sha256: str | None = None  # of its weights file
    adapter_step: int | None = None  # an HF Trainer / TRL checkpoint's global_step

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Provenance":
        base = data.get("base") if isinstance(data.get("base"), dict) else {}
        start = data.get("start_adapter") if isinstance(data.get("start_adapter"), dict) else {}
        step = start.get("global_step")
        return cls(
            base=_text(base.get("spec")), base_repo=_text(base.get("repo_id")),
            base_commit=_text(base.get("commit")), adapter_path=_text(start.get("path")),
            adapter_label=_text(start.get("label")), adapter_sha256=_text(start.get("weights_sha256")),
            adapter_step=step if isinstance(step, int) and not isinstance(step, bool) else None,
        )

    @property
    def started_from(self) -> str:
        """'from checkpoint-156' (the starting adapter), or '' for a fresh LoRA."""
        return f"from {self.adapter_label}" if self.adapter_label else ""

    @property
    def base_text(self) -> str:
        """'Qwen/Qwen2.5-1.5B-Instruct@a09a354' for a Hub model, else the base as named."""
        if self.base_repo and self.base_commit:
            return f"{self.base_repo}@{self.base_commit[:7]}"
        return self.base or ""


def _text(value: Any) -> str | None:
    return clean(value) if isinstance(value, str) and value else None  # shown: made safe


@dataclass
class RunRecord:
    name: str
    path: Path
    status: RunStatus
    status_reason: str = ""
    step: int | None = None
    target_step: int | None = None
    target_history: list[int] = field(default_factory=list)  # original target, then extensions
    phase: str | None = None
    latest_complete: int | None = None  # newest complete checkpoint step
    checkpoints: list[CheckpointRecord] = field(default_factory=list)
    config_summary: ConfigSummary = field(default_factory=ConfigSummary)
    last_metrics: dict[str, Any] = field(default_factory=dict)
    started: float | None = None
    updated: float | None = None
    error: str | None = None  # the run's own error (status.json) or the first damaged file
    evals: dict[str, EvalRecord] = field(default_factory=dict)
    parent: dict[str, Any] | None = None  # {"run", "step"} it was resumed or branched from
    provenance: Provenance | None = None  # provenance.json: base model commit, starting adapter
    legacy: bool = False
    restarts: int = 0
    gpu_seconds: float = 0.0
    cost: float | None = None  # None: no job had a price (RLTUI_GPU_HOUR_PRICE) to cost it by
    pid: int | None = None
    host: str | None = None
    stalled: bool = False
    process_alive: bool = False  # its trainer pid was checked alive on this host
    writer: Any = None  # runs.writer_lock.Holder of its writer lock when read, else None
    job_ids: list[str] = field(default_factory=list)
    damaged: list[FileError] = field(default_factory=list)

    @property
    def dataset(self) -> str | None:
        return self.config_summary.dataset

    @property
    def incomplete_checkpoints(self) -> list[CheckpointRecord]:
        return [c for c in self.checkpoints if not c.complete]

    @property
    def last_eval(self) -> EvalRecord | None:
        """The evaluation with the most recent step (ties: dataset name)."""
        done = [e for e in self.evals.values() if e.last_step is not None]
        return max(done, key=lambda e: (e.last_step, e.dataset)) if done else None


# ---------------------------------------------------------------- the run-status rule


@dataclass(frozen=True)
class Diagnosis:
    status: RunStatus
    reason: str
    stalled: bool = False
    process_alive: bool = False  # the trainer pid was checked and is alive on this host


def classify_run(
    status_json: Any,
    now: float,
    host: str,
    stale_after: float = STALE_AFTER_S,
    *,
    alive: Callable[[int, float], bool] | None = None,
) -> RunStatus:
    """The status of a run from its status.json (see `diagnose_run` for the rule)."""
    return diagnose_run(status_json, now, host, stale_after, alive=alive).status


def diagnose_run(
    status_json: Any,
    now: float,
    host: str,
    stale_after: float = STALE_AFTER_S,
    *,
    alive: Callable[[int, float], bool] | None = None,
) -> Diagnosis:
    """The status of a run and why.

    - no status.json, or not a JSON object: unknown;
    - phase completed / stopped: completed / stopped; phase failed: crashed;
    - otherwise, on this host: the trainer pid alive (and started before its last progress, so a
      reused pid does not count) is running — stalled when no progress for `stale_after`, still
      running because its process may yet save or stop; a dead pid is crashed;
    - on another host the pid cannot be checked: fresh progress is running, stale is unknown.

    `alive(pid, last_progress_time)` is the process check (default: `trainer_alive`).
    """
    if not isinstance(status_json, dict):
        return Diagnosis(RunStatus.UNKNOWN, "no status.json")
    phase = status_json.get("phase")
    if phase == "completed":
        return Diagnosis(RunStatus.COMPLETED, "finished all its steps")
    if phase == "stopped":
        return Diagnosis(RunStatus.STOPPED, "stopped before its target step")
    if phase == "failed":
        err = status_json.get("error")
        return Diagnosis(RunStatus.CRASHED, f"failed: {err}" if err else "failed")
    t = json_number(status_json.get("time"))
    age = None if t is None else max(0.0, now - t)
    stale = age is None or age > stale_after
    pid = status_json.get("pid")
    run_host = status_json.get("host")
    if run_host and run_host != host:
        if not stale:
            return Diagnosis(RunStatus.RUNNING, f"on host {run_host} (its process is not checked)")
        return Diagnosis(
            RunStatus.UNKNOWN,
            f"last progress {_ago(age)} on host {run_host}; its process cannot be checked from here",
        )
    check = alive or trainer_alive
    if isinstance(pid, int) and check(pid, t if t is not None else now):
        if stale:
            return Diagnosis(RunStatus.RUNNING, f"pid {pid} alive but no progress for {_ago(age)}",
                             stalled=True, process_alive=True)
        return Diagnosis(RunStatus.RUNNING, f"pid {pid} alive, progress {_ago(age)} ago",
                         process_alive=True)
    what = f"trainer pid {pid} is gone" if isinstance(pid, int) else "no trainer pid recorded"
    return Diagnosis(RunStatus.CRASHED, f"{what} (phase {phase or '?'}, last progress {_ago(age)} ago)")


def trainer_alive(pid: int, last_progress: float) -> bool:
    """`pid` is alive and is not a newer process that reused the number: it started no later
    than `last_progress`, a time it wrote itself (Linux start time; elsewhere liveness only).
    Used for trainer pids (status.json time) and keeper pids (state.json updated_at)."""
    if not machine.pid_alive(pid):
        return False
    started = process_start_time(pid)
    # 2 s of slack: the start time is counted in clock ticks from the boot time (whole seconds).
    return started is None or started <= last_progress + 2.0


def process_start_time(pid: int) -> float | None:
    """When `pid` started, in epoch seconds (Linux /proc); None where unknown."""
    boot = machine.boot_time()
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of stat(5); fields[0] is field 3
    except (OSError, IndexError, ValueError):
        return None
    if boot is None:
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def target_note(history: list[int]) -> str:
    """' (150+3)' for a run whose original target 150 was extended by 3; '' when never extended."""
    if len(history) < 2:
        return ""
    return f" ({history[0]}" + "".join(f"+{b - a}" for a, b in zip(history, history[1:])) + ")"


def json_int(v: Any) -> int | None:
    """A JSON field read as a whole number, or None (a bool or anything else is not one)."""
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def json_number(v: Any) -> float | None:
    """A JSON field read as a number, or None."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _ago(age: float | None) -> str:
    if age is None:
        return "unknown time"
    if age < 120:
        return f"{age:.0f} s"
    if age < 7200:
        return f"{age / 60:.0f} min"
    return f"{age / 3600:.1f} h"
