"""The app's side of the metrics store: keeps it current in a worker, and serves marks, compare
and filter expressions.

Usage (the app mixes it in):
    class RlTuiApp(StoreLink, ActionsMixin, App[str]): ...
    self.store_changed(message.runs)          # after each index snapshot: ingest those runs

Ingestion runs in one thread worker at a time, in passes of at most PASS_BUDGET_S, so a large
cold store is built without holding the UI back; runs that change meanwhile are queued for the
next pass. A store deleted while the app runs is noticed (`Store.gone`) and rebuilt.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any

from textual import work
from textual.message import Message

from rltui.tui.runs_table_store import StoreRunsTable

PASS_BUDGET_S = 1.0
REWARD_METRICS = ("reward_mean", "reward", "mean_reward", "rewards/mean")


class StoreUpdated(Message):
    """A pass of ingestion finished: each run's best reward, from the store."""

    def __init__(self, best_rewards: dict[str, float], complete: bool) -> None:
        super().__init__()
        self.best_rewards = best_rewards
        self.complete = complete


class ExpressionResult(Message):
    def __init__(self, text: str, names: list[str] | None, error: str | None) -> None:
        super().__init__()
        self.text, self.names, self.error = text, names, error


class StoreLink:
    """Mixed into RlTuiApp (which provides root, layout, snapshot, query_one, notify)."""

    _store_lock: threading.Lock
    _store_pending: set[str] | None
    _store_all: bool
    _store_running: bool
    store_passes = 0  # ingestion passes finished (tests wait on it)

    def store_changed(self, runs: set[str] | None) -> None:
        """Queue these runs (None: every run) for ingestion; start the worker unless it runs."""
        if not getattr(self, "store_enabled", True):
            return
        if not hasattr(self, "_store_lock"):
            self._store_lock = threading.Lock()
            self._store_pending, self._store_all, self._store_running = set(), False, False
        with self._store_lock:
            if runs is None:
                self._store_all = True
            else:
                self._store_pending |= set(runs)
            if self._store_running:
                return
            self._store_running = True
        self._ingest_worker()

    def _take_pending(self) -> tuple[bool, set[str]] | None:
        with self._store_lock:
            if not self._store_all and not self._store_pending:
                self._store_running = False
                return None
            every, names = self._store_all, set(self._store_pending)
            self._store_all, self._store_pending = False, set()
            return every, names

    @work(thread=True, group="store")
    def _ingest_worker(self) -> None:
        from rltui.runs.ingest import ingest
        from rltui.runs.store import Store, warn

        store = None
        try:
            while (job := self._take_pending()) is not None:
                every, names = job
                if store is not None and store.gone():  # deleted under us: rebuilt from the files
                    store.close()
                    store = None
                try:
                    store = store or Store.open(self.root)  # type: ignore[attr-defined]
                    snap = self.snapshot  # type: ignore[attr-defined]
                    statuses = {n: r.status.value for n, r in snap.runs.items()} if snap else {}
                    report = ingest(store, self.layout, runs=None if every else sorted(names),  # type: ignore[attr-defined]
                                    statuses=statuses, budget_s=PASS_BUDGET_S)
                    if not report.complete:
                        self.store_changed(None)  # the rest next pass
                    best = _best_rewards(store)
                except (sqlite3.Error, OSError) as e:
                    warn(f"not updated: {e}")
                    store = None
                    time.sleep(1.0)
                    continue
                self.post_message(StoreUpdated(best, report.complete))  # type: ignore[attr-defined]
                time.sleep(0.02)  # let the UI thread have the interpreter between passes
        finally:
            if store is not None:
                store.close()
            with self._store_lock:
                self._store_running = False

    def on_store_updated(self, message: StoreUpdated) -> None:
        self.store_passes += 1
        table = self.query_one(StoreRunsTable)  # type: ignore[attr-defined]
        table.set_best_rewards(message.best_rewards)
        if table.expression is not None:  # new values may change who matches
            self._run_expression(table.expression)

    # ------------------------------------------------------------ filter expressions

    def on_store_runs_table_expression_asked(self, message: StoreRunsTable.ExpressionAsked) -> None:
        self._run_expression(message.text)

    @work(thread=True, exclusive=True, group="expression")
    def _run_expression(self, text: str) -> None:
        from rltui.runs.query import QueryError, select_runs
        from rltui.runs.store import Store

        try:
            with Store.open(self.root) as store:  # type: ignore[attr-defined]
                names = [r[0] for r in select_runs(store, text)[1]]
            self.post_message(ExpressionResult(text, names, None))  # type: ignore[attr-defined]
        except QueryError as e:
            self.post_message(ExpressionResult(text, None, e.one_line("filter")))  # type: ignore[attr-defined]
        except (sqlite3.Error, OSError) as e:
            self.post_message(ExpressionResult(text, None, f"metrics store: {e}"))  # type: ignore[attr-defined]

    def on_expression_result(self, message: ExpressionResult) -> None:
        table = self.query_one(StoreRunsTable)  # type: ignore[attr-defined]
        if message.text == table.expression and message.error and message.error != table.expression_error:
            self.notify(message.error + " (filtering by words)", severity="warning", timeout=4)  # type: ignore[attr-defined]
        table.expression_answered(message.text, message.names, message.error)

    # ------------------------------------------------------------ marks and compare

    def action_toggle_mark(self) -> None:
        self.query_one(StoreRunsTable).toggle_mark()  # type: ignore[attr-defined]

    def action_mark_shown(self) -> None:
        self.query_one(StoreRunsTable).mark_shown()  # type: ignore[attr-defined]

    def action_clear_marks(self) -> None:
        self.query_one(StoreRunsTable).clear_marks()  # type: ignore[attr-defined]

    def action_compare(self) -> None:
        from rltui.tui.compare_screen import CompareScreen

        table = self.query_one(StoreRunsTable)  # type: ignore[attr-defined]
        runs = table.marked_runs() or ([table.selected] if table.selected else [])
        if not runs:
            self.notify("no run to compare: mark runs with space first", timeout=3)  # type: ignore[attr-defined]
            return
        detail = self.query("#detail").first() if self.query("#detail") else None  # type: ignore[attr-defined]
        metric = _detail_metric(detail)
        screen = getattr(self, "compare_screen", None)
        if screen is None:
            self.compare_screen = screen = CompareScreen(self.root, runs, metric=metric)  # type: ignore[attr-defined]
            self.install_screen(screen, name="compare")  # type: ignore[attr-defined]
        else:
            screen.set_runs(runs, metric)
        self.push_screen("compare")  # type: ignore[attr-defined]


def _detail_metric(detail: Any) -> str | None:
    """The metric the run detail plots, in the store's naming (eval accuracy is eval_accuracy)."""
    try:
        name = detail.metric if detail is not None else None
    except Exception:  # a detail that has no series yet
        return None
    if not isinstance(name, str):
        return None
    return "eval_accuracy" if name.startswith("eval") and "accuracy" in name else name


def _best_rewards(store: Any) -> dict[str, float]:
    known = set(store.metrics())
    metric = next((m for m in REWARD_METRICS if m in known), None)
    if metric is None:
        return {}
    return {run: s.best for run, s in store.summary(metric).items()}
