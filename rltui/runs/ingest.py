"""Incremental ingestion of the localfs into the metrics store (rltui.runs.store).

Usage:
    with Store.open(root) as store:
        report = ingest(store, Layout(root))                # everything that changed
        ingest(store, layout, runs=["run_X"])               # one run (the keeper after a job)
        ingest(store, layout, statuses={"run_X": "crashed"})  # the index's status, when known
    ingest_quietly(root, runs=...)                          # never raises: a side job of a command

What is read: per run status.json, config_resolved.yaml (else config.yaml), provenance.json,
logs/train_log.jsonl from the byte offset reached last time (a torn last line, not yet ended by
a newline, is left for the next pass), and each eval folder's results; per job state.json's usage.
A file is re-read only when its (inode, size, mtime) changed. A train log that shrank or was
replaced is read again from the start.

Two processes may ingest at once: each run is written in one BEGIN IMMEDIATE transaction, and
the offsets are read again inside it, so the second writer finds the first one's work done and
adds nothing twice. Only the manager's own processes ingest; a trainer never waits for the store.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from array import array
from dataclasses import dataclass
from typing import Any, Iterable

from rltui.runs import folders, localfs
from rltui.runs.machine import this_host
from rltui.runs.readers import FileCache, RESOLVED_CONFIG, _flatten, _load_yaml, read_eval
from rltui.runs.records import diagnose_run, json_int, json_number
from rltui.runs.store import (
    CHUNK_POINTS, Store, dedupe_steps, iter_chunks, minimise, pack, pack_steps, unpack, unpack_steps, warn,
)

MAX_READ = 64 << 20  # bytes of one train log read per pass; the rest follows next pass
_NOT_METRICS = frozenset({"step", "time", "session"})
_EVAL_COLUMNS = ("accuracy", "format_rate", "mean_reward")
PROVENANCE = "provenance.json"


@dataclass
class IngestReport:
    runs_read: int = 0  # runs with something new
    points: int = 0  # series points added
    jobs_read: int = 0
    runs_dropped: int = 0
    complete: bool = True  # False when the time budget ran out: the next pass goes on
    seconds: float = 0.0


Sig = tuple[int, int, int]  # inode, size, mtime_ns


def _differs(known: tuple[Any, ...] | None, sig: Sig | None) -> bool:
    return (tuple(known[0:3]) if known else None) != sig


def _sig(path: str) -> Sig | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def ingest_quietly(root: str | os.PathLike[str], **kwargs: Any) -> IngestReport | None:
    """`ingest` for commands that do it on the side (status, the keeper): a store that cannot be
    written (read-only localfs, full disk) is reported in one line and never fails them."""
    try:
        with Store.open(root) as store:
            return ingest(store, localfs.Layout(root), **kwargs)
    except (sqlite3.Error, OSError) as e:
        warn(f"not updated: {e}")
        return None


def ingest(store: Store, layout: localfs.Layout, *, runs: Iterable[str] | None = None,
           jobs: Iterable[str] | None = None, statuses: dict[str, str] | None = None,
           budget_s: float | None = None, now: float | None = None) -> IngestReport:
    """Bring the store up to date with the files (or with `runs` and `jobs` only); see the
    module doc."""
    t0 = time.monotonic()
    report = IngestReport()
    ctx = _Context(layout, now if now is not None else time.time(), this_host(), statuses or {})
    on_disk = dict(_run_folders(layout))
    wanted = sorted(on_disk) if runs is None else [r for r in runs if r in on_disk]
    known = _known_files(store)
    known_by_run: dict[str, set[str]] = {}
    for path, row in known.items():
        if row[4] is not None:
            known_by_run.setdefault(row[4], set()).add(path)
    stored_status = dict(store.conn.execute("SELECT name, status FROM runs").fetchall())
    evals = _eval_folders(layout, on_disk)
    for name in wanted:
        if budget_s is not None and time.monotonic() - t0 > budget_s:
            report.complete = False
            break
        paths = _run_files(layout, on_disk[name], evals.get(name, {}))
        sigs = {p: _sig(p) for p in paths}
        changed = (any(_differs(known.get(p), s) for p, s in sigs.items())
                   or not known_by_run.get(name, set()) <= sigs.keys())  # a file or folder gone
        if not changed and name in stored_status:
            # nothing new on disk; a running run's status can still change (its process ends)
            if name not in ctx.statuses and stored_status[name] != "running":
                continue
            if ctx.status_of(name, _read_json(os.path.join(on_disk[name], "status.json"))) == stored_status[name]:
                continue
        with store.write() as conn:
            report.points += _ingest_run(conn, ctx, name, on_disk[name], evals.get(name, {}), sigs)
        report.runs_read += 1
    if jobs is not None:
        report.jobs_read = _ingest_jobs(store, layout, known, list(jobs))
    if runs is None and report.complete:
        report.jobs_read = _ingest_jobs(store, layout, known)
        gone = set(stored_status) - set(on_disk)
        if gone:
            with store.write() as conn:
                for name in gone:
                    _drop_run(conn, name)
            report.runs_dropped = len(gone)
    report.seconds = time.monotonic() - t0
    return report


@dataclass
class _Context:
    layout: localfs.Layout
    now: float
    host: str
    statuses: dict[str, str]

    def status_of(self, name: str, status_json: Any) -> str:
        """The index's status when the caller has one, else the rule on status.json alone."""
        return self.statuses.get(name) or diagnose_run(status_json, self.now, self.host).status.value


