"""The Slurm backend, manager side: submit with sbatch, read state from Slurm, stop and kill.

    job = slurm.submit(layout, spec)       # spec.slurm set; writes jobs/ID/slurm.sh, then sbatch
    slurm.refresh(layout)                  # one squeue call for every active Slurm job -> state.json
    slurm.stop(layout, job); slurm.kill(layout, job)

No keeper runs for a Slurm job and nothing assumes this host runs it: its state is Slurm's
(squeue; sacct where accounting exists) plus the lines the batch script appends to
`jobs/ID/attempts.jsonl` on the shared localfs. `refresh` maps them onto rltui's states and writes
`state.json`, the one file every reader (status, jobs, logs, the TUI) already reads; Slurm is asked
once for all jobs at a time, and not again within `CACHE_S`.

State map (state.json's `slurm_state` keeps Slurm's own words, e.g. "PENDING (Resources)"):
  PENDING                              queued (restarting once Slurm has restarted it)
  CONFIGURING                          starting
  RUNNING, COMPLETING, SUSPENDED       running (stopping after `rltui stop`)
  REQUEUED, REQUEUE_*, PREEMPTED       restarting
  COMPLETED                            succeeded, or stopped when the script saved on a stop
  TIMEOUT                              stopped when the run saved on the time limit's TERM, else failed
  CANCELLED                            stopped (by the user, or by whoever cancelled it)
  FAILED, NODE_FAIL, OUT_OF_MEMORY, BOOT_FAIL, DEADLINE   failed
  gone from Slurm, no accounting       the script's last recorded end, else lost
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rltui.errors import UsageError, WorkFailed
from rltui.jobs.backends.slurm_attempt import KILL_MARK, STOP_MARK, read_attempts
from rltui.jobs.backends.slurm_script import batch_script
from rltui.jobs.backends.slurm_spec import SlurmSpec
from rltui.jobs.records import (
    Job,
    JobKind,
    JobSpec,
    JobState,
    StateFile,
    create_job,
    read_job,
    read_state,
    update_state,
    write_spec,
    write_state,
)
from rltui.runs import checkpoints
from rltui.runs.localfs import BadName, DamagedFile, Layout, create_run_dir, read_json, write_json_atomic, write_text_atomic

CACHE_S = 2.0
TIMEOUT_S = 10.0  # a query; status and the TUI's start must not hang on a stuck controller
SQUEUE_FORMAT = "JobID:|,State:|,Reason:|,RestartCnt:|,NodeList:|,StartTime:|,EndTime:|"
ACTIVE = {JobState.QUEUED, JobState.STARTING, JobState.RUNNING, JobState.STOPPING, JobState.RESTARTING}


@dataclass(frozen=True)
class SlurmRow:
    """One job as Slurm reports it (squeue -O, or sacct)."""

    job_id: str
    state: str  # PENDING, RUNNING, COMPLETED, ...
    reason: str = "None"
    restarts: int = 0
    nodes: str = ""

    @property
    def words(self) -> str:
        return self.state + (f" ({self.reason})" if self.reason and self.reason != "None" else "")


# ---------------------------------------------------------------- talking to Slurm


def _slurm(argv: list[str], timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    if shutil.which(argv[0]) is None:
        raise WorkFailed(f"Slurm command {argv[0]!r} not found on PATH (is this a Slurm login node?)")
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise WorkFailed(f"{argv[0]} did not answer within {timeout:g}s") from None


def one_line(text: str) -> str:
    """Slurm's error text as one line, without the `sbatch: error:` prefixes."""
    parts = []
    for line in text.splitlines():
        line = line.strip()
        for prefix in ("sbatch: error:", "squeue: error:", "scancel: error:", "error:"):
            if line.startswith(prefix):
                line = line[len(prefix):].strip()
        if line and line not in parts:
            parts.append("".join(c for c in line if c.isprintable()))
    return "; ".join(parts) or "no reason given"


