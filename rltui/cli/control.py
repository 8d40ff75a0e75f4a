"""Job control commands: `rltui --batch stop JOB|RUN [--wait]` and `rltui --batch kill JOB|RUN [--wait]`.

stop asks the job to end gracefully (a training run saves at its next step boundary, then
exits); kill sends SIGKILL to its processes now. With --wait the command returns when the job
has ended and prints its summary line. A run's name stands for its active job
(control.job_for): of a training job and its live archive, the training job.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

from rltui.cli.follow import POLL_S, summary_line
from rltui.jobs import control
from rltui.jobs.records import Job
from rltui.runs.localfs import Layout


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    for name, func, what in (("stop", cmd_stop, "stop a job gracefully (save, then exit)"),
                             ("kill", cmd_kill, "kill a job's processes now (SIGKILL)")):
        p = subparsers.add_parser(name, parents=parents, help=what, description=what.capitalize() + ".")
        p.add_argument("job", metavar="JOB|RUN",
                       help="a job id, or a run's name: its active job (of several, its training job)")
        p.add_argument("--wait", action="store_true", help="return when the job has ended")
        p.set_defaults(func=func)


def cmd_stop(args: argparse.Namespace) -> int:
    return _control(args, control.stop, "stop requested")


def cmd_kill(args: argparse.Namespace) -> int:
    return _control(args, control.kill, "kill requested")


def _control(args: argparse.Namespace, action: Callable[[Layout, str], Job], what: str) -> int:
    layout = Layout(args.root)
    job_id = control.job_for(layout, args.job, active_only=True)
    job = action(layout, job_id)
    print(f"job {job.id}: {what} ({job.phase.value if job.phase else 'unknown'})")
    if not args.wait:
        return 0
    while not (job.phase is None or job.phase.final):
        time.sleep(POLL_S)
        if job.state is not None and job.state.slurm_job_id:
            control.reconcile(layout)  # a Slurm job's state comes from Slurm (one call, cached)
        job = control.read_job(layout, job_id)
    print(summary_line(job))
    return 0
