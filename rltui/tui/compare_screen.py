"""The compare screen: the marked runs' curves of one metric overlaid, with best/min/max/last and
the config keys whose values differ.

Usage:
    app.push_screen(CompareScreen(root, ["run_A", "run_B"], metric="reward_mean"))
    screen.set_runs(["run_C", "run_D"], "loss")     # an installed screen, shown again

The app installs one and shows it again for the next comparison (composing a screen costs more
than drawing 20 curves).

Keys: m / M next / previous metric, escape or q back. The data comes from the metrics store
(rltui.runs.compare) in a thread worker; the screen never reads a file on the UI thread.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.containers import VerticalScroll
from textual.widgets import Static

from rltui.runs.store import Store
from rltui.tui.overlay_plot import OverlayPlot, colour_of, marker_of, render_overlay
from rltui.tui.plot import Series

MAX_KEY_COLUMNS = 6  # differing config keys shown as columns; the title says how many more
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _plain(value: object) -> str:
    """A value from a file as one line of plain text (no escape sequences reach the terminal)."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return _CONTROL.sub("?", str(value))


class CompareScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("q", "app.pop_screen", "Back", show=False),
        Binding("m", "cycle_metric(1)", "Metric"),
        Binding("M", "cycle_metric(-1)", "Metric back", show=False),
    ]
    DEFAULT_CSS = """
    CompareScreen { layout: vertical; }
    CompareScreen #compare-title { height: 1; padding: 0 1; background: $boost; }
    CompareScreen #compare-plot { height: 2fr; min-height: 8; padding: 0 1; }
    CompareScreen #compare-legend { height: 1fr; min-height: 4; }
    """

    class Loaded(Message):
        def __init__(self, metric: str, metrics: list[str], comparison: object, error: str | None,
                     drawn: tuple[tuple[int, int], Text] | None = None) -> None:
            super().__init__()
            self.metric, self.metrics, self.comparison, self.error = metric, metrics, comparison, error
            self.drawn = drawn

    def __init__(self, root: Path, runs: list[str], metric: str | None = None) -> None:
        super().__init__()
        self.root = Path(root)
        self.runs = list(runs)
        self.metric = metric
        self.metrics: list[str] = []
        self.drawn_metric: str | None = None  # what the plot shows (tests and the bench wait on it)
        self._store: Store | None = None  # kept open between comparisons (one load at a time)
        self._store_lock = threading.Lock()
        self.legend_header: list[str] = []
        self.legend_rows: list[list[str]] = []  # per run: name, best, @step, min, max, last, @step, keys

    def compose(self) -> ComposeResult:
        yield Static(f"Compare {len(self.runs)} runs: loading…", id="compare-title")
        yield OverlayPlot(id="compare-plot")
        with VerticalScroll(id="compare-legend"):
            yield Static(id="compare-table")

    def on_mount(self) -> None:
        self.load(self.metric)

    def set_runs(self, runs: list[str], metric: str | None) -> None:
        """Compare these runs next; loaded when the screen shows (again)."""
        self.runs, self.metric, self.drawn_metric = list(runs), metric, None
        if self.is_mounted:
            self.query_one("#compare-title", Static).update(f"Compare {len(self.runs)} runs: loading…")
            self.query_one(OverlayPlot).show("", [])  # not the last comparison's curves meanwhile
            self.load(metric)

    @work(thread=True, exclusive=True, group="compare")
    def load(self, metric: str | None) -> None:
        from rltui.runs.compare import DEFAULT_METRICS as DEFAULTS, compare

        try:
            with self._store_lock:
                if self._store is not None and self._store.gone():  # deleted: rebuilt by ingestion
                    self._store.close()
                    self._store = None
                store = self._store = self._store or Store.open(self.root)
                metrics = store.metrics_of(self.runs)
                have = set(metrics)
                chosen = metric if metric in have else next(
                    (m for m in (*DEFAULTS, *metrics) if m in have), None)
                result = compare(store, self.runs, [chosen]) if chosen else None
            drawn = None
            if result is not None:  # the chart too, here rather than on the UI thread
                series = self._series(result, chosen)
                plot = self.query_one(OverlayPlot)
                size = (plot.content_size.width, plot.content_size.height)
                if size[0] > 0 and size[1] > 0:
                    drawn = (size, render_overlay(chosen, series, *size))
            self.post_message(self.Loaded(chosen or "", metrics, result, None, drawn))
        except (sqlite3.Error, OSError) as e:
            self._store = None
            self.post_message(self.Loaded(metric or "", [], None, f"metrics store: {e}"))

    def on_unmount(self) -> None:
        if self._store is not None:
            self._store.close()

    def on_compare_screen_loaded(self, message: Loaded) -> None:
        title = self.query_one("#compare-title", Static)
        if message.error or message.comparison is None:
            title.update(Text(f"Compare {len(self.runs)} runs: {message.error or 'no metrics logged yet'}"))
            return
        self.metric, self.metrics = message.metric, message.metrics
        c = message.comparison
        size, drawn = message.drawn or (None, None)
        self.query_one(OverlayPlot).show(self.metric, self._series(c, self.metric), drawn, size)
        keys = list(c.differing)
        more = f", {len(keys) - MAX_KEY_COLUMNS} more config keys differ" if len(keys) > MAX_KEY_COLUMNS else ""
        position = f"{self.metrics.index(self.metric) + 1}/{len(self.metrics)}" if self.metric in self.metrics else ""
        title.update(Text(f"Compare {len(self.runs)} runs · {self.metric} {position} · "
                          f"{len(keys)} config keys differ{more} · m/M metric, esc back", no_wrap=True))
        self._fill_table(c, keys[:MAX_KEY_COLUMNS])
        self.call_after_refresh(self._mark_drawn, self.metric)

    def _series(self, c: object, metric: str) -> list[Series]:
        return [Series(run, list(zip(*c.series[metric].get(run, ([], []))))) for run in self.runs]

    def _mark_drawn(self, metric: str) -> None:
        self.drawn_metric = metric

    def _fill_table(self, c: object, keys: list[str]) -> None:
        """The legend: one line per run (its marker, best/min/max/last, the differing keys);
        plain text in columns, cheaper to lay out than a DataTable when the screen shows."""
        summaries = c.summaries[self.metric]
        header = ["", "run", "best", "@step", "min", "max", "last", "@step", *keys]
        rows = []
        for run in self.runs:
            s = summaries.get(run)
            values = (s.best, s.best_step, s.min, s.max, s.last, s.last_step) if s else (None,) * 6
            rows.append(["", run, *(_plain(v) for v in values), *(_plain(c.differing[k].get(run)) for k in keys)])
        widths = [max(len(h), *(len(r[j]) for r in rows)) for j, h in enumerate(header)]
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip() + "\n", style="bold")
        for i, row in enumerate(rows):
            text.append(marker_of(i), style=f"bold {colour_of(i)}")
            text.append(" " * (widths[0] + 1) + "  ".join(v.ljust(w) for v, w in zip(row[1:], widths[1:])).rstrip() + "\n")
        self.legend_rows = [r[1:] for r in rows]
        self.legend_header = header
        self.query_one("#compare-table", Static).update(text)

    def action_cycle_metric(self, step: int) -> None:
        if not self.metrics:
            return
        i = self.metrics.index(self.metric) if self.metric in self.metrics else -1
        self.drawn_metric = None
        self.load(self.metrics[(i + step) % len(self.metrics)])
