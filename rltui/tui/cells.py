"""How values read in a table cell: ages, sizes, accuracies, statuses with their symbols.

Every status is a symbol plus a word, so the tables read the same with NO_COLOR; colour is
only added on top (a Rich style per status).
"""

from __future__ import annotations

import time

from rich.text import Text

from rltui.runs.records import JobState, RunStatus

RUN_STYLE = {
    RunStatus.RUNNING: "bold green",
    RunStatus.COMPLETED: "cyan",
    RunStatus.STOPPED: "yellow",
    RunStatus.CRASHED: "bold red",
    RunStatus.UNKNOWN: "dim",
}

JOB_SYMBOL = {
    JobState.QUEUED: "…",
    JobState.STARTING: "…",
    JobState.RUNNING: "▶",
    JobState.STOPPING: "◼",
    JobState.RESTARTING: "↻",
    JobState.SUCCEEDED: "✓",
    JobState.FAILED: "✗",
    JobState.STOPPED: "■",
    JobState.LOST: "?",
    JobState.UNKNOWN: "?",
}

JOB_STYLE = {
    JobState.RUNNING: "bold green",
    JobState.RESTARTING: "bold yellow",
    JobState.STOPPING: "yellow",
    JobState.SUCCEEDED: "cyan",
    JobState.FAILED: "bold red",
    JobState.LOST: "bold red",
    JobState.STOPPED: "yellow",
}


def run_status_cell(status: RunStatus, stalled: bool = False) -> Text:
    word = "stalled" if stalled else status.value
    return Text(f"{status.symbol} {word}", style=RUN_STYLE.get(status, ""))


def job_state_cell(state: JobState) -> Text:
    return Text(f"{JOB_SYMBOL.get(state, '?')} {state.value}", style=JOB_STYLE.get(state, ""))


def dash(value: object) -> str:
    return "–" if value is None or value == "" else str(value)


def number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"


def percent(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "–"
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.0f}d"


def age(when: float | None, now: float | None = None) -> str:
    if when is None:
        return "–"
    return duration((now if now is not None else time.time()) - when)


def step_of(step: int | None, target: int | None) -> str:
    if step is None and target is None:
        return "–"
    return f"{dash(step)}/{dash(target)}"


def gpus(ids: list[int] | None) -> str:
    return "cpu" if not ids else ",".join(str(i) for i in ids)
