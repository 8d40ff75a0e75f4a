"""Whether a run is running, for the rule that needs it: a running run is never cleaned up, and
neither is one whose checkpoints an evaluation reads now.

The index decides running (rltui.runs.records.diagnose_run, joined with the run's training jobs):
a live trainer on this host, fresh progress from another host, or an active training job
(queued, starting, running, restarting) for the run all count as running. An eval job not yet
ended reads the run's checkpoints: `cleanup_refusal` says so too, and the live archive's
retention keeps every checkpoint while one runs.
"""

from __future__ import annotations

from rltui.runs.localfs import Layout


def running_runs(layout: Layout) -> set[str]:
    from rltui.runs.index import Index, RunStatus

    snapshot = Index(layout).scan()
    return {name for name, rec in snapshot.runs.items() if rec.status is RunStatus.RUNNING}


def run_is_running(layout: Layout, run: str) -> bool:
    return run in running_runs(layout)


def evaluating(layout: Layout, run: str) -> str | None:
    """The id of a job not yet ended that evaluates `run`'s checkpoints, or None."""
    from rltui.jobs.records import JobKind, unended_jobs

    readers = unended_jobs(layout, run, frozenset({JobKind.EVAL}))
    return readers[0].id if readers else None


def cleanup_refusal(layout: Layout, run: str) -> str | None:
    """Why `run`'s local files may not be deleted now, or None."""
    if run_is_running(layout, run):
        return f"run {run} is running"
    reader = evaluating(layout, run)
    return f"run {run} is being evaluated (job {reader})" if reader else None
