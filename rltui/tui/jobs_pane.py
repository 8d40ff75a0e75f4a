"""The jobs pane: every job (state, kind, run, GPUs, restarts and last reason, elapsed) and its log.

Usage:
    pane = JobsPane(id="jobs-pane")
    pane.set_jobs(snapshot.jobs)      # or pane.update_jobs({job_id: record or None})
    pane.selected                     # the job id under the cursor

Active jobs sort first, then the newest.
"""

from __future__ import annotations

import time
from typing import Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable

from rltui.runs.records import JobRecord
from rltui.text import clean
from rltui.tui import cells
from rltui.tui.log_pane import LogPane
from rltui.tui.messages import drawable

# (key, label, width): fixed widths spare measuring every cell of a long job list
COLUMNS = [("state", "state", 12), ("id", "job", 26), ("kind", "kind", 6), ("run", "run", 23),
           ("gpus", "GPUs", 5), ("restarts", "rst", 3), ("reason", "last reason", 40),
           ("elapsed", "elapsed", 7)]


def elapsed(job: JobRecord, now: float) -> float | None:
    start = job.started_at or job.created
    if start is None:
        return None
    return (job.ended_at if job.state.ended and job.ended_at else now) - start


def job_cells(job: JobRecord, now: float) -> list[object]:
    reason = job.reason
    if job.orphaned:
        reason = "keeper gone: " + reason if reason else "keeper gone"
    # plain Text, not markup: a reason from a file may hold '[' (and a '[/]' would not parse)
    return [
        cells.job_state_cell(job.state),
        job.id,
        Text(cells.dash(job.kind), end=""),
        Text(cells.dash(job.run), end=""),
        cells.gpus(job.gpus),
        str(job.restarts),
        Text(reason[:60] or "–", end=""),
        cells.duration(elapsed(job, now)),
    ]


def job_order(job: JobRecord) -> tuple[bool, float]:
    return (not job.state.active, -(job.created or job.started_at or 0.0))


class JobsTable(DataTable):
    class JobChosen(Message):
        def __init__(self, job_id: str | None) -> None:
            super().__init__()
            self.job_id = job_id

    def __init__(self, clock: Callable[[], float] = time.time, **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)  # type: ignore[arg-type]
        self.clock = clock
        self.shown: list[str] = []

    def on_mount(self) -> None:
        for key, label, width in COLUMNS:
            self.add_column(label, key=key, width=width)

    @property
    def selected(self) -> str | None:
        if 0 <= self.cursor_row < len(self.shown):
            return self.shown[self.cursor_row]
        return None

    def show(self, jobs: list[JobRecord]) -> None:
        keep = self.selected
        ordered = sorted(jobs, key=job_order)
        now = self.clock()
        self.clear()
        for job in ordered:
            self.add_row(*job_cells(job, now), key=job.id)
        self.shown = [j.id for j in ordered]
        if keep in self.shown:
            self.move_cursor(row=self.shown.index(keep))
        if self.selected != keep:
            self.post_message(self.JobChosen(self.selected))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        self.post_message(self.JobChosen(event.row_key.value if event.row_key else None))


class JobsPane(Vertical):
    """The jobs table over the selected job's output.log."""

    def __init__(self, clock: Callable[[], float] = time.time, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.clock = clock
        self.jobs: dict[str, JobRecord] = {}

    def compose(self) -> ComposeResult:
        yield JobsTable(self.clock, id="jobs-table")
        yield LogPane(id="job-log")

    @property
    def table(self) -> JobsTable:
        return self.query_one(JobsTable)

    def on_mount(self) -> None:
        self.call_after_refresh(self._show)  # jobs may have arrived before the pane was mounted

    @property
    def selected(self) -> JobRecord | None:
        job_id = self.table.selected if drawable(self) else None
        return self.jobs.get(job_id) if job_id else None

    def set_jobs(self, jobs: list[JobRecord]) -> None:
        self.jobs = {j.id: j for j in jobs}
        self._show()

    def update_jobs(self, changed: dict[str, JobRecord | None]) -> None:
        """Jobs that changed (None: gone), then one redraw of the table."""
        for job_id, job in changed.items():
            if job is None:
                self.jobs.pop(job_id, None)
            else:
                self.jobs[job_id] = job
        self._show()

    def _show(self) -> None:
        if drawable(self):
            self.table.show(list(self.jobs.values()))

    def on_jobs_table_job_chosen(self, event: JobsTable.JobChosen) -> None:
        job = self.jobs.get(event.job_id) if event.job_id else None
        log = self.query_one("#job-log", LogPane)
        if job is None or job.path is None:
            log.follow(None, "no job selected")
        else:
            title = f"job {job.id} output"
            why = job.reason
            if job.state.ended and why:  # the whole reason, which the table's column cuts short
                title += f" — {job.state.value}: {clean(why)}"
            log.follow(job.path / "output.log", title)
            log.border_title = title  # follow() keeps an unchanged path's title