class _Cache:
    """Slurm's answer for a set of job ids, reused for CACHE_S seconds (one call serves all)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.at = 0.0
        self.ids: frozenset[str] = frozenset()
        self.rows: dict[str, SlurmRow] = {}


_cache = _Cache()


def query(ids: set[str], max_age: float = CACHE_S) -> dict[str, SlurmRow]:
    """Slurm's rows for `ids` (one squeue call; ids Slurm no longer holds are left out)."""
    with _cache.lock:
        if ids <= _cache.ids and time.monotonic() - _cache.at < max_age:
            return {i: r for i, r in _cache.rows.items() if i in ids}
        done = _slurm(["squeue", "-h", "-t", "all", "-j", ",".join(sorted(ids, key=int)), "-O", SQUEUE_FORMAT])
        if done.returncode != 0 and "Invalid job id" not in done.stderr:
            raise WorkFailed(f"squeue failed: {one_line(done.stderr)}")
        rows = {}
        for line in done.stdout.splitlines():
            f = line.split("|")
            if len(f) >= 5 and f[0].strip():
                rows[f[0].strip()] = SlurmRow(f[0].strip(), f[1].strip(), f[2].strip(),
                                              _int(f[3]), f[4].strip())
        missing = ids - set(rows)
        if missing:
            rows.update(_sacct(missing))
        _cache.at, _cache.ids, _cache.rows = time.monotonic(), frozenset(ids), rows
        return rows


def _sacct(ids: set[str]) -> dict[str, SlurmRow]:
    """Jobs squeue has forgotten, from accounting when the cluster keeps it ({} otherwise)."""
    if shutil.which("sacct") is None:
        return {}
    done = _slurm(["sacct", "-n", "-P", "-X", "-j", ",".join(sorted(ids)), "-o", "JobID,State,Reason,NodeList"])
    rows = {}
    if done.returncode == 0:
        for line in done.stdout.splitlines():
            f = line.split("|")
            if len(f) >= 4 and f[0] in ids:
                rows[f[0]] = SlurmRow(f[0], f[1].split()[0], f[2], 0, f[3])
    return rows


def _int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        return 0


def invalidate_cache() -> None:
    with _cache.lock:
        _cache.at = 0.0


# ---------------------------------------------------------------- submitting


def submit(layout: Layout, spec: JobSpec) -> Job:
    """Write the job's record and batch script, then sbatch it. A refusal (bad partition, bad
    time, ...) is exit 2 with Slurm's reason in one line, and leaves nothing on disk."""
    s = spec.slurm
    assert s is not None
    _check(layout, spec)
    python = s.python or sys.executable
    layout.ensure()
    made_run = None
    if spec.kind is JobKind.TRAIN and spec.run is None:
        made_run = create_run_dir(layout)
        spec = spec.with_changes(run=made_run, argv=spec.argv + ("--run-name", made_run))
    job_dir = layout.job_dir(spec.id)
    script = job_dir / "slurm.sh"
    spec = spec.with_changes(slurm=s.with_changes(script=str(script), python=python))
    state = StateFile(JobState.QUEUED, run=spec.run)
    state.note("submitting to Slurm")
    try:
        create_job(layout, spec, state)
        write_text_atomic(script, batch_script(layout, spec, python))
        os.chmod(script, 0o755)
        done = _slurm(["sbatch", "--parsable", str(script)], timeout=60)
        slurm_id = done.stdout.strip().split(";")[0]
        if done.returncode != 0 or not slurm_id.isdigit():
            why = one_line(done.stderr or done.stdout)
            unreachable = ("contact", "timed out", "configuration source", "Connection refused")
            error = WorkFailed if any(w in why for w in unreachable) else UsageError
            raise error(f"sbatch refused the job: {why}")
    except BaseException:
        shutil.rmtree(job_dir, ignore_errors=True)
        if made_run is not None:
            shutil.rmtree(layout.run_dir(made_run), ignore_errors=True)
        raise
    spec = spec.with_changes(slurm=spec.slurm.with_changes(job_id=slurm_id))
    write_spec(layout, spec)
    state.slurm_job_id, state.slurm_state = slurm_id, "PENDING"
    state.note(f"submitted to Slurm as job {slurm_id}")
    write_state(layout, spec.id, state)
    invalidate_cache()
    return read_job(layout, spec.id)


