"""The records of a job on disk: `jobs/JOB_ID/job.json` (what to run) and `state.json` (what is
happening), as typed dataclasses with their JSON forms (docs/ARCHITECTURE.md, "File schemas").

job.json is written once, with the first state.json, into a folder that appears whole
(`create_job`). Every change of state.json after that goes through one function, `update_state`:
it holds the job's lock (flock on `jobs/JOB_ID/.state.lock`) while it reads the record, applies
the change and writes the result atomically, so two transitions at once never lose one. The
writers: the launcher (queued, starting), the job's keeper, reconcile once the keeper is gone
(lost), stop/kill of a queued job and supervise's note on a lost one.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any, Callable

from rltui.runs.localfs import BadName, DamagedFile, Layout, read_json, write_json_atomic
from rltui.runs.records import job_reason
from rltui.jobs.backends.slurm_spec import SlurmSpec
from rltui.jobs.policy import STOPPED_EXIT, RestartSettings


class JobKind(str, Enum):
    TRAIN = "train"
    RESUME = "resume"
    EVAL = "eval"
    SYNC = "sync"
    FETCH = "fetch"  # a model or dataset from the Hugging Face Hub (rltui.jobs.fetch_jobs)

    @property
    def trains(self) -> bool:
        return self in (JobKind.TRAIN, JobKind.RESUME)


class JobState(str, Enum):
    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    RESTARTING = "restarting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    LOST = "lost"

    @property
    def active(self) -> bool:
        """A keeper owns the job (it holds its GPUs)."""
        return self in ACTIVE_STATES

    @property
    def final(self) -> bool:
        return self in FINAL_STATES


ACTIVE_STATES = frozenset({JobState.STARTING, JobState.RUNNING, JobState.STOPPING, JobState.RESTARTING})
FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED, JobState.LOST})


@dataclass(frozen=True)
class FollowUp:
    """A job to start when this one succeeds; today: an eval of the run's checkpoints."""

    kind: JobKind
    dataset: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "dataset": self.dataset}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "FollowUp":
        return cls(kind=JobKind(d["kind"]), dataset=d.get("dataset"))


@dataclass(frozen=True)
class ArchivePlan:
    """A training job's live archive (`--archive`): the keeper starts a `sync --action follow`
    job beside it with these settings (rltui.archive.follow)."""

    interval_s: float | None = None
    keep_latest: bool = False
    keep_every: int | None = None
    local_budget: str | None = None  # as given: '50G'
    bandwidth: str | None = None  # bytes/s as given: '20M'

    def to_json(self) -> dict[str, Any]:
        return {"interval_s": self.interval_s, "keep_latest": self.keep_latest,
                "keep_every": self.keep_every, "local_budget": self.local_budget,
                "bandwidth": self.bandwidth}

    @classmethod
    def from_json(cls, d: Any) -> "ArchivePlan | None":
        if not isinstance(d, dict):
            return None
        return cls(interval_s=d.get("interval_s"), keep_latest=bool(d.get("keep_latest")),
                   keep_every=d.get("keep_every"), local_budget=d.get("local_budget"),
                   bandwidth=d.get("bandwidth"))


@dataclass(frozen=True)
class JobSpec:
    """job.json: what to run. `argv` is a list, never a shell string."""

    id: str
    kind: JobKind
    argv: tuple[str, ...]
    title: str = ""
    run: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    gpus: tuple[int, ...] | None = None  # an explicit list of GPU indexes asked for
    gpu_count: int | None = None  # how many GPUs; None = as many as nproc when the box has GPUs
    nproc: int = 1
    restart: RestartSettings = field(default_factory=RestartSettings)
    resume_argv: tuple[str, ...] | None = None  # what a restart runs; the keeper may append --additional-steps K
    followups: tuple[FollowUp, ...] = ()
    parent_job: str | None = None  # the job that started this one (a follow-up, a supervise resume)
    created: float = field(default_factory=time.time)
    slurm: SlurmSpec | None = None  # set: the job runs under Slurm (sbatch), not a local keeper
    archive: ArchivePlan | None = None  # a training job archived live (its keeper starts it)

    @property
    def backend(self) -> str:
        return "slurm" if self.slurm is not None else "local"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind.value, "title": self.title, "run": self.run,
            "argv": list(self.argv), "env": dict(self.env), "cwd": self.cwd,
            "gpus": list(self.gpus) if self.gpus is not None else None,
            "gpu_count": self.gpu_count, "nproc": self.nproc, "restart": self.restart.to_json(),
            "resume_argv": list(self.resume_argv) if self.resume_argv is not None else None,
            "followups": [f.to_json() for f in self.followups],
            "parent_job": self.parent_job, "created": self.created, "backend": self.backend,
            "slurm": self.slurm.to_json() if self.slurm is not None else None,
            "archive": self.archive.to_json() if self.archive is not None else None,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "JobSpec":
        return cls(
            id=str(d["id"]), kind=JobKind(d["kind"]), argv=tuple(str(a) for a in d["argv"]),
            title=d.get("title") or "", run=d.get("run"), env=dict(d.get("env") or {}),
            cwd=d.get("cwd"), gpus=tuple(d["gpus"]) if d.get("gpus") is not None else None,
            gpu_count=d.get("gpu_count"), nproc=int(d.get("nproc") or 1),
            restart=RestartSettings.from_json(d.get("restart")),
            resume_argv=tuple(d["resume_argv"]) if d.get("resume_argv") else None,
            followups=tuple(FollowUp.from_json(f) for f in d.get("followups") or ()),
            parent_job=d.get("parent_job"), created=float(d.get("created") or 0.0),
            slurm=SlurmSpec.from_json(d["slurm"]) if isinstance(d.get("slurm"), dict) else None,
            archive=ArchivePlan.from_json(d.get("archive")),
        )

    def with_changes(self, **changes: Any) -> "JobSpec":
        return replace(self, **changes)


