"""Job control: launch a job through the keeper, and stop, kill, list, read or reconcile jobs.

    job = control.launch(layout, spec)         # -> Job; the keeper now runs it, detached
    control.stop(layout, job.id)               # graceful: stop request, grace period, signals

Every job runs under `python -m rltui.jobs.keeper`, started detached in a new session so it
outlives the launcher (docs/ARCHITECTURE.md, jobs).
"""

from __future__ import annotations


import os
import signal
import subprocess
import time
from pathlib import Path

from rltui import gpu
from rltui.jobs import gpu_assign, ownership
from rltui.errors import UsageError, WorkFailed
from rltui.gpu import Sampler
from rltui.jobs.records import (
    Job,
    JobKind,
    JobSpec,
    JobState,
    StateFile,
    auto_resume_override_path,
    effective_auto_resume,
    create_job,
    list_jobs,
    read_job,
    read_state,
    update_state,
    with_code_root,
    write_state,
)
from rltui.runs.localfs import (
    BadName,
    DamagedFile,
    Layout,
    create_run_dir,
    read_json,
    validate_name,
    write_json_atomic,
)
from rltui.runs import disk
from rltui.runs.machine import boot_time, pid_alive, this_host

from rltui.jobs.builders import PY, resume_argv

KEEPER_START_GRACE_S = 60.0
KEEPER_PID_WAIT_S = 10.0  # stop/kill of a job whose keeper is starting waits this long for its pid


# ---------------------------------------------------------------- launching


def launch(
    layout: Layout, spec: JobSpec, sampler: Sampler | None = None, *, check_usage: bool = True,
) -> Job:
    """Write the job's record and start its keeper, or leave it queued until GPUs are free.

    A train job without a run gets a fresh run folder here (`--run-name RUN`). `check_usage`
    False trusts the job records alone (a follow-up on GPUs its parent just released).
    A job with `spec.slurm` is submitted to Slurm instead (rltui.jobs.backends.slurm).
    """
    if spec.slurm is not None:
        from rltui.jobs.backends import slurm

        return slurm.submit(layout, spec)
    snapshot = gpu_assign.snapshot_for(spec, sampler)
    gpu_assign.check_possible(spec, snapshot)
    layout.ensure()
    made_run = None
    if spec.kind is JobKind.TRAIN and spec.run is None:
        made_run = run = create_run_dir(layout)
        spec = spec.with_changes(
            run=run, argv=spec.argv + ("--run-name", run),
            resume_argv=tuple(resume_argv(layout, run, spec.nproc)),
        )
    try:
        with gpu_assign.lock(layout):
            state = StateFile(JobState.QUEUED, run=spec.run, host=this_host(), boot_time=boot_time())
            state.note("queued: waiting for GPUs")
            create_job(layout, spec, state)  # job.json and state.json appear together, or not at all
            gpus = gpu_assign.try_assign(layout, spec, snapshot, check_usage=check_usage)
            if gpus is not None:
                _start(layout, spec, state, gpus)
    except OSError as e:
        if made_run is not None and not layout.job_dir(spec.id).exists():
            try:
                layout.run_dir(made_run).rmdir()  # no job for it: no empty run folder left behind
            except OSError:
                pass
        if disk.is_full(e):
            raise WorkFailed(f"job not started: {disk.describe(layout.jobs)}") from None
        raise
    return read_job(layout, spec.id)


def start_queued(layout: Layout, sampler: Sampler | None = None) -> list[str]:
    """Start every queued job whose GPUs are free now, oldest first; returns their ids."""
    started = []
    queued = [j for j in list_jobs(layout) if j.phase is JobState.QUEUED and j.spec and j.spec.slurm is None]
    if not queued:
        return started
    snapshot = None
    if any(gpu_assign.needs_snapshot(j.spec) for j in queued):
        snapshot = (sampler or gpu.default_sampler()).sample()
    with gpu_assign.lock(layout):
        held = gpu_assign.held_gpus(layout)  # read once; what this pass assigns is added
        for job in queued:
            try:
                state = read_state(layout, job.id)
            except (FileNotFoundError, DamagedFile):
                continue
            if state.state is not JobState.QUEUED:
                continue
            gpus = gpu_assign.try_assign(layout, job.spec, snapshot, held=held)
            if gpus is not None:
                _start(layout, job.spec, state, gpus)
                held.update(gpus)
                started.append(job.id)
    return started


def _start(layout: Layout, spec: JobSpec, state: StateFile, gpus: list[int]) -> None:
    """Mark the job starting on `gpus` and start its keeper detached (caller holds the GPU lock)."""
    state.state = JobState.STARTING
    state.gpus = gpus or None
    state.note("starting" + (f" on GPU {','.join(map(str, gpus))}" if gpus else ""))
    write_state(layout, spec.id, state)
    env = with_code_root(dict(os.environ))
    with open(layout.job_log(spec.id), "ab") as log:
        detacher = subprocess.Popen(
            [PY, "-m", "rltui.jobs.keeper", "--detach", str(layout.job_dir(spec.id))],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, cwd=spec.cwd or None, env=env,
        )
    detacher.wait()  # it forks the keeper and exits at once, so no zombie is left behind


