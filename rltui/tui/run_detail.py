"""The selected run: a summary line, then tabs for its checkpoints, a metrics plot and a live log.

Usage:
    detail = RunDetail(id="detail")
    detail.show_run(record, log_path, log_title)   # log: the active job's output, else train log
    detail.cycle_metric()                          # reward -> loss -> ... -> eval accuracy

Metrics come from logs/train_log.jsonl, read incrementally from at most its last
`HISTORY_BYTES` (a long run's log is never read whole), and from the index's eval records
(consolidated_metrics.csv per dataset).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static, TabbedContent, TabPane

from rltui.runs.records import CheckpointRecord, RunRecord, target_note
from rltui.text import clean
from rltui.tui import cells
from rltui.runs.disk import human_bytes

if TYPE_CHECKING:  # imported with the tabs, after the first frame
    from rltui.tui.log_pane import LogPane

HISTORY_BYTES = 8 * 1024 * 1024
PREFERRED = ("reward_mean", "reward", "mean_reward", "loss", "kl", "accuracy")
SKIP = {"step", "time", "epoch", "timestamp", "elapsed", "rank", "world_size", "target_step"}


@dataclass
class MetricsHistory:
    """Numeric metrics per step from a train log, grown by reading only what was appended."""

    path: Path
    points: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from rltui.tui.log_pane import TailReader

        self.reader = TailReader(self.path, start_bytes=HISTORY_BYTES, chunk_bytes=HISTORY_BYTES)
        self.lock = threading.Lock()

    def update(self) -> bool:
        with self.lock:
            return self._update()

    def _update(self) -> bool:
        changed = False
        for line in self.reader.read_new_lines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            step = obj.get("step") if isinstance(obj, dict) else None
            if not isinstance(step, (int, float)):
                continue
            for key, value in obj.items():
                if key in SKIP or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                self.points.setdefault(clean(key), []).append((float(step), float(value)))
                changed = True
        return changed

    def names(self) -> list[str]:
        keys = list(self.points)
        return [k for k in PREFERRED if k in keys] + sorted(k for k in keys if k not in PREFERRED)


def checkpoint_cells(ckpt: CheckpointRecord, run: RunRecord) -> list[object]:
    if ckpt.complete:
        state = Text("✓ complete" + (" (latest)" if ckpt.is_latest else ""), style="green")
    else:
        state = Text(f"✗ {ckpt.reason or 'incomplete'}", style="red")
    evals = []
    for ev in run.evals.values():
        for s in ev.steps:
            if s.step == ckpt.step:
                of = f" of {s.n}" if s.n else ""  # how many questions the number is from
                evals.append(f"{ev.dataset} {cells.percent(s.accuracy)}{of}" if s.error is None
                             else f"{ev.dataset} failed")
    return [str(ckpt.step), state, human_bytes(ckpt.size_bytes, "–"), ", ".join(evals) or "–"]


def _model_text(model: str | None) -> str:
    """A Hub model pinned to its commit ('org/name@COMMIT') with the commit shortened to 7."""
    name, at, revision = (model or "").partition("@")
    return f"{name}@{revision[:7]}" if at and len(revision) == 40 else (model or "")


def summary_text(run: RunRecord) -> Text:
    cfg = run.config_summary
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(f"{run.name} ", style="bold")
    text.append(f"{run.status.symbol} {run.status.value}: {run.status_reason}")
    model = _model_text(cfg.model)
    start = run.provenance.started_from if run.provenance else ""
    bits = [f"model {model}" if model else "", start, f"data {cfg.dataset}" if cfg.dataset else "",
            f"lr {cfg.learning_rate:g}" if cfg.learning_rate else "",
            f"from {run.parent.get('run')}@{run.parent.get('step')}" if run.parent else "",
            f"target {run.target_step}{target_note(run.target_history)}" if len(run.target_history) > 1 else ""]
    extra = "  ".join(b for b in bits if b)
    if extra:
        text.append("\n" + extra, style="dim")
    if run.error:
        text.append(f"\n{run.error}", style="red")
    if run.writer is not None and run.status.value == "running":
        text.append(f"\nwritten by {run.writer.describe()}", style="dim")
    return text


class RunDetail(Vertical):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.run: RunRecord | None = None
        self.history: MetricsHistory | None = None
        self.metric_index = 0
        self.log_pane: LogPane | None = None  # made with the tabs
        self.log_to_follow: tuple[Path | None, str] = (None, "")
        self.tabs_mounted = False

    def compose(self) -> ComposeResult:
        yield Static("no run selected", id="run-summary")
        # the tabs (checkpoints, plot, log) come in mount_hidden, after the first frame: until the
        # full scan no run has checkpoints to show, and the first frame is the runs list

    def compose_tabs(self) -> ComposeResult:
        from rltui.tui.log_pane import LogPane
        from rltui.tui.plot import MetricsPlot

        self.log_pane = LogPane(id="run-log")
        with TabbedContent(id="detail-tabs"):
            with TabPane("Checkpoints", id="tab-checkpoints"):
                yield DataTable(id="checkpoints", cursor_type="row", zebra_stripes=True)
            with TabPane("Plot", id="tab-plot"):
                yield MetricsPlot(id="plot")
            with TabPane("Log", id="tab-log"):
                yield self.log_pane

    async def mount_hidden(self) -> None:
        await self.mount_compose(self.compose_tabs())
        table = self.query_one("#checkpoints", DataTable)
        for key, label in (("step", "step"), ("state", "state"), ("size", "size"), ("eval", "eval accuracy")):
            table.add_column(label, key=key)
        self.tabs_mounted = True
        # a run chosen before the tabs were there
        self._fill_checkpoints(self.run, keep_cursor=False)
        self.log_pane.follow(*self.log_to_follow)
        self._draw_plot()

    @property
    def selected_step(self) -> int | None:
        """The checkpoint under the cursor of the checkpoints table."""
        if not self.tabs_mounted:
            return None
        table = self.query_one("#checkpoints", DataTable)
        if self.run is None or not self.run.checkpoints or table.row_count == 0:
            return None
        row = table.coordinate_to_cell_key((table.cursor_row, 0)).row_key
        return int(row.value) if row and row.value else None

    def show_run(self, run: RunRecord | None, log_path: Path | None = None, log_title: str = "") -> None:
        if run is None and self.run is None and log_path is None:
            return  # nothing shown changes (the first frame lists the runs before any is read whole)
        same = run is not None and self.run is not None and run.name == self.run.name
        self.run = run
        self.query_one("#run-summary", Static).update(summary_text(run) if run else "no run selected")
        self._fill_checkpoints(run, keep_cursor=same)
        self.log_to_follow = (log_path, log_title)
        if self.log_pane is not None:
            self.log_pane.follow(log_path, log_title)
        if run is None:
            self.history = None
        elif not same or self.history is None:
            self.history = MetricsHistory(run.path / "logs" / "train_log.jsonl")
        self._load_history(self.history)

    def _fill_checkpoints(self, run: RunRecord | None, keep_cursor: bool) -> None:
        if not self.tabs_mounted:
            return  # mount_hidden fills the table
        table = self.query_one("#checkpoints", DataTable)
        keep = self.selected_step if table.row_count and keep_cursor else None
        table.clear()
        if run is None:
            return
        for ckpt in sorted(run.checkpoints, key=lambda c: c.step, reverse=True):
            table.add_row(*checkpoint_cells(ckpt, run), key=str(ckpt.step))
        steps = [c.step for c in sorted(run.checkpoints, key=lambda c: c.step, reverse=True)]
        table.move_cursor(row=steps.index(keep) if keep in steps else 0)

    @work(thread=True, exclusive=True, group="metrics-history")
    def _load_history(self, history: MetricsHistory | None) -> None:
        if history is not None:
            history.update()
        if self.is_attached:
            self.app.call_from_thread(self._draw_plot)

    def series_names(self) -> list[str]:
        names = self.history.names() if self.history else []
        if self.run is not None:
            names += [f"eval accuracy {d}" for d in sorted(self.run.evals)]
        return names or ["reward"]

    def cycle_metric(self, by: int = 1) -> str:
        """Plot the next metric (`by` -1: the previous one); return its name."""
        names = self.series_names()
        self.metric_index = (self.metric_index + by) % len(names)
        self._draw_plot()
        return names[self.metric_index]

    @property
    def metric(self) -> str:
        names = self.series_names()
        return names[self.metric_index % len(names)]

    def show_metric(self, name: str) -> None:
        names = self.series_names()
        if name in names:
            self.metric_index = names.index(name)
            self._draw_plot()

    def _draw_plot(self) -> None:
        from rltui.tui.plot import MetricsPlot, Series

        names = self.series_names()
        name = names[self.metric_index % len(names)]
        if name.startswith("eval accuracy ") and self.run is not None:
            ev = self.run.evals.get(name.removeprefix("eval accuracy "))
            points = [(float(s.step), s.accuracy) for s in ev.steps if s.accuracy is not None] if ev else []
        else:
            points = list(self.history.points.get(name, [])) if self.history else []
        for plot in self.query("#plot").results(MetricsPlot):  # none while the app shuts down
            plot.show_series(Series(name, points))
