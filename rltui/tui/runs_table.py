"""The runs table: one row per training run, filtered and sorted, updated one row at a time.

Usage:
    table = RunsTable(id="runs")
    table.set_runs(snapshot.runs)         # everything
    table.update_run(record)              # one run changed (the watcher said so)
    table.filter_text = "crashed arith"   # every word must match name, status or dataset
    table.cycle_sort()                    # next column; `reverse_sort()` flips the order

The row key is the run name, so the cursor stays on the same run when rows move. The run the user
chose is remembered while a filter hides it, and selected again when it shows. The sort column's
header carries ▲ (ascending) or ▼. Below WIDE_MIN columns the table shows NARROW_COLUMNS only,
so that at 80x24 it fits without scrolling sideways.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist

from rltui.runs.records import RunRecord
from rltui.tui import cells


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    sort_key: Callable[[RunRecord], object]
    width: int | None = None  # fixed widths spare measuring every cell of a 1,000-row table


def _last_reward(run: RunRecord) -> float | None:
    for key in ("reward", "mean_reward", "reward_mean", "rewards/mean"):
        value = run.last_metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def best_eval(run: RunRecord) -> tuple[float | None, str | None]:
    """The best accuracy over every dataset this run was evaluated on, and that dataset."""
    best: tuple[float | None, str | None] = (None, None)
    for ev in run.evals.values():
        if ev.best_accuracy is not None and (best[0] is None or ev.best_accuracy > best[0]):
            best = (ev.best_accuracy, ev.dataset)
    return best


def _none_last(value: object) -> tuple[bool, object]:
    return (value is None, value if value is not None else 0)


COLUMNS = [
    Column("status", "status", lambda r: r.status.value, 11),
    Column("name", "run", lambda r: r.name, 23),
    Column("dataset", "data", lambda r: r.dataset or "", 12),
    Column("step", "step", lambda r: _none_last(r.step), 7),
    Column("ckpt", "ckpt", lambda r: _none_last(r.latest_complete), 5),
    Column("reward", "reward", lambda r: _none_last(_last_reward(r)), 6),
    Column("eval", "best eval", lambda r: _none_last(best_eval(r)[0]), 16),
    Column("restarts", "rst", lambda r: r.restarts, 3),
    Column("gpu_h", "GPU-h", lambda r: r.gpu_seconds, 6),
    Column("cost", "cost", lambda r: _none_last(r.cost), 7),
    Column("age", "age", lambda r: -(r.updated or r.started or 0.0), 5),
]
COLUMN_KEYS = [c.key for c in COLUMNS]
# what fits in 80 columns, even beside a scrollbar: the columns shown there, and narrower widths
NARROW_COLUMNS = {"status": None, "name": None, "step": None, "reward": None, "eval": 12, "age": None}
WIDE_MIN = 120  # table widths from here on show every column


def run_matches(run: RunRecord, query: str) -> bool:
    """Every word of `query` appears (case-insensitively) in the run's name, status or dataset."""
    haystack = " ".join(
        [run.name, run.status.value, "stalled" if run.stalled else "", run.dataset or ""]
    ).lower()
    return all(word in haystack for word in query.lower().split())


def sort_runs(runs: list[RunRecord], key: str, reverse: bool = False) -> list[RunRecord]:
    column = next(c for c in COLUMNS if c.key == key)
    return sorted(runs, key=column.sort_key, reverse=reverse)  # type: ignore[arg-type,return-value]


FIRST_ROWS = 120  # rows added before the first frame; more than any terminal shows at once
PENDING = "…"  # not read yet: the first screen shows status.json only