def _run_folders(layout: localfs.Layout) -> list[tuple[str, str]]:
    """The index's rule for run folders (rltui.runs.folders): linked runs count, bad names not."""
    return folders.run_folders(layout)


def _eval_folders(layout: localfs.Layout, runs: dict[str, str]) -> dict[str, dict[str, str]]:
    """run -> {dataset: folder path}, by the one ownership rule (rltui.runs.folders): what the
    folder's eval_config.yaml records, else the one existing run whose name fits."""
    names = set(runs) | {n for n, _p in folders.legacy_run_folders(layout)}
    out: dict[str, dict[str, str]] = {}
    for name, path in folders.eval_folders(layout):
        owner = folders.eval_owner(layout, name, names)
        if owner.run in runs:
            out.setdefault(owner.run, {})[owner.dataset] = path
    return out


def _run_files(layout: localfs.Layout, run_dir: str, evals: dict[str, str]) -> list[str]:
    config = os.path.join(run_dir, RESOLVED_CONFIG)
    if not os.path.exists(config):
        config = os.path.join(run_dir, "config.yaml")
    paths = [os.path.join(run_dir, "status.json"), config, os.path.join(run_dir, PROVENANCE),
             os.path.join(run_dir, "logs", "train_log.jsonl")]
    for folder in evals.values():
        paths.append(os.path.join(folder, "consolidated_metrics.csv"))
        paths.append(folder)  # a new step folder (a failed step has a summary, no csv row)
    return paths


def _known_files(store: Store) -> dict[str, tuple[Any, ...]]:
    rows = store.conn.execute("SELECT path, ino, size, mtime_ns, offset, run FROM files")
    return {r[0]: r[1:] for r in rows}


# ---------------------------------------------------------------- one run, in one transaction


