"""Following a job from the command line: stream its output until it ends, and its summary line.

Usage:
    job = wait_and_stream(layout, job_id, sys.stdout)     # until the job has ended
    sys.stderr.write(summary_line(job) + "\n")            # "job ID succeeded: completed"

Shared by the launching commands (rltui.cli.launch), `logs -f` (rltui.cli.logs) and
`stop|kill --wait` (rltui.cli.control). Ctrl-C while waiting asks the job to stop gracefully;
a second Ctrl-C stops waiting at once and leaves the job to its keeper.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

from rltui.errors import UsageError
from rltui.jobs import control
from rltui.jobs.output import shown
from rltui.jobs.records import Job, JobState
from rltui.runs.localfs import Layout
from rltui.text import clean

POLL_S = 0.2
MAX_READ = 16 * 1024 * 1024  # per poll: a burst of output is copied in pieces, not at once
QUEUE_RETRY_S = 5.0


def wait_and_stream(layout: Layout, job_id: str, out: TextIO, *, follow_only: bool = False,
                    offset: int = 0, sleep: Callable[[float], None] = time.sleep,
                    raw: bool = False) -> Job:
    """Copy the job's output to `out` until the job has ended; Ctrl-C asks it to stop, a second
    Ctrl-C returns at once (KeyboardInterrupt) and leaves the job to its keeper. The output is
    made safe to show (rltui.text) unless `raw`."""
    interrupted = False
    next_queue_try = time.monotonic() + QUEUE_RETRY_S
    while True:
        try:
            job = control.read_job(layout, job_id)
            offset = _copy_new(layout, job_id, offset, out, raw=raw)
            if job.phase is None or job.phase.final:
                _copy_new(layout, job_id, offset, out, final=True, raw=raw)
                return job
            if job.phase is JobState.QUEUED and time.monotonic() >= next_queue_try:
                control.start_queued(layout)
                next_queue_try = time.monotonic() + QUEUE_RETRY_S
            elif job.state and job.state.slurm_job_id:
                control.reconcile(layout)  # refreshes Slurm jobs' state (one call, cached)
            elif job.phase.active and job.state and control.keeper_gone(job.state):
                control.reconcile(layout)
            sleep(POLL_S)
        except KeyboardInterrupt:
            if interrupted or follow_only:
                sys.stderr.write(f"\nno longer waiting; job {job_id} is in its keeper's hands: "
                                 f"rltui --batch logs {job_id} -f\n")
                raise
            interrupted = True
            sys.stderr.write(f"\nstopping job {job_id} gracefully (Ctrl-C again to stop waiting)\n")
            try:
                control.stop(layout, job_id)
            except UsageError:
                pass


def _copy_new(layout: Layout, job_id: str, offset: int, out: TextIO, *, final: bool = False,
              raw: bool = False) -> int:
    """Copy whole lines written since `offset` (everything once the job has ended)."""
    try:
        with open(layout.job_log(job_id), "rb") as f:
            f.seek(offset)
            data = f.read() if final else f.read(MAX_READ)
    except (FileNotFoundError, IsADirectoryError):
        return offset
    if not final:
        data = data[:max(data.rfind(b"\n"), data.rfind(b"\r")) + 1]
    if data and raw and hasattr(out, "buffer"):  # --raw: the bytes as written
        out.flush()
        out.buffer.write(data)
        out.buffer.flush()
    elif data:
        out.write(shown(data, raw=raw))
        out.flush()
    return offset + len(data)


def summary_line(job: Job) -> str:
    s = job.state
    if s is None:
        return f"job {job.id}: state unreadable ({job.error})"
    restarts = f", {s.restarts} restart(s)" if s.restarts else ""
    return f"job {job.id} {s.state.value}{restarts}: {clean(s.shown_reason)}".rstrip(": ")  # from a file