def _check(layout: Layout, spec: JobSpec) -> None:
    s = spec.slurm
    if spec.kind not in (JobKind.TRAIN, JobKind.RESUME, JobKind.EVAL):
        raise UsageError(f"--backend slurm runs train, resume and eval jobs, not {spec.kind.value}")
    if spec.kind is JobKind.RESUME:
        args = list(spec.argv)
        run = spec.run
        newest = checkpoints.latest_complete_step(layout.training_state(run))
        frm = args[args.index("--from-step") + 1] if "--from-step" in args else "latest"
        if frm != "latest" and newest is not None and int(frm) != newest:
            raise UsageError(f"bad --from-step: {frm} (--backend slurm resumes from the newest "
                             f"complete checkpoint, step {newest}; fork an older step with the local backend)")
        world = _world_size(layout, run, newest)
        per_node = s.gpus_per_node or max(1, world // s.nodes)
        if s.nodes * per_node != world:
            raise UsageError(f"--nodes {s.nodes} x {per_node} processes per node != the checkpoint's "
                             f"world size {world} (a resume keeps the world size)")


def _world_size(layout: Layout, run: str, step: int | None) -> int:
    if step is None:
        return 1
    try:
        return int(checkpoints.read_checkpoint_info(layout.step_dir(run, step)).get("world_size") or 1)
    except (OSError, ValueError, DamagedFile):
        return 1


# ---------------------------------------------------------------- state


def refresh(layout: Layout, max_age: float = CACHE_S) -> list[str]:
    """Bring the state.json of every active Slurm job up to date; returns the ids that changed."""
    active: dict[str, tuple[str, StateFile]] = {}
    try:
        names = [e.name for e in os.scandir(layout.jobs) if e.is_dir() and not e.name.startswith(".")]
    except FileNotFoundError:
        return []
    for name in names:
        try:
            raw = read_json(layout.job_state(name))
            if not isinstance(raw, dict) or not raw.get("slurm_job_id") or raw.get("state") not in {
                    s.value for s in ACTIVE}:
                continue
            active[name] = (str(raw["slurm_job_id"]), StateFile.from_json(raw))
        except (FileNotFoundError, DamagedFile, BadName, KeyError, TypeError, ValueError):
            continue
    if not active:
        return []
    try:
        rows = query({sid for sid, _ in active.values()}, max_age)
    except WorkFailed:
        return []  # Slurm unreachable: keep what we know; the next refresh tries again
    changed = []
    for name, (sid, _old) in active.items():
        job_dir = layout.job_dir(name)
        attempts = read_attempts(job_dir)

        def follow(current: StateFile | None, row: SlurmRow | None = rows.get(sid)) -> StateFile | None:
            if current is None or current.state not in ACTIVE or current.slurm_job_id != sid:
                return None  # ended meanwhile, or not this job any more
            new = map_state(current, row, attempts, job_dir)
            return new if _differs(current, new) else None

        if update_state(layout, name, follow) is not None:
            changed.append(name)
    return changed


def map_state(old: StateFile, row: SlurmRow | None, attempts: list[dict], job_dir: Path,
              now: float | None = None) -> StateFile:
    """rltui's state of a Slurm job from Slurm's row and the script's attempt records (pure)."""
    now = time.time() if now is None else now
    new = StateFile.from_json(old.to_json())
    user_stop, user_kill = (job_dir / STOP_MARK).exists(), (job_dir / KILL_MARK).exists()
    ends = [a for a in attempts if a.get("event") == "end"]
    begins = [a for a in attempts if a.get("event") == "begin"]
    last_end = ends[-1] if ends else None
    if begins and begins[-1].get("host"):
        new.host = begins[-1]["host"]
    # the last start's own line on why it failed, while no later start has begun
    cause = None
    if last_end is not None and (not begins or begins[-1].get("time", 0) <= last_end.get("time", 0)):
        cause = last_end.get("cause")
    new.cause = cause if isinstance(cause, str) else None
    if row is None:
        if last_end is not None and last_end.get("outcome") in ("succeeded", "stopped", "failed"):
            return _final(new, JobState(last_end["outcome"]), last_end.get("reason") or "", now,
                          last_end.get("exit_code"), "gone from Slurm")
        if begins and begins[-1].get("skipped"):
            code = begins[-1].get("exit_code") or 0
            return _final(new, JobState.SUCCEEDED if code == 0 else JobState.FAILED,
                          begins[-1]["skipped"], now, code, "gone from Slurm")
        return _final(new, JobState.LOST, f"Slurm no longer knows job {old.slurm_job_id} and its "
                      "script recorded no end (no accounting to ask)", now, None, "gone from Slurm")
    new.restarts = max(new.restarts, row.restarts)
    new.slurm_state = row.words
    st = row.state
    if st == "PENDING":
        state = JobState.RESTARTING if row.restarts > 0 or begins else JobState.QUEUED
        return _active(new, state, f"Slurm: {row.words}")
    if st == "CONFIGURING":
        return _active(new, JobState.STARTING, f"Slurm: {row.words}", now)
    if st in ("RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "RESIZING", "SIGNALING", "STAGE_OUT"):
        if user_stop or user_kill:
            return _active(new, JobState.STOPPING, "stop requested by the user" if user_stop
                           else "killed by the user", now)
        if st == "COMPLETING" and last_end is not None and last_end.get("outcome") != "requeued":
            return _active(new, JobState.RUNNING, f"Slurm: {row.words}", now)
        where = f" on {row.nodes}" if row.nodes else ""
        return _active(new, JobState.RUNNING, f"running{where} (Slurm job {row.job_id}"
                       + (f", restart {row.restarts}" if row.restarts else "") + ")", now)
    if st in ("REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "PREEMPTED", "RESV_DEL_HOLD"):
        return _active(new, JobState.RESTARTING, f"Slurm: {row.words}")
    outcome = last_end.get("outcome") if last_end else None
    reason = (last_end.get("reason") if last_end else None) or ""
    if begins and begins[-1].get("skipped") and (last_end is None or begins[-1]["time"] > last_end["time"]):
        outcome = "succeeded" if not begins[-1].get("exit_code") else "failed"
        reason = begins[-1]["skipped"]
    code = last_end.get("exit_code") if last_end else None
    if st == "COMPLETED":
        state = JobState.STOPPED if outcome == "stopped" else JobState.SUCCEEDED
        return _final(new, state, reason or "completed", now, code, row.words)
    if st == "CANCELLED":
        if user_kill:
            return _final(new, JobState.STOPPED, "killed by the user", now, code, row.words)
        if user_stop:
            why = (reason if outcome == "stopped" else "stopped by the user while queued" if not begins
                   else "stopped by the user (cancelled after the grace)")
            return _final(new, JobState.STOPPED, why, now, code, row.words)
        return _final(new, JobState.STOPPED, reason if outcome == "stopped" else
                      f"cancelled in Slurm ({row.words})", now, code, row.words)
    if st == "TIMEOUT":
        status = _run_phase(job_dir, new.run)
        if outcome == "stopped" or status == "stopped":
            return _final(new, JobState.STOPPED, reason or "time limit: saved before it; resume to continue",
                          now, code, row.words)
        return _final(new, JobState.FAILED, "time limit reached before a save", now, code, row.words)
    if st == "FAILED" and outcome == "failed":
        return _final(new, JobState.FAILED, reason, now, code, row.words)
    return _final(new, JobState.FAILED, f"Slurm: {row.words}"
                  + (f"; {reason}" if reason else ""), now, code, row.words)


def _active(new: StateFile, state: JobState, reason: str, now: float | None = None) -> StateFile:
    new.state = state
    if now is not None and new.started_at is None and state in (JobState.STARTING, JobState.RUNNING):
        new.started_at = now
    if new.last_reason != reason:
        new.note(reason)
    return new


def _final(new: StateFile, state: JobState, reason: str, now: float, code: object, words: str) -> StateFile:
    new.state = state
    new.ended_at = now
    new.slurm_state = words
    if isinstance(code, int):
        new.exit_code = code
    if new.last_reason != reason:
        new.note(reason)
    return new


def _run_phase(job_dir: Path, run: str | None) -> str | None:
    if not run:
        return None
    try:
        d = read_json(Layout(job_dir.parent.parent).run_status(run))
    except (OSError, DamagedFile, BadName):
        return None
    return d.get("phase") if isinstance(d, dict) else None


def _differs(a: StateFile, b: StateFile) -> bool:
    x, y = a.to_json(), b.to_json()
    x.pop("updated_at", None)
    y.pop("updated_at", None)
    return x != y


# ---------------------------------------------------------------- stop and kill


def stop(layout: Layout, job: Job) -> Job:
    """TERM to the batch shell (its trap writes the run's STOP file; every rank saves at the next
    step boundary), the job cancels itself after the grace; a queued job is cancelled at once."""
    return _ask(layout, job, STOP_MARK, "stop requested by the user")


def kill(layout: Layout, job: Job) -> Job:
    """scancel: Slurm ends every process of the job now (TERM, then KILL after its KillWait)."""
    return _ask(layout, job, KILL_MARK, "killed by the user")


def _ask(layout: Layout, job: Job, mark: str, why: str) -> Job:
    state = read_state(layout, job.id)
    if state.state.final:
        raise UsageError(f"job {job.id} has already ended ({state.state.value})")
    sid = state.slurm_job_id
    write_json_atomic(layout.job_dir(job.id) / mark, {"time": time.time(), "by": "rltui"})
    row = query({sid}, max_age=0).get(sid)
    pending = row is None or row.state == "PENDING"
    if mark == STOP_MARK and not pending:
        if job.spec and job.spec.kind.trains and job.spec.run:
            write_text_atomic(layout.stop_request(job.spec.run), "stop requested by the user\n")
        done = _slurm(["scancel", "--batch", "--signal=TERM", sid])
    else:
        done = _slurm(["scancel", sid])
    if done.returncode != 0 and "complet" not in done.stderr:  # "already completing or completed"
        raise WorkFailed(f"scancel {sid} failed: {one_line(done.stderr)}")
    def stopping(current: StateFile | None) -> StateFile | None:
        if current is None or current.state.final:
            return None
        current.state = JobState.STOPPING
        current.note(why)
        return current

    update_state(layout, job.id, stopping)
    invalidate_cache()
    refresh(layout, max_age=0)
    return read_job(layout, job.id)


def spec_from_flags(layout: Layout, backend: str | None, **flags: object) -> SlurmSpec | None:
    """The SlurmSpec of `--backend slurm` (flags over ROOT/settings/slurm.yaml), or None for local."""
    from rltui.jobs.backends.slurm_spec import read_settings

    if backend in (None, "local"):
        given = {k: v for k, v in flags.items() if v not in (None, (), [])}
        if given:
            names = ", ".join("--" + k.replace("_", "-") for k in sorted(given))
            raise UsageError(f"{names}: only with --backend slurm")
        return None
    if backend != "slurm":
        raise UsageError(f"bad --backend: {backend!r} (choose local or slurm)")
    return SlurmSpec.from_flags(read_settings(layout), **flags)