def _ingest_run(conn: sqlite3.Connection, ctx: _Context, name: str, run_dir: str,
                evals: dict[str, str], sigs: dict[str, Sig | None]) -> int:
    conn.execute("INSERT INTO runs(name) VALUES (?) ON CONFLICT(name) DO NOTHING", (name,))
    run_id = conn.execute("SELECT id FROM runs WHERE name = ?", (name,)).fetchone()[0]
    # read again inside the transaction: another process may have ingested since our first look
    known = {r[0]: r[1:] for r in conn.execute(
        "SELECT path, ino, size, mtime_ns, offset FROM files WHERE run = ?", (name,))}

    def fresh(path: str) -> bool:
        return _differs(known.get(path), sigs.get(path))

    status_path = os.path.join(run_dir, "status.json")
    status_json = _read_json(status_path)
    _write_status(conn, ctx, run_id, name, status_json)
    config_paths = [p for p in sigs if p.endswith((RESOLVED_CONFIG, "config.yaml"))]
    provenance = os.path.join(run_dir, PROVENANCE)
    if any(fresh(p) for p in [*config_paths, provenance]):
        _write_config(conn, run_id, config_paths, provenance)
    log = os.path.join(run_dir, "logs", "train_log.jsonl")
    points = _ingest_log(conn, run_id, log, known.get(log)) if fresh(log) else 0
    datasets = {d: f for d, f in evals.items()
                if fresh(f) or fresh(os.path.join(f, "consolidated_metrics.csv"))}
    if datasets or any(p not in sigs for p in known):  # new results, or an eval folder gone
        _write_evals(conn, run_id, evals, datasets)
    conn.execute("DELETE FROM files WHERE run = ? AND path NOT IN (SELECT value FROM json_each(?))",
                 (name, json.dumps(list(sigs))))
    for path, sig in sigs.items():
        if path == log:
            continue  # its row carries the offset, written by _ingest_log
        if sig is None:
            conn.execute("DELETE FROM files WHERE path = ?", (path,))
        else:
            conn.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, NULL)", (path, name, *sig))
    return points


