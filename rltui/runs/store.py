"""The metrics store: an SQLite database derived from the localfs files, for queries across runs.

Usage:
    from rltui.runs.store import Store
    with Store.open(root) as store:           # ROOT/.rltui/metrics.sqlite, made when missing
        ingest(store, layout)                 # rltui.runs.ingest: read what changed since last time
        store.summary("reward_mean")          # {run: SummaryRow}
        store.series(["run_A", "run_B"], "reward_mean")   # {run: (steps, values)}

The files stay the source of truth: the store holds nothing that is not read from them, so it may
be deleted at any time and is rebuilt by the next ingestion. WAL mode: readers never wait for a
writer, and a writer waits (busy_timeout) for another writer rather than failing. Writes happen in
short `BEGIN IMMEDIATE` transactions, one run at a time (rltui.runs.ingest).

Standard library only (sqlite3, array): trainer/ and evaluator/ never import it, and the manager's
processes that already read the localfs keep it current (status, the TUI's refresh worker, the keeper).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sqlite3
import sys
from array import array
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

STORE_DIR = ".rltui"
STORE_NAME = "metrics.sqlite"
SCHEMA_VERSION = 1  # a store of another version is derived data: dropped and rebuilt
BUSY_TIMEOUT_S = 30.0
CHUNK_POINTS = 1024  # points per stored series chunk; a chunk with room is extended in place

#: Metrics where smaller is better; every other metric's best is its maximum.
_MINIMISE = re.compile(r"(^|[/_.])(loss|kl|grad_norm|truncated_fraction|time|seconds)($|[/_.])"
                       r"|^time_|_time$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs(
    id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, status TEXT, phase TEXT, step INTEGER,
    target_step INTEGER, started REAL, updated REAL, parent TEXT, error TEXT);
CREATE TABLE IF NOT EXISTS config(
    run_id INTEGER NOT NULL, key TEXT NOT NULL, value, PRIMARY KEY(run_id, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS config_by_key ON config(key, value);
CREATE TABLE IF NOT EXISTS summary(
    run_id INTEGER NOT NULL, metric TEXT NOT NULL, n INTEGER, first REAL, first_step INTEGER,
    last REAL, last_step INTEGER, min REAL, min_step INTEGER, max REAL, max_step INTEGER,
    best REAL, best_step INTEGER, PRIMARY KEY(run_id, metric)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS summary_by_metric ON summary(metric);
CREATE TABLE IF NOT EXISTS series(
    run_id INTEGER NOT NULL, metric TEXT NOT NULL, chunk INTEGER NOT NULL, n INTEGER NOT NULL,
    steps BLOB NOT NULL, vals BLOB NOT NULL, PRIMARY KEY(run_id, metric, chunk)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS evals(
    run_id INTEGER NOT NULL, dataset TEXT NOT NULL, step INTEGER NOT NULL, accuracy REAL,
    format_rate REAL, mean_reward REAL, n INTEGER, error TEXT,
    PRIMARY KEY(run_id, dataset, step)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage(
    job_id TEXT PRIMARY KEY, run TEXT, kind TEXT, state TEXT, gpu_seconds REAL, energy_j REAL,
    cost REAL, started_at REAL, ended_at REAL);
CREATE INDEX IF NOT EXISTS usage_by_run ON usage(run);
CREATE TABLE IF NOT EXISTS files(
    path TEXT PRIMARY KEY, run TEXT, ino INTEGER, size INTEGER, mtime_ns INTEGER,
    offset INTEGER) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS files_by_run ON files(run);
"""
_TABLES = ("runs", "config", "summary", "series", "evals", "usage", "files")


def minimise(metric: str) -> bool:
    """Whether smaller is better for `metric` (loss, KL, times); else larger is."""
    return _MINIMISE.search(metric.split("@", 1)[0]) is not None


def store_path(root: str | os.PathLike[str]) -> Path:
    return Path(root) / STORE_DIR / STORE_NAME


@lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _regexp(pattern: str, value: object) -> bool:
    """SQLite's `value REGEXP pattern` (the query language's `~`): a search, not a full match."""
    if value is None:
        return False
    return _regex(pattern).search(str(value)) is not None


@dataclass(frozen=True)
class SummaryRow:
    n: int
    first: float
    first_step: int
    last: float
    last_step: int
    min: float
    min_step: int
    max: float
    max_step: int
    best: float
    best_step: int


def pack(values: Iterable[float]) -> bytes:
    return array("d", values).tobytes()


def pack_steps(steps: Iterable[int]) -> bytes:
    return array("q", steps).tobytes()


def unpack(blob: bytes) -> array:
    a = array("d")
    a.frombytes(blob)
    return a


def unpack_steps(blob: bytes) -> array:
    a = array("q")
    a.frombytes(blob)
    return a


@contextlib.contextmanager
def _setup_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on PATH.lock beside the database while a connection sets it up."""
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class Store:
    """One connection to the store. Not shared between threads: open one per worker call."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self.conn = conn
        self._identity = _identity(path)

    @classmethod
    def open(cls, root: str | os.PathLike[str], *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> "Store":
        """Open (or create) ROOT/.rltui/metrics.sqlite in WAL mode, schema in place."""
        path = store_path(root)
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=busy_timeout_s, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            # Switching to WAL answers "database is locked" at once, without the busy timeout,
            # while another process opens the same new file: the first opening is serialised.
            with _setup_lock(path):
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")  # persistent: once per database file
                _ensure_schema(conn)
            conn.execute("PRAGMA synchronous = NORMAL")  # derived data: a lost tail is re-read
            conn.create_function("REGEXP", 2, _regexp, deterministic=True)
        except BaseException:
            conn.close()
            raise
        return cls(path, conn)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def gone(self) -> bool:
        """The database file was deleted or replaced since this connection opened it (someone
        removed the store to rebuild it): the caller should reopen."""
        return _identity(self.path) != self._identity

    # ------------------------------------------------------------ transactions

    def write(self) -> "_Write":
        """`with store.write():` one BEGIN IMMEDIATE transaction (waits for another writer)."""
        return _Write(self.conn)

    # ------------------------------------------------------------ reads

    def run_names(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT name FROM runs ORDER BY name")]

    def run_ids(self, names: Iterable[str]) -> dict[str, int]:
        out = {}
        for name in names:
            row = self.conn.execute("SELECT id FROM runs WHERE name = ?", (name,)).fetchone()
            if row is not None:
                out[name] = row[0]
        return out

    def metrics(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT DISTINCT metric FROM summary ORDER BY metric")]

    def metrics_of(self, names: Iterable[str]) -> list[str]:
        """The metrics any of these runs has values of."""
        return [r[0] for r in self.conn.execute(
            "SELECT DISTINCT s.metric FROM summary s JOIN runs r ON r.id = s.run_id"
            " WHERE r.name IN (SELECT value FROM json_each(?)) ORDER BY s.metric",
            (json.dumps(list(names)),))]

    def summary_metrics(self, name: str) -> list[str]:
        """The metrics one run has values of."""
        return [r[0] for r in self.conn.execute(
            "SELECT s.metric FROM summary s JOIN runs r ON r.id = s.run_id WHERE r.name = ?"
            " ORDER BY s.metric", (name,))]

    def config_keys(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT DISTINCT key FROM config ORDER BY key")]

    def config(self, names: Iterable[str]) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        for name, run_id in self.run_ids(names).items():
            rows = self.conn.execute("SELECT key, value FROM config WHERE run_id = ?", (run_id,))
            out[name] = dict(rows.fetchall())
        return out

    def summary(self, metric: str, names: Iterable[str] | None = None) -> dict[str, SummaryRow]:
        sql = ("SELECT r.name, s.n, s.first, s.first_step, s.last, s.last_step, s.min, s.min_step,"
               " s.max, s.max_step, s.best, s.best_step FROM summary s JOIN runs r ON r.id = s.run_id"
               " WHERE s.metric = ?")
        if names is None:
            rows = self.conn.execute(sql, (metric,))
        else:
            rows = self.conn.execute(sql + " AND r.name IN (SELECT value FROM json_each(?))",
                                     (metric, json.dumps(list(names))))
        return {r[0]: SummaryRow(*r[1:]) for r in rows}

    def series(self, names: Iterable[str], metric: str) -> dict[str, tuple[list[int], list[float]]]:
        """Each run's points of `metric` by step (a step logged twice, e.g. again after a resume,
        keeps its latest value); eval metrics come from the eval table (rltui.runs.ingest)."""
        names = list(names)
        if metric.startswith("eval_"):
            return self._eval_series(names, metric)
        out: dict[str, tuple[list[int], list[float]]] = {}
        for name, run_id in self.run_ids(names).items():
            steps, vals = array("q"), array("d")
            for s, v in self.conn.execute(
                    "SELECT steps, vals FROM series WHERE run_id = ? AND metric = ? ORDER BY chunk",
                    (run_id, metric)):
                steps.frombytes(s)
                vals.frombytes(v)
            out[name] = dedupe_steps(steps, vals)
        return out

    def _eval_series(self, names: list[str], metric: str) -> dict[str, tuple[list[int], list[float]]]:
        column, _, dataset = metric[len("eval_"):].partition("@")
        if column not in ("accuracy", "format_rate", "mean_reward"):
            return {}
        out = {}
        for name, run_id in self.run_ids(names).items():
            # several datasets: the best over them at each step, as best(eval_accuracy) is
            sql = (f"SELECT step, MAX({column}) FROM evals WHERE run_id = ? AND error IS NULL"
                   f" AND {column} IS NOT NULL" + (" AND dataset = ?" if dataset else "")
                   + " GROUP BY step ORDER BY step")
            rows = self.conn.execute(sql, (run_id, dataset) if dataset else (run_id,)).fetchall()
            out[name] = ([r[0] for r in rows], [r[1] for r in rows])
        return out

    def evals(self, name: str) -> list[tuple[str, int, float | None, float | None, float | None, int | None, str | None]]:
        return self.conn.execute(
            "SELECT e.dataset, e.step, e.accuracy, e.format_rate, e.mean_reward, e.n, e.error"
            " FROM evals e JOIN runs r ON r.id = e.run_id WHERE r.name = ? ORDER BY 1, 2",
            (name,)).fetchall()

    def usage(self, name: str) -> dict[str, float]:
        row = self.conn.execute(
            "SELECT SUM(gpu_seconds), SUM(energy_j), SUM(cost) FROM usage WHERE run = ?",
            (name,)).fetchone()
        return {"gpu_seconds": row[0] or 0.0, "energy_j": row[1] or 0.0, "cost": row[2] or 0.0}


class _Write:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def dedupe_steps(steps: array, vals: array) -> tuple[list[int], list[float]]:
    """Points sorted by step; a step seen more than once keeps its last value."""
    s, v = steps.tolist(), vals.tolist()
    if all(a < b for a, b in zip(s, s[1:])):
        return s, v
    latest = dict(zip(s, v))
    ordered = sorted(latest)
    return ordered, [latest[k] for k in ordered]


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _ensure_schema(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            if version != 0:  # another version's tables: derived data, rebuilt from the files
                for table in _TABLES:
                    conn.execute(f"DROP TABLE IF EXISTS {table}")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def iter_chunks(steps: list[int], vals: list[float], size: int = CHUNK_POINTS) -> Iterator[tuple[list[int], list[float]]]:
    for i in range(0, len(steps), size):
        yield steps[i:i + size], vals[i:i + size]


def warn(message: str) -> None:
    """A store problem never fails the command that ingests on the side; it says so once."""
    sys.stderr.write(f"rltui: metrics store: {message}\n")
