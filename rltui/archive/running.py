"""Whether a run is running, for the one rule that needs it: a running run is never cleaned up.

The index decides (rltui.runs.records.diagnose_run, joined with the run's jobs): a live trainer on
this host, fresh progress from another host, or an active job (queued, starting, running,
restarting) for the run all count as running.
"""

from __future__ import annotations

from rltui.runs.localfs import Layout


def running_runs(layout: Layout) -> set[str]:
    from rltui.runs.index import Index, RunStatus

    snapshot = Index(layout).scan()
    return {name for name, rec in snapshot.runs.items() if rec.status is RunStatus.RUNNING}


def run_is_running(layout: Layout, run: str) -> bool:
    return run in running_runs(layout)