# ---------------------------------------------------------------- control and reading


def get_job(layout: Layout, job_id: str) -> Job:
    try:
        validate_name(job_id, "job id")
    except BadName as e:
        raise UsageError(str(e)) from None
    if not layout.job_dir(job_id).is_dir():
        raise UsageError(f"no such job: {job_id!r} (not in {layout.jobs})")
    return read_job(layout, job_id)


def job_for(layout: Layout, name: str, *, active_only: bool = False) -> str:
    """The job a command names by a job id or by a run's name: a job id wins. For a run: its one
    job not yet ended (queued or active), or of several its one training job; with none, its
    newest job (with `active_only`, one line saying the run has none). One line for anything else:
    several candidates are named, never guessed among."""
    try:
        validate_name(name, "job id or run name")
    except BadName as e:
        raise UsageError(str(e)) from None
    if layout.job_dir(name).is_dir():
        return name
    jobs = [job for job in list_jobs(layout) if job.spec is not None and job.spec.run == name]
    if not jobs:
        if not layout.run_dir(name).is_dir():
            raise UsageError(f"no such job or run: {name!r} (not in {layout.jobs} or {layout.training_runs})")
        raise UsageError(f"run {name} has no jobs (see `rltui --batch jobs`)")
    active = [job for job in jobs if job.unended]  # queued too
    training = [job for job in active if job.spec.kind.trains]
    if len(active) == 1 or len(training) == 1:
        return (training or active)[0].id
    if active:
        ids = ", ".join(job.id for job in active)
        raise UsageError(f"run {name} has {len(active)} active jobs ({ids}): name one of them")
    if active_only:
        newest = jobs[-1]
        raise UsageError(f"run {name} has no active job (its newest job, {newest.id}: "
                         f"{newest.phase.value if newest.phase else 'unreadable'})")
    return jobs[-1].id


def stop(layout: Layout, job_id: str) -> Job:
    """Ask a job to stop gracefully: its keeper asks the process, waits, then signals the group."""
    return _signal_keeper(layout, job_id, signal.SIGTERM, "stop requested by the user")


def kill(layout: Layout, job_id: str) -> Job:
    """Kill a job's whole process group now (SIGKILL), through its keeper when it has one."""
    return _signal_keeper(layout, job_id, signal.SIGUSR1, "killed by the user")


def _signal_keeper(layout: Layout, job_id: str, sig: signal.Signals, why: str) -> Job:
    job = get_job(layout, job_id)
    if job.spec is not None and job.spec.slurm is not None:
        from rltui.jobs.backends import slurm

        return (slurm.stop if sig == signal.SIGTERM else slurm.kill)(layout, job)
    def stop_queued(current: StateFile | None) -> StateFile | None:
        if current is None or current.state is not JobState.QUEUED:
            return None
        current.state = JobState.STOPPED
        current.ended_at = time.time()
        current.note(f"{why} while queued")
        return current

    with gpu_assign.lock(layout):
        if update_state(layout, job_id, stop_queued) is not None:
            return read_job(layout, job_id)
        state = read_state(layout, job_id)
    # Just launched: the keeper has not written its pid yet. A signal needs it, so wait for it.
    deadline = time.monotonic() + KEEPER_PID_WAIT_S
    while (not state.state.final and not state.keeper_pid and keeper_gone(state) is None
           and time.monotonic() < deadline):
        time.sleep(0.05)
        state = read_state(layout, job_id)
    if state.state is JobState.LOST and sig == signal.SIGUSR1 and kill_leftovers(job_id, state):
        return read_job(layout, job.id)
    if state.state.final:
        raise UsageError(f"job {job_id} has already ended ({state.state.value})")
    if not state.keeper_pid and keeper_gone(state) is None:
        raise WorkFailed(f"job {job_id}: its keeper has not started after {KEEPER_PID_WAIT_S:g}s; "
                         "nothing was signalled, try again")
    if keeper_gone(state, job_id=job_id) is None and state.keeper_pid:
        os.kill(state.keeper_pid, sig)  # keeper_gone proved the pid is still this job's keeper
    else:
        # No keeper: the job's leftovers (if any, and only when provably the job's) get SIGKILL.
        reconcile(layout, leftovers=True)
    return read_job(layout, job.id)


def kill_leftovers(job_id: str, state: StateFile) -> bool:
    """SIGKILL to what is left of a lost job's process group, when provably the job's."""
    return ownership.signal_job_group(job_id, state.pgid, state.pgid_start, state.boot_time,
                                      signal.SIGKILL)


