"""Turns watcher changes into index refreshes, and says which runs and jobs they changed.

Usage:
    first = quick_runs(layout, time.time())   # status.json only: the first screen of a big root
    live = LiveIndex(Index(layout))
    snap = live.scan()
    live.add({Change("run", name)})
    while (update := live.drain()) is not None:
        snap, runs, jobs = update         # only `runs` and `jobs` need redrawing

Only the changed run, eval folder or job is re-read. Which records changed is found by identity:
a refreshed Snapshot shares every record that did not change (rltui.runs.index).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from rltui.runs.folders import run_folders
from rltui.runs.localfs import BadName, Layout
from rltui.runs.machine import this_host
from rltui.runs.records import RunRecord, diagnose_run, json_int, json_number
from rltui.tui.watcher import Change

if TYPE_CHECKING:
    from rltui.runs.index import Index, Snapshot


@dataclass(frozen=True)
class Update:
    snapshot: Snapshot
    runs: set[str]
    jobs: set[str]


def changed_names(old: dict, new: dict) -> set[str]:
    """Keys whose record changed (a new object with different content), appeared or vanished.

    Identity first (a refresh shares unchanged records), then equality: a re-classification
    builds new records for every run although few of them changed."""
    out = {k for k, v in new.items() if old.get(k) is not v and old.get(k) != v}
    out.update(k for k in old if k not in new)
    return out


def diff(old: Snapshot, new: Snapshot) -> Update:
    runs = changed_names(dict(old.runs), dict(new.runs))
    runs |= changed_names(dict(old.legacy_runs), dict(new.legacy_runs))
    return Update(new, runs, changed_names(dict(old.jobs), dict(new.jobs)))


def quick_runs(layout: Layout, now: float, host: str | None = None) -> list[RunRecord]:
    """Every run with what its status.json alone says (status, step, target, age).

    A first screen for a big localfs: one small file per run instead of the full scan (configs,
    every checkpoint's file list, evals, jobs), which follows at once and replaces these records.
    Plain string paths: on 1,000 runs, building Path objects cost as much as reading the files.
    """
    host = host or this_host()
    folder = layout.training_runs
    out = []
    for name, path in run_folders(layout):
        status = _read_status(os.path.join(path, "status.json"))
        sj = status if isinstance(status, dict) else {}
        d = diagnose_run(status, now, host)
        out.append(RunRecord(
            name=name, path=folder / name, status=d.status, status_reason=d.reason, stalled=d.stalled,
            step=json_int(sj.get("step")), target_step=json_int(sj.get("target_step")),
            phase=sj.get("phase") if isinstance(sj.get("phase"), str) else None,
            updated=json_number(sj.get("time")), started=json_number(sj.get("started")),
        ))
    return out


def _read_status(path: str) -> object:
    """status.json's content; None where missing or damaged (the full scan says which)."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return None


class QuickRead(threading.Thread):
    """`quick_runs` on its own thread, started as the app loads, so the first frame can list the
    runs instead of drawing an empty table and then the whole screen again."""

    def __init__(self, layout: Layout, now: float) -> None:
        super().__init__(name="rltui-quick-list", daemon=True)
        self.layout = layout
        self.now = now
        self.runs: list[RunRecord] | None = None  # None: not read (yet, or it failed)
        self.drawn = threading.Event()  # set once a frame showing them is drawn

    def run(self) -> None:
        try:
            self.runs = quick_runs(self.layout, self.now)
        except Exception:  # the full scan follows and says what is wrong
            self.runs = None


class LiveIndex:
    """An Index plus a queue of pending changes, drained by one worker at a time.

    The Index is made by `make_index` on first use, in the first scan's worker: rltui.runs.index is
    not needed for the first frame (the quick list), so it is not imported before it.
    """

    def __init__(self, make_index: Callable[[], Index]) -> None:
        self._make_index = make_index
        self._index: Index | None = None
        self._made = threading.Lock()
        self._pending: set[Change] = set()
        self._lock = threading.Lock()
        self._draining = False

    @property
    def index(self) -> Index:
        with self._made:
            if self._index is None:
                self._index = self._make_index()
            return self._index

    def scan(self) -> Snapshot:
        return self.index.scan()

    def add(self, changes: set[Change]) -> bool:
        """Queue changes; True when the caller should start a drain (none is running)."""
        with self._lock:
            self._pending |= changes
            if self._draining:
                return False
            self._draining = True
            return True

    def drain(self) -> Update | None:
        """Apply everything queued; None (and the drain ends) when nothing is left."""
        with self._lock:
            pending, self._pending = self._pending, set()
            if not pending:
                self._draining = False
                return None
        old = self.index.snapshot
        new = old
        for change in sorted(pending):
            new = self._apply(change) or new
        return diff(old, new)

    def reclassify(self) -> Update:
        old = self.index.snapshot
        return diff(old, self.index.reclassify())

    def _apply(self, change: Change) -> Snapshot | None:
        try:
            if change.kind == "run":
                return self.index.refresh_run(change.name)
            if change.kind == "eval":
                return self.index.refresh_eval(change.name)
            if change.kind == "job":
                return self.index.refresh_job(change.name)
        except BadName:
            return None  # a folder with a name no writer of ours makes; the index skips it too
        return None