def _read_json(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def _write_status(conn: sqlite3.Connection, ctx: _Context, run_id: int, name: str, sj: Any) -> None:
    status = ctx.status_of(name, sj)
    d = sj if isinstance(sj, dict) else {}
    parent = d.get("parent")
    parent_name = parent.get("run") if isinstance(parent, dict) else None
    conn.execute(
        "UPDATE runs SET status = ?, phase = ?, step = ?, target_step = ?, started = ?, updated = ?,"
        " parent = ?, error = ? WHERE id = ?",
        (status, d.get("phase") if isinstance(d.get("phase"), str) else None, json_int(d.get("step")),
         json_int(d.get("target_step")), json_number(d.get("started")), json_number(d.get("time")),
         parent_name if isinstance(parent_name, str) else None,
         str(d["error"]) if d.get("error") else None, run_id))


def scalar(text: Any) -> Any:
    """A config value as the store keeps it: numbers as numbers, lists as JSON, the rest text."""
    if isinstance(text, bool):
        return "true" if text else "false"
    if isinstance(text, (int, float)) or text is None:
        return text
    if isinstance(text, (list, dict)):
        return json.dumps(text, sort_keys=True)
    s = str(text)
    if s in ("", "~", "null", "Null", "NULL"):
        return None
    try:
        return int(s)
    except ValueError:
        pass
    try:
        f = float(s)
        return f if math.isfinite(f) else s
    except ValueError:
        return s


def _write_config(conn: sqlite3.Connection, run_id: int, config_paths: list[str], provenance: str) -> None:
    conn.execute("DELETE FROM config WHERE run_id = ?", (run_id,))
    flat: dict[str, Any] = {}
    for path in config_paths:
        try:
            with open(path, "rb") as f:
                flat = _flatten(_load_yaml(f.read().decode("utf-8"), path))
            break
        except (OSError, UnicodeDecodeError, localfs.DamagedFile):
            continue
    prov = _read_json(provenance)
    if isinstance(prov, dict):
        flat.update(_flatten(prov, "provenance."))
    conn.executemany("INSERT OR REPLACE INTO config VALUES (?, ?, ?)",
                     [(run_id, k, scalar(v)) for k, v in flat.items()])


def _ingest_log(conn: sqlite3.Connection, run_id: int, path: str, known: tuple[Any, ...] | None) -> int:
    """New whole lines of train_log.jsonl since the stored offset: series chunks and summaries."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        _reset_series(conn, run_id)
        conn.execute("DELETE FROM files WHERE path = ?", (path,))
        return 0
    try:
        st = os.fstat(fd)
        offset = known[3] if known and known[0] == st.st_ino and (known[3] or 0) <= st.st_size else 0
        offset = offset or 0
        if offset == 0:
            _reset_series(conn, run_id)
        os.lseek(fd, offset, os.SEEK_SET)
        data = os.read(fd, min(MAX_READ, st.st_size - offset)) if st.st_size > offset else b""
    finally:
        os.close(fd)
    end = data.rfind(b"\n") + 1  # a torn last line waits for its newline
    new = _parse_lines(data[:end])
    conn.execute("INSERT OR REPLACE INTO files VALUES (?, (SELECT name FROM runs WHERE id = ?), ?, ?, ?, ?)",
                 (path, run_id, st.st_ino, st.st_size, st.st_mtime_ns, offset + end))
    count = 0
    for metric, (steps, vals) in new.items():
        _append_series(conn, run_id, metric, steps, vals, fresh=offset == 0)
        count += len(steps)
    return count


def _parse_lines(data: bytes) -> dict[str, tuple[list[int], list[float]]]:
    out: dict[str, tuple[list[int], list[float]]] = {}
    for line in data.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a damaged line is skipped, the rest of the log is not
        if not isinstance(rec, dict):
            continue
        step = json_int(rec.get("step"))
        if step is None:
            continue
        for key, value in rec.items():
            if key in _NOT_METRICS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            entry = out.get(key)
            if entry is None:
                entry = out[key] = ([], [])
            entry[0].append(step)
            entry[1].append(float(value))
    return out


def _reset_series(conn: sqlite3.Connection, run_id: int) -> None:
    conn.execute("DELETE FROM series WHERE run_id = ?", (run_id,))
    conn.execute("DELETE FROM summary WHERE run_id = ? AND metric NOT LIKE 'eval\\_%' ESCAPE '\\'",
                 (run_id,))


def _append_series(conn: sqlite3.Connection, run_id: int, metric: str, steps: list[int],
                   vals: list[float], *, fresh: bool) -> None:
    chunk = 0
    if not fresh:
        row = conn.execute("SELECT chunk, n, steps, vals FROM series WHERE run_id = ? AND metric = ?"
                           " ORDER BY chunk DESC LIMIT 1", (run_id, metric)).fetchone()
        if row is not None:
            chunk, n, s_blob, v_blob = row
            old_steps = unpack_steps(s_blob)
            room = CHUNK_POINTS - n
            if room > 0:
                old_steps.extend(steps[:room])
                old_vals = unpack(v_blob)
                old_vals.extend(vals[:room])
                conn.execute("UPDATE series SET n = ?, steps = ?, vals = ? WHERE run_id = ? AND"
                             " metric = ? AND chunk = ?", (len(old_steps), old_steps.tobytes(),
                                                          old_vals.tobytes(), run_id, metric, chunk))
                steps, vals = steps[room:], vals[room:]
            chunk += 1
    conn.executemany("INSERT INTO series VALUES (?, ?, ?, ?, ?, ?)", [
        (run_id, metric, chunk + i, len(s), pack_steps(s), pack(v))
        for i, (s, v) in enumerate(iter_chunks(steps, vals))])
    if fresh:
        put_summary(conn, run_id, metric, *dedupe_steps(array("q", steps), array("d", vals)))
    else:
        _update_summary(conn, run_id, metric)


def _update_summary(conn: sqlite3.Connection, run_id: int, metric: str) -> None:
    """Recomputed from the whole stored series: a run's points of one metric are ~10^3-10^5
    floats, a few ms at most, and a step logged again (after a resume) then counts once."""
    steps, vals = array("q"), array("d")
    for s, v in conn.execute("SELECT steps, vals FROM series WHERE run_id = ? AND metric = ?"
                             " ORDER BY chunk", (run_id, metric)):
        steps.frombytes(s)
        vals.frombytes(v)
    put_summary(conn, run_id, metric, *dedupe_steps(steps, vals))


def put_summary(conn: sqlite3.Connection, run_id: int, metric: str, steps: list[int],
                vals: list[float]) -> None:
    points = [(s, v) for s, v in zip(steps, vals) if v is not None and math.isfinite(v)]
    if not points:
        conn.execute("DELETE FROM summary WHERE run_id = ? AND metric = ?", (run_id, metric))
        return
    lo = min(points, key=lambda p: p[1])
    hi = max(points, key=lambda p: p[1])
    best = lo if minimise(metric) else hi
    conn.execute("INSERT OR REPLACE INTO summary VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (run_id, metric, len(points), points[0][1], points[0][0], points[-1][1],
                  points[-1][0], lo[1], lo[0], hi[1], hi[0], best[1], best[0]))


# ---------------------------------------------------------------- evals and jobs


def _write_evals(conn: sqlite3.Connection, run_id: int, evals: dict[str, str],
                 changed: dict[str, str]) -> None:
    """Replace the changed datasets' rows; recompute the eval summaries of the run."""
    conn.execute("DELETE FROM evals WHERE run_id = ? AND dataset NOT IN (SELECT value FROM json_each(?))",
                 (run_id, json.dumps(list(evals))))
    cache = FileCache()
    for dataset, folder in changed.items():
        rec = read_eval(cache, folder, "", dataset)
        conn.execute("DELETE FROM evals WHERE run_id = ? AND dataset = ?", (run_id, dataset))
        conn.executemany("INSERT OR REPLACE INTO evals VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [
            (run_id, dataset, s.step, s.accuracy, s.format_rate, s.mean_reward, s.n, s.error)
            for s in rec.steps])
    conn.execute("DELETE FROM summary WHERE run_id = ? AND metric LIKE 'eval\\_%' ESCAPE '\\'", (run_id,))
    rows = conn.execute("SELECT dataset, step, accuracy, format_rate, mean_reward FROM evals"
                        " WHERE run_id = ? AND error IS NULL ORDER BY step", (run_id,)).fetchall()
    for i, column in enumerate(_EVAL_COLUMNS, start=2):
        by_step: dict[int, float] = {}
        per_dataset: dict[str, tuple[list[int], list[float]]] = {}
        for r in rows:
            if r[i] is None:
                continue
            by_step[r[1]] = max(by_step.get(r[1], -math.inf), r[i])
            entry = per_dataset.setdefault(r[0], ([], []))
            entry[0].append(r[1])
            entry[1].append(r[i])
        if by_step:
            ordered = sorted(by_step)
            put_summary(conn, run_id, f"eval_{column}", ordered, [by_step[s] for s in ordered])
        for dataset, (steps, vals) in per_dataset.items():
            put_summary(conn, run_id, f"eval_{column}@{dataset}", steps, vals)