def row_cells(run: RunRecord, now: float, partial: bool = False) -> list[Text]:
    """A row's cells as plain Text: no markup parsing per cell, and a name with brackets shows as is."""
    if partial:
        values = [run.name, PENDING, cells.step_of(run.step, run.target_step), PENDING, PENDING,
                  PENDING, PENDING, PENDING, PENDING, cells.age(run.updated or run.started, now)]
    else:
        accuracy, dataset = best_eval(run)
        values = [
            run.name + (" (legacy)" if run.legacy else ""),
            cells.dash(run.dataset),
            cells.step_of(run.step, run.target_step),
            cells.dash(run.latest_complete),
            cells.number(_last_reward(run)),
            f"{cells.percent(accuracy)} {dataset}" if accuracy is not None else "–",
            str(run.restarts) if run.restarts else "0",
            f"{run.gpu_seconds / 3600:.2f}",
            f"${run.cost:.2f}" if run.cost else "–",
            cells.age(run.updated or run.started, now),
        ]
    # what DataTable's formatter makes of a one-line string cell, minus the markup parsing
    return [cells.run_status_cell(run.status, run.stalled),
            *(Text(v, no_wrap=True, end="") for v in values)]


class RunsTable(DataTable):
    """Runs, one row each; posts `RunChosen` when the cursor moves to another run."""

    BINDINGS = [
        Binding("s", "cycle_sort", "Sort"),
        Binding("S", "reverse_sort", "Reverse", show=False),
    ]

    class RunChosen(Message):
        def __init__(self, name: str | None) -> None:
            super().__init__()
            self.name = name

    def __init__(self, clock: Callable[[], float] = time.time, **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)  # type: ignore[arg-type]
        self.clock = clock
        self.runs: dict[str, RunRecord] = {}
        self.filter_text = ""
        self.partial = False
        self.generation = 0
        self.sort_key = "age"
        self.sort_reverse = False
        self.shown: list[str] = []
        self.column_keys: list[str] = []  # the columns shown, in COLUMNS order
        self.chosen: str | None = None  # the run the user chose, kept while a filter hides it
        self._fallback: str | None = None  # selected only because `chosen` was hidden

    def on_mount(self) -> None:
        self.set_columns(self._columns_for(self.size.width or WIDE_MIN))

    def on_resize(self) -> None:
        wanted = self._columns_for(self.size.width)
        if wanted != self.column_keys:
            self.rebuild(columns=wanted)

    @staticmethod
    def _columns_for(width: int) -> list[str]:
        return COLUMN_KEYS if width >= WIDE_MIN else [k for k in COLUMN_KEYS if k in NARROW_COLUMNS]

    def set_columns(self, keys: list[str]) -> None:
        """(Re)create the header: the columns in `keys`, the sort column marked ▲ or ▼."""
        self.clear(columns=True)
        self.column_keys = keys
        for column in COLUMNS:
            if column.key in keys:
                label = column.label
                if column.key == self.sort_key:
                    label += "▼" if self.sort_reverse else "▲"
                width = column.width
                if len(keys) < len(COLUMN_KEYS):
                    width = NARROW_COLUMNS.get(column.key) or width
                width = None if width is None else max(width, len(label))
                self.add_column(label, key=column.key, width=width)

    def cells_of(self, run: RunRecord, now: float, partial: bool = False) -> list[Text]:
        """The shown columns' cells of `run`."""
        every = row_cells(run, now, partial)
        if len(self.column_keys) == len(COLUMN_KEYS):
            return every
        return [cell for key, cell in zip(COLUMN_KEYS, every) if key in self.column_keys]

    @property
    def selected(self) -> str | None:
        if not self.shown or self.cursor_row < 0 or self.cursor_row >= len(self.shown):
            return None
        return self.shown[self.cursor_row]

    def set_runs(self, runs: list[RunRecord], partial: bool = False) -> None:
        """All runs; `partial` when only their status.json has been read so far."""
        self.runs = {r.name: r for r in runs}
        self.partial = partial
        self.rebuild()

    def update_run(self, run: RunRecord | None, name: str) -> None:
        """One run changed (or vanished, when `run` is None): redraw its row, or all rows if it moves."""
        old = self.runs.get(name)
        if run is None:
            self.runs.pop(name, None)
        else:
            self.runs[name] = run
        in_place = (
            run is not None and old is not None and name in self.shown
            and run_matches(run, self.filter_text) and self._keeps_place(name, run)
        )
        if in_place:
            try:
                for key, value in zip(self.column_keys, self.cells_of(run, self.clock())):
                    self.update_cell(name, key, value)
            except (CellDoesNotExist, KeyError):  # its row is still to be added after this frame
                in_place = False
        if not in_place:
            self.rebuild()  # which posts RunChosen through the table's RowHighlighted
        elif name == self.selected:
            self.post_message(self.RunChosen(name))

    def _keeps_place(self, name: str, run: RunRecord) -> bool:
        """Whether `run`, sorted again, would stay where `name` is shown: strictly between its
        neighbours' sort values. The default sort is by age, and a running run's status.json
        changes its age at every write without moving it from the top."""
        index = self.shown.index(name)
        value = self._sort_value(run)
        try:
            for i, after in ((index - 1, False), (index + 1, True)):
                if 0 <= i < len(self.shown):
                    other = self._sort_value(self.runs[self.shown[i]])
                    if not (value < other if after != self.sort_reverse else other < value):
                        return False
        except (KeyError, TypeError):  # a neighbour gone, or values that do not compare
            return False
        return True

    def set_filter(self, text: str) -> None:
        self.filter_text = text
        self.rebuild()

    def action_cycle_sort(self) -> None:
        """Sort by the next shown column."""
        keys = self.column_keys or COLUMN_KEYS
        i = keys.index(self.sort_key) if self.sort_key in keys else -1
        self.sort_key = keys[(i + 1) % len(keys)]
        self.rebuild(columns=self.column_keys)
        self.notify(f"sorted by {self.sort_key}", timeout=2)

    def action_reverse_sort(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self.rebuild(columns=self.column_keys)

    def _sort_value(self, run: RunRecord) -> object:
        return next(c for c in COLUMNS if c.key == self.sort_key).sort_key(run)

    def rebuild(self, columns: list[str] | None = None) -> None:
        """Every row again (and the header, given `columns`), the chosen run selected."""
        current = self.selected  # before anything is cleared
        if current is not None and current != self._fallback:
            self.chosen = current  # the user's own choice, not one made for them below
        if columns is not None:
            self.set_columns(columns)
        visible = [r for r in self.runs.values() if run_matches(r, self.filter_text)]
        ordered = sort_runs(visible, self.sort_key, self.sort_reverse)
        now = self.clock()
        self.clear()
        self.generation += 1
        names = [r.name for r in ordered]
        keep = self.chosen if self.chosen in names else current
        # A screenful first, the rest right after that frame is drawn: measuring 1,000 rows
        # would otherwise hold back the first picture by a few tenths of a second.
        first = len(ordered) if keep in names[FIRST_ROWS:] else FIRST_ROWS
        for r in ordered[:first]:
            self.add_row(*self.cells_of(r, now, self.partial), key=r.name)
        if ordered[first:]:
            self.call_after_refresh(self._add_rest, self.generation, ordered[first:], now)
        self.shown = names
        if keep in self.shown:
            self.move_cursor(row=self.shown.index(keep))
        self._fallback = self.selected if self.selected != self.chosen else None
        if self.selected != current:
            self.post_message(self.RunChosen(self.selected))

    def _add_rest(self, generation: int, rest: list[RunRecord], now: float) -> None:
        # Called after the frame with the first rows is drawn. Rows no one can see yet come last:
        # behind what the app queued for after that frame (mounting the panes the first frame left
        # out), and after the frame that shows those (measuring 900 rows takes ~0.1 s).
        self.app.call_later(self.call_after_refresh, self._add_rows, generation, rest, now)

    def _add_rows(self, generation: int, rest: list[RunRecord], now: float) -> None:
        if generation == self.generation:  # else a newer rebuild has replaced these rows
            for r in rest:
                self.add_row(*self.cells_of(r, now, self.partial), key=r.name)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        self.post_message(self.RunChosen(event.row_key.value if event.row_key else None))
