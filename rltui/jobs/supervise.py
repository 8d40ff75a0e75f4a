"""`rltui --batch supervise`: keep jobs going when nobody is watching.

Usage:
    rltui --batch supervise [--interval 10] [--once]

Each pass: reconcile (a job whose keeper died, or that ran before the last reboot, becomes lost),
resume every lost training job whose policy has auto-resume on (from its latest complete
checkpoint; one without a checkpoint is noted "not resumed") unless its run has finished,
another training job of the run is queued or active (an eval or sync of it is no obstacle: they
do not write the run) or another process holds the run's writer lock (a trainer started by hand;
the job is resumed once it lets go, if the run is not finished), then start queued jobs whose
GPUs are free. It is what a user puts under systemd or tmux; it runs until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass, field, replace

from rltui.jobs import builders, control
from rltui.errors import UsageError
from rltui.gpu import Sampler
from rltui.jobs.records import Job, JobKind, JobState, StateFile, effective_auto_resume, update_state
from rltui.runs import writer_lock
from rltui.runs.localfs import DamagedFile, Layout, read_json


@dataclass
class Pass:
    """What one supervise pass did."""

    lost: list[str] = field(default_factory=list)
    resumed: list[tuple[str, str]] = field(default_factory=list)  # (lost job, new job)
    started: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"job {j} lost: its keeper is gone" for j in self.lost]
        out += [f"job {old} resumed as job {new}" for old, new in self.resumed]
        out += [f"started queued job {j}" for j in self.started]
        return out + self.problems


def supervise_once(layout: Layout, sampler: Sampler | None = None) -> Pass:
    result = Pass(lost=control.reconcile(layout, leftovers=True))
    all_jobs = control.list_jobs(layout)
    # only a training job writes the run: an eval or a sync of it running for hours must not hold
    # its resume back
    busy_runs = {j.spec.run for j in all_jobs if j.spec and j.spec.run and j.spec.kind.trains and j.unended}
    for job in all_jobs:
        if not _wants_resume(layout, job) or job.spec.run in busy_runs:
            continue
        if writer_lock.holder(layout.run_dir(job.spec.run)) is not None:
            continue  # a trainer nobody launched through rltui writes it: never a second writer
        try:
            new = resume_lost(layout, job, sampler)
        except Claimed:
            continue
        except UsageError as e:  # noted "not resumed" on the lost job
            result.problems.append(f"job {job.id}: cannot resume: {e}")
            continue
        busy_runs.add(job.spec.run)
        result.resumed.append((job.id, new.id))
    result.started = control.start_queued(layout, sampler)
    return result


def _wants_resume(layout: Layout, job: Job) -> bool:
    spec, state = job.spec, job.state
    if spec is None or state is None or state.state is not JobState.LOST or state.resumed_by:
        return False
    if spec.slurm is not None:
        return False  # Slurm requeues its own jobs (rltui.jobs.backends.slurm_attempt)
    if not (spec.kind.trains and spec.run and effective_auto_resume(layout, spec)):
        return False
    if any(r.startswith("not resumed:") for r in state.reasons):
        return False
    try:
        status = read_json(layout.run_status(spec.run))
    except (OSError, DamagedFile):
        status = {}
    return not (isinstance(status, dict) and status.get("phase") == "completed")


def resume_lost(layout: Layout, job: Job, sampler: Sampler | None = None) -> Job:
    """Start a job that carries on the lost training job `job`, and note it on the lost one.

    The lost job is claimed first, under its lock (records.update_state): of two supervise
    passes at once only one resumes it."""
    spec = job.spec
    assert spec is not None and spec.run is not None
    latest = builders.latest_step(layout, spec.run)
    if latest is None or not spec.resume_argv:
        _mark_resumed(layout, job.id, "not resumed: no complete checkpoint to resume from", None)
        raise UsageError("no complete checkpoint to resume from")
    new_spec = spec.with_changes(
        id=builders.new_job_id(JobKind.RESUME), kind=JobKind.RESUME,
        argv=tuple(builders.resume_command(layout, spec.resume_argv, spec.run, latest)),
        parent_job=spec.id, created=time.time(), restart=replace(spec.restart, auto_resume=True),
        title=f"resume {spec.run} from step {latest} (job {spec.id} was lost)",
    )

    def claim(current: StateFile | None) -> StateFile | None:
        if current is None or current.state is not JobState.LOST or current.resumed_by:
            return None
        current.resumed_by = new_spec.id
        current.note(f"resumed by supervise as job {new_spec.id}")
        return current

    if update_state(layout, job.id, claim) is None:
        raise Claimed(f"job {job.id} was resumed by another supervise meanwhile")
    try:
        return control.launch(layout, new_spec, sampler)
    except UsageError as e:  # it would fail the same way next time
        _mark_resumed(layout, job.id, f"not resumed: {e}", None)
        raise
    except BaseException as e:  # e.g. a full disk: the next pass tries again
        _mark_resumed(layout, job.id, f"resume failed, to be tried again: {e}", None)
        raise


class Claimed(Exception):
    """Another supervise pass resumed the lost job first."""


def _mark_resumed(layout: Layout, job_id: str, reason: str, new_id: str | None) -> None:
    def note(current: StateFile | None) -> StateFile | None:
        if current is None:
            return None
        current.resumed_by = new_id
        current.note(reason)
        return current

    update_state(layout, job_id, note)


def supervise(layout: Layout, interval_s: float = 10.0, once: bool = False,
              sampler: Sampler | None = None) -> int:
    stopping = False

    def on_term(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    every = "one pass" if once else f"every {interval_s:g}s"
    print(f"supervising jobs in {layout.jobs}: {every}", flush=True)
    while not stopping:
        for line in supervise_once(layout, sampler).lines():
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}", flush=True)
        if once:
            break
        deadline = time.monotonic() + interval_s
        while not stopping and time.monotonic() < deadline:
            time.sleep(min(0.5, interval_s))
    if stopping:
        sys.stderr.write("supervise: stopped\n")
    return 0