def _ingest_jobs(store: Store, layout: localfs.Layout, known: dict[str, tuple[Any, ...]],
                 only: list[str] | None = None) -> int:
    if only is None:
        try:
            folders = [(e.name, e.path) for e in os.scandir(layout.jobs) if e.is_dir()]
        except OSError:
            return 0
    else:
        folders = [(j, str(layout.job_dir(j))) for j in only]
    changed = []
    for job_id, folder in folders:
        path = os.path.join(folder, "state.json")
        sig = _sig(path)
        if sig is not None and _differs(known.get(path), sig):
            changed.append((job_id, folder, path, sig))
    if not changed:
        return 0
    with store.write() as conn:
        for job_id, folder, path, sig in changed:
            state = _read_json(path)
            spec = _read_json(os.path.join(folder, "job.json"))
            if not isinstance(state, dict):
                continue
            usage = state.get("usage") if isinstance(state.get("usage"), dict) else {}
            run = state.get("run") or (spec.get("run") if isinstance(spec, dict) else None)
            conn.execute("INSERT OR REPLACE INTO usage VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (
                job_id, run if isinstance(run, str) else None,
                spec.get("kind") if isinstance(spec, dict) else None, state.get("state"),
                json_number(usage.get("gpu_seconds")), json_number(usage.get("energy_j")),
                json_number(usage.get("cost")), json_number(state.get("started_at")),
                json_number(state.get("ended_at"))))
            conn.execute("INSERT OR REPLACE INTO files VALUES (?, NULL, ?, ?, ?, NULL)", (path, *sig))
    return len(changed)


def _drop_run(conn: sqlite3.Connection, name: str) -> None:
    row = conn.execute("SELECT id FROM runs WHERE name = ?", (name,)).fetchone()
    if row is None:
        return
    for table in ("config", "summary", "series", "evals"):
        conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (row[0],))
    conn.execute("DELETE FROM files WHERE run = ?", (name,))
    conn.execute("DELETE FROM runs WHERE id = ?", (row[0],))
