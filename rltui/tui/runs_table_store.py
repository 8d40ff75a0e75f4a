"""The runs table with what the metrics store adds: marked runs, a best-reward column and
filter expressions (the `--where` language of `rltui --batch runs`).

Usage:
    table = StoreRunsTable(clock, id="runs-table")     # what the app composes
    table.toggle_mark(); table.mark_shown(); table.clear_marks(); table.marked_runs()
    table.set_best_rewards({"run_A": 0.93})            # from the store (StoreUpdated)
    table.set_filter("best(eval_accuracy) > 0.6")      # an expression: asks the app to query
    table.expression_answered(text, names, error)      # the answer (or the error: words again)

A marked run carries ● as its row label. A filter text that contains a comparison (=, !=, <,
<=, >, >=, ~, in) is an expression; anything else, or an expression the store refuses, filters by
words as before.
"""

from __future__ import annotations

from rich.text import Text
from textual.message import Message
from textual.widgets.data_table import CellDoesNotExist

from rltui.tui import cells
from rltui.tui.runs_table import COLUMN_KEYS, RunsTable

BEST_REWARD = "best_reward"
MARK = Text("●", style="bold")
_COMPARISONS = {"=", "==", "!=", "<>", "<", "<=", ">", ">=", "~", "!~"}


def looks_like_expression(text: str) -> bool:
    """Whether `text` is meant as a filter expression: it has a comparison in it."""
    from rltui.runs.query import QueryError, tokenize

    try:
        tokens = tokenize(text)
    except QueryError:
        return any(op in text for op in ("=", "<", ">", "~"))  # a broken one: say what is wrong
    return any((t.kind == "op" and t.text in _COMPARISONS) or (t.kind == "name" and t.text.lower() == "in")
               for t in tokens)


class StoreRunsTable(RunsTable):
    class ExpressionAsked(Message):
        """The filter box holds an expression: the app runs it against the store."""

        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, *args: object, store_columns: bool = True, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.store_columns = store_columns  # False: no best-reward column (no store in this app)
        self.marks: dict[str, None] = {}  # marked run names, in marking order
        self.best_rewards: dict[str, float] = {}
        self.expression: str | None = None  # the expression being filtered by
        self.expression_names: set[str] | None = None  # its answer
        self.expression_error: str | None = None

    # ------------------------------------------------------------ the best-reward column

    def on_mount(self) -> None:  # after RunsTable.on_mount (Textual calls each class's handler)
        self.call_later(self._add_store_columns)

    def set_columns(self, keys: list[str]) -> None:
        super().set_columns(keys)  # type: ignore[misc]  # where the base table has it
        self._add_store_columns()

    def _wide(self) -> bool:
        shown = getattr(self, "column_keys", None)
        return not shown or len(shown) == len(COLUMN_KEYS)

    def _add_store_columns(self) -> None:
        if self.store_columns and self._wide() and BEST_REWARD not in self.columns and self.columns:
            self.add_column("best rwd", key=BEST_REWARD, width=8)

    def add_row(self, *row_cells: object, key: str | None = None, **kwargs: object):  # noqa: ANN201
        if BEST_REWARD in self.columns and len(row_cells) < len(self.columns):
            row_cells = (*row_cells, Text(cells.number(self.best_rewards.get(key or "")), no_wrap=True))
        if key in self.marks:
            kwargs["label"] = MARK
        return super().add_row(*row_cells, key=key, **kwargs)

    def set_best_rewards(self, values: dict[str, float]) -> None:
        changed = [n for n in set(values) | set(self.best_rewards) if values.get(n) != self.best_rewards.get(n)]
        self.best_rewards = dict(values)
        if BEST_REWARD not in self.columns:
            return
        for name in changed:
            try:
                self.update_cell(name, BEST_REWARD, Text(cells.number(values.get(name)), no_wrap=True))
            except (CellDoesNotExist, KeyError):  # not shown, or its row is still to be added
                pass

    # ------------------------------------------------------------ marks

    def marked_runs(self) -> list[str]:
        """Marked runs that still exist, in the table's order (those not shown last)."""
        order = {name: i for i, name in enumerate(self.shown)}
        alive = [n for n in self.marks if n in self.runs]
        return sorted(alive, key=lambda n: order.get(n, len(order)))

    def toggle_mark(self) -> None:
        name = self.selected
        if name is None:
            return
        if name in self.marks:
            del self.marks[name]
        else:
            self.marks[name] = None
        row = self.cursor_row
        self.rebuild()
        self.move_cursor(row=min(row + 1, len(self.shown) - 1))

    def mark_shown(self) -> None:
        """Mark every run the filter shows."""
        for name in self.shown:
            self.marks[name] = None
        self.rebuild()

    def clear_marks(self) -> None:
        self.marks.clear()
        self.rebuild()

    # ------------------------------------------------------------ expressions

    def set_filter(self, text: str) -> None:
        if text.strip() and looks_like_expression(text):
            self.expression = text
            self.post_message(self.ExpressionAsked(text))
            return  # the rows stay as they are until the answer comes
        self.expression = self.expression_names = self.expression_error = None
        super().set_filter(text)

    def expression_answered(self, text: str, names: list[str] | None, error: str | None) -> None:
        if text != self.expression:
            return  # the filter has changed since
        self.expression_error = error
        if error is not None:  # not an expression the store understands: words, as before
            self.expression_names = None
            super().set_filter(text)
            return
        self.expression_names = set(names or ())
        self.filter_text = ""
        self.rebuild()

    def rebuild(self, *args: object, **kwargs: object) -> None:
        if self.expression_names is None:
            return super().rebuild(*args, **kwargs)
        every = self.runs
        self.runs = {n: r for n, r in every.items() if n in self.expression_names}
        try:
            super().rebuild(*args, **kwargs)
        finally:
            self.runs = every