@dataclass
class Usage:
    """What a job used, accumulated by its keeper. None = unknown (no GPU data, no price set)."""

    gpu_seconds: float = 0.0
    peak_gpu_mem_mib: float | None = None
    mean_gpu_util: float | None = None
    energy_j: float | None = None
    cost: float | None = None
    price_per_gpu_hour: float | None = None
    samples: int = 0

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> "Usage":
        d = d or {}
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass
class StateFile:
    """state.json: what is happening to a job now."""

    state: JobState
    keeper_pid: int | None = None
    child_pid: int | None = None
    pgid: int | None = None
    pgid_start: int | None = None  # the group leader's start (ticks since boot): proof it is the job's
    keeper_start: int | None = None  # the keeper's start (ticks since boot): proof its pid is still it
    exit_code: int | None = None
    signal: int | None = None
    restarts: int = 0
    reasons: list[str] = field(default_factory=list)
    last_reason: str | None = None
    cause: str | None = None  # the process's own line on why it last ended abnormally (output.cause_line)
    started_at: float | None = None
    updated_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    boot_time: float | None = None
    gpus: list[int] | None = None  # the GPUs assigned (CUDA_VISIBLE_DEVICES), None = none
    run: str | None = None
    usage: Usage = field(default_factory=Usage)
    followup_jobs: list[str] = field(default_factory=list)
    resumed_by: str | None = None  # a lost job that `supervise` resumed: the new job's id
    host: str | None = None
    slurm_job_id: str | None = None  # a Slurm job: its state comes from Slurm (rltui.jobs.backends.slurm)
    slurm_state: str | None = None  # what Slurm last said, e.g. "PENDING (Resources)"

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["state"] = self.state.value
        d["usage"] = self.usage.to_json()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "StateFile":
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        kw["state"] = JobState(d["state"])
        kw["usage"] = Usage.from_json(d.get("usage"))
        kw["reasons"] = list(d.get("reasons") or [])
        kw["followup_jobs"] = list(d.get("followup_jobs") or [])
        return cls(**kw)

    @property
    def shown_reason(self) -> str:
        """The reason as shown: the process's own `cause` first while failed or restarting
        (`rltui.runs.records.job_reason`)."""
        return job_reason(self.state.value, self.last_reason, self.cause)

    @property
    def last_restart_cause(self) -> str | None:
        """Why the job last restarted (e.g. "killed by SIGKILL"), or None if it never did."""
        for r in reversed(self.reasons):
            if "; restart " in r:
                return r.split("; restart ")[0]
        return None

    def note(self, reason: str) -> None:
        self.reasons.append(reason)
        self.last_reason = reason


@dataclass
class Job:
    """A job as read from disk: its spec, its state (None when unreadable) and any read error."""

    id: str
    dir: Path
    spec: JobSpec | None
    state: StateFile | None
    error: str | None = None

    @property
    def phase(self) -> JobState | None:
        return self.state.state if self.state else None

    @property
    def unended(self) -> bool:
        """Queued or active: readable, and not in a final state."""
        return self.phase is not None and not self.phase.final

    def exit_status(self) -> int:
        """The exit code a waiting `rltui --batch` command returns for this job."""
        s = self.state
        if s is None or not s.state.final:
            return 1
        if s.state is JobState.SUCCEEDED:
            return 0
        if s.state is JobState.STOPPED:
            return STOPPED_EXIT
        return 2 if s.exit_code == 2 else 1


def write_spec(layout: Layout, spec: JobSpec) -> None:
    write_json_atomic(layout.job_spec(spec.id), spec.to_json())