def toggle_auto_resume(layout: Layout, job_id: str) -> bool:
    """Turn auto-resume of a training job on or off after launch; returns the new setting.

    job.json stays as written; the override lives in `auto_resume.json`, which the keeper reads
    before each restart decision and `supervise` before resuming a lost job.
    """
    job = get_job(layout, job_id)
    if job.spec is None or not job.spec.kind.trains:
        raise UsageError(f"job {job_id} is not a training job; auto-resume applies to train and resume jobs")
    if job.state is not None and job.state.state.final and job.state.state is not JobState.LOST:
        raise UsageError(f"job {job_id} has already ended ({job.state.state.value})")
    new = not effective_auto_resume(layout, job.spec)
    write_json_atomic(auto_resume_override_path(layout, job_id), {"auto_resume": new})
    return new


def keeper_gone(state: StateFile, now: float | None = None, job_id: str | None = None) -> str | None:
    """Why the keeper of an active job is gone, or None while it lives (its pid still runs the
    keeper that started: same start time when recorded, else a keeper command line)."""
    now = time.time() if now is None else now
    booted = boot_time()
    if state.boot_time and booted and abs(state.boot_time - booted) > 2:
        return "the machine rebooted since the job started"
    if not state.keeper_pid:
        if now - (state.updated_at or 0) > KEEPER_START_GRACE_S:
            return "its keeper never started"
        return None
    if not pid_alive(state.keeper_pid):
        return f"its keeper (pid {state.keeper_pid}) is gone"
    if state.keeper_start is not None:
        if ownership.start_ticks(state.keeper_pid) not in (None, state.keeper_start):
            return f"its keeper's pid {state.keeper_pid} now belongs to another process"
        return None
    cmdline = _cmdline(state.keeper_pid)
    if cmdline is not None and ("rltui.jobs.keeper" not in cmdline
                                or (job_id is not None and job_id not in cmdline)):
        return f"its keeper's pid {state.keeper_pid} now belongs to another process"
    return None


def reconcile(layout: Layout, *, leftovers: bool = False) -> list[str]:
    """Mark lost every active job whose keeper is gone; returns their ids. Cheap: state files only.

    Read-only commands (`status`, the TUI's start) only mark jobs lost: they signal nothing.
    `leftovers` (kill, stop and supervise) also sends SIGKILL to a lost job's process group,
    only when it is provably the job's (rltui.jobs.ownership)."""
    lost = []
    try:
        names = [e.name for e in os.scandir(layout.jobs) if e.is_dir() and not e.name.startswith(".")]
    except FileNotFoundError:
        return lost
    _refresh_slurm(layout)
    active = {s.value for s in JobState if s.active}
    for name in names:
        try:
            raw = read_json(layout.job_state(name))
            if not isinstance(raw, dict) or raw.get("state") not in active or raw.get("slurm_job_id"):
                continue  # most jobs have ended: skip building their records; Slurm owns its jobs
            state = StateFile.from_json(raw)  # the file just read, not a second read
        except (FileNotFoundError, DamagedFile, BadName, KeyError, TypeError, ValueError):
            continue
        if keeper_gone(state, job_id=name) is None:
            continue
        try:
            marked = update_state(layout, name, lambda current, name=name: _mark_lost(current, name))
        except OSError:
            continue
        if marked is None:
            continue  # a keeper that just ended wrote its final state
        if leftovers and marked.pgid:  # leftovers of a job nobody supervises any more
            kill_leftovers(name, marked)
        lost.append(name)
    return lost


def _mark_lost(current: StateFile | None, job_id: str) -> StateFile | None:
    """The transition to lost, checked again under the job's lock on the record as it is now."""
    why = keeper_gone(current, job_id=job_id) if current is not None and current.state.active else None
    if why is None:
        return None
    current.state = JobState.LOST
    current.ended_at = time.time()
    current.note(f"lost: {why}")
    return current


def _refresh_slurm(layout: Layout) -> None:
    """Slurm jobs have no keeper: their state.json follows Slurm's answer (one call, cached)."""
    from rltui.jobs.backends import slurm

    slurm.refresh(layout)


def reconcile_at_start(root: Path) -> list[str]:
    """`rltui` and every `--batch` command call this first; it never makes a command fail."""
    try:
        return reconcile(Layout(root))
    except OSError:
        return []


def read_log(layout: Layout, job_id: str, tail_lines: int | None = None) -> str:
    get_job(layout, job_id)
    try:
        data = layout.job_log(job_id).read_bytes()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", "replace")
    if tail_lines is not None:
        text = "".join(text.splitlines(keepends=True)[-tail_lines:])
    return text


def process_owners(layout: Layout) -> dict[int, tuple[str | None, str | None]]:
    """pid -> (job id, run) for every process in the tree of an active job's command."""
    from rltui.jobs.usage import owners_by_pid

    return owners_by_pid((job.id, job.state.run, job.state.child_pid) for job in list_jobs(layout)
                         if job.state and job.state.state.active)


def gpu_snapshot(layout: Layout, sampler: Sampler | None = None) -> "gpu.GpuSnapshot":
    """A GPU snapshot whose processes name their job and run (for `status` and the TUI)."""
    snap = (sampler or gpu.default_sampler()).sample()
    return gpu.attribute(snap, process_owners(layout)) if snap.gpus else snap


def _cmdline(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return None
