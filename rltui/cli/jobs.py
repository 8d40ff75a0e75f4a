"""`rltui --batch jobs [--run RUN] [--active] [--json]`: list jobs: state, run, restarts, GPUs,
GPU-hours, the CPU and memory of a running job's processes now, and the last reason. `--run` keeps
one run's jobs, `--active` those not yet ended (queued or active): a busy box has thousands.

`job_json` is the `--json` form of one job, shared with the launching commands' `--json`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from rltui.gpu import fmt
from rltui.jobs import control
from rltui.jobs.records import Job
from rltui.jobs.usage import TreeStats, tree_stats
from rltui.errors import UsageError
from rltui.runs.localfs import Layout, validate_run_name
from rltui.text import clean


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("jobs", parents=parents, help="list jobs",
                              description="List jobs: state, restarts, last reason, GPUs, usage.")
    p.add_argument("--run", metavar="RUN", help="only this run's jobs")
    p.add_argument("--active", action="store_true", help="only jobs not yet ended (queued or active)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_jobs)


def job_json(job: Job, resources: TreeStats | None = None) -> dict[str, Any]:
    """The `--json` form of a job: its spec and state as in job.json and state.json, and for a
    running job the CPU and memory of its processes now."""
    return {
        "id": job.id,
        "spec": job.spec.to_json() if job.spec else None,
        "state": job.state.to_json() if job.state else None,
        "resources": resources.__dict__.copy() if resources else None,
        "error": job.error,
    }


def cmd_jobs(args: argparse.Namespace) -> int:
    layout = Layout(args.root)
    if args.run is not None:
        validate_run_name(args.run)
        if not layout.run_dir(args.run).is_dir():
            raise UsageError(f"bad --run: no run named {args.run!r} in {layout.training_runs}")
    found = [j for j in control.list_jobs(layout)
             if (args.run is None or (j.spec is not None and j.spec.run == args.run))
             and (not args.active or j.unended)]
    running = {j.id: j.state.child_pid for j in found if j.state and j.state.state.active}
    stats = tree_stats(running) if running else {}
    if args.json:
        print(json.dumps([job_json(j, stats.get(j.id)) for j in found], indent=2))
        return 0
    if not found:
        which = " ".join(filter(None, ["active" if args.active else "", "jobs",
                                       f"of run {args.run}" if args.run else ""]))
        print(f"no {which} in {layout.jobs}")
        return 0
    print(f"{'JOB':<28} {'STATE':<10} {'RUN':<26} {'RESTARTS':>8} {'GPUS':<6} {'GPU-H':>6} "
          f"{'CPU%':>5} {'RSS MiB':>7}  LAST REASON")
    for j in found:
        s = j.state
        gpus = ",".join(map(str, s.gpus)) if s and s.gpus else "-"
        gpu_h = f"{s.usage.gpu_seconds / 3600:.2f}" if s else "-"
        t = stats.get(j.id)
        cpu = fmt(t.cpu_percent) if t else "-"
        rss = fmt(t.rss_mib) if t else "-"
        reason = s.shown_reason if s else (j.error or "")
        if s and s.restarts and s.last_restart_cause and s.last_restart_cause not in reason:
            reason += f" (last restart: {s.last_restart_cause})"
        run = clean((j.spec.run if j.spec else None) or "-")  # from files: shown made safe
        print(f"{j.id:<28} {(s.state.value if s else 'damaged'):<10} {run:<26} "
              f"{(s.restarts if s else 0):>8} {gpus:<6} {gpu_h:>6} {cpu:>5} {rss:>7}  {clean(reason)}")
    return 0