def read_spec(layout: Layout, job_id: str) -> JobSpec:
    d = read_json(layout.job_spec(job_id))
    try:
        return JobSpec.from_json(d)
    except (KeyError, TypeError, ValueError) as e:
        raise DamagedFile(layout.job_spec(job_id), f"not a job spec: {e}") from None


STATE_LOCK = ".state.lock"


def update_state(layout: Layout, job_id: str, change: Callable[[StateFile | None], StateFile | None],
                 *, durable: bool = True) -> StateFile | None:
    """The one writer of a job's state.json after its creation.

    Holds the job's lock while it reads the current record (None when missing or damaged), calls
    `change` with it and writes what `change` returns (None: leave the record as it is). Returns
    the record written, or None.
    """
    fd = os.open(layout.job_dir(job_id) / STATE_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            current = read_state(layout, job_id)
        except (FileNotFoundError, DamagedFile):
            current = None
        new = change(current)
        if new is not None:
            new.updated_at = time.time()
            write_json_atomic(layout.job_state(job_id), new.to_json(), durable=durable)
        return new
    finally:
        os.close(fd)


def write_state(layout: Layout, job_id: str, state: StateFile, *, durable: bool = True) -> None:
    """Replace the record whole, through `update_state` (for a record only its caller changes)."""
    update_state(layout, job_id, lambda _current: state, durable=durable)


def create_job(layout: Layout, spec: JobSpec, state: StateFile) -> None:
    """jobs/JOB_ID with its job.json and first state.json, appearing whole: built under a hidden
    temporary name and renamed, so a full disk or a crash never leaves a job folder without
    job.json (the temporary is removed on failure)."""
    final = layout.job_dir(spec.id)
    tmp = layout.jobs / f".tmp-{spec.id}"
    tmp.mkdir(parents=True)
    try:
        write_json_atomic(tmp / layout.job_spec(spec.id).name, spec.to_json())
        state.updated_at = time.time()
        write_json_atomic(tmp / layout.job_state(spec.id).name, state.to_json())
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_state(layout: Layout, job_id: str) -> StateFile:
    d = read_json(layout.job_state(job_id))
    try:
        return StateFile.from_json(d)
    except (KeyError, TypeError, ValueError) as e:
        raise DamagedFile(layout.job_state(job_id), f"not a job state: {e}") from None


def auto_resume_override_path(layout: Layout, job_id: str) -> Path:
    """`jobs/JOB_ID/auto_resume.json`: {"auto_resume": bool}, set by a user after launch."""
    return layout.job_dir(job_id) / "auto_resume.json"


def effective_auto_resume(layout: Layout, spec: JobSpec) -> bool:
    """The job's auto-resume setting: the user's later override, else job.json's."""
    try:
        d = read_json(auto_resume_override_path(layout, spec.id))
    except (FileNotFoundError, DamagedFile):
        return spec.restart.auto_resume
    value = d.get("auto_resume") if isinstance(d, dict) else None
    return value if isinstance(value, bool) else spec.restart.auto_resume


def list_jobs(layout: Layout) -> list[Job]:
    """Every job under jobs/, oldest first (ids begin with their start time); damaged records
    show their error."""
    try:
        names = sorted(e.name for e in os.scandir(layout.jobs) if e.is_dir() and not e.name.startswith("."))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        try:
            out.append(read_job(layout, name))
        except BadName:
            continue
    return out


def unended_jobs(layout: Layout, run: str, kinds: frozenset[JobKind] | None = None) -> list[Job]:
    """`run`'s jobs not yet ended (of `kinds`, when given), oldest first: who may still write or
    read the run."""
    return [job for job in list_jobs(layout) if job.spec is not None and job.spec.run == run
            and (kinds is None or job.spec.kind in kinds) and job.unended]


def read_job(layout: Layout, job_id: str) -> Job:
    """Spec and state of one job; a damaged or missing file shows as `error`, never raises."""
    spec = state = None
    errors = []
    try:
        spec = read_spec(layout, job_id)
    except FileNotFoundError:
        errors.append("job.json missing")
    except DamagedFile as e:
        errors.append(str(e))
    try:
        state = read_state(layout, job_id)
    except FileNotFoundError:
        errors.append("state.json missing")
    except DamagedFile as e:
        errors.append(str(e))
    return Job(job_id, layout.job_dir(job_id), spec, state, "; ".join(errors) or None)


CODE_ROOT = Path(__file__).resolve().parents[2]  # the checkout holding rltui/, trainer/, evaluator/


def with_code_root(env: dict[str, str]) -> dict[str, str]:
    """`env` with this checkout first on PYTHONPATH (once), so a job's `python -m trainer...`
    runs this code whatever the working folder."""
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(CODE_ROOT)]
    return {**env, "PYTHONPATH": os.pathsep.join([str(CODE_ROOT), *paths])}
