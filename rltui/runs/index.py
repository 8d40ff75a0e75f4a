"""The run index: a localfs read into typed records, scanned cold or refreshed one thing at a time.

Usage:
    from rltui.runs.index import Index
    from rltui.runs.localfs import Layout
    index = Index(Layout(root))
    snap = index.scan()                     # every run, legacy run, eval folder and job
    for run in snap.runs.values():
        print(run.status.symbol, run.name, run.step, run.latest_complete)
    snap = index.refresh_run("run_2026-01-01_00-00-00")   # after a change in that run only

A `Snapshot` is never changed after it is made: a refresh builds a new one (sharing the
records that did not change), so a reader in another thread keeps a consistent view.
Records, statuses and the status rule live in rltui.runs.records; the file readers in rltui.runs.readers.
"""

from __future__ import annotations

import bisect
import dataclasses
import gc
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from rltui.runs import checkpoints, folders, localfs, machine
from rltui.text import clean
from rltui.runs import writer_lock
from rltui.runs.readers import (
    FileCache,
    last_metrics,
    parse_json,
    read_checkpoints,
    read_config_summary,
    read_eval,
    keeper_gone,
    read_job,
    time_from_run_name,
)
from rltui.runs.records import (
    STALE_AFTER_S,
    CheckpointRecord,
    ConfigSummary,
    Diagnosis,
    EvalRecord,
    EvalStepRecord,
    FileError,
    JobRecord,
    JobState,
    Provenance,
    RunRecord,
    RunStatus,
    classify_run,
    diagnose_run,
    json_int,
    json_number,
    trainer_alive,
)

__all__ = [
    "STALE_AFTER_S", "CheckpointRecord", "ConfigSummary", "Diagnosis", "EvalRecord",
    "EvalStepRecord", "FileError", "Index", "JobRecord", "JobState", "RunRecord", "RunStatus",
    "Snapshot", "classify_run", "diagnose_run", "trainer_alive",
]


@dataclass(frozen=True)
class Snapshot:
    """One consistent view of a localfs. Dicts are keyed by name and sorted by name."""

    root: Path
    runs: Mapping[str, RunRecord] = field(default_factory=dict)
    legacy_runs: Mapping[str, RunRecord] = field(default_factory=dict)
    jobs: Mapping[str, JobRecord] = field(default_factory=dict)
    #: eval_runs folders whose run is not in this localfs (archived, cleaned, or misnamed)
    orphan_evals: Mapping[str, EvalRecord] = field(default_factory=dict)
    taken_at: float = 0.0

    @cached_property
    def errors(self) -> list[FileError]:
        """Every damaged file the scan met, with its path and reason."""
        out: list[FileError] = []
        for run in (*self.runs.values(), *self.legacy_runs.values()):
            out.extend(run.damaged)
            for ev in run.evals.values():
                out.extend(ev.damaged)
        for ev in self.orphan_evals.values():
            out.extend(ev.damaged)
        for job in self.jobs.values():
            out.extend(job.damaged)
        return out

    def run(self, name: str) -> RunRecord | None:
        """A run or legacy run by name."""
        return self.runs.get(name) or self.legacy_runs.get(name)

    def jobs_of(self, run: str) -> list[JobRecord]:
        return [j for j in self.jobs.values() if j.run == run]

    @property
    def active_jobs(self) -> list[JobRecord]:
        return [j for j in self.jobs.values() if j.state.active]


@dataclass
class _RunSource:
    """What the index read of one run folder, before evals and jobs are joined to it."""

    record: RunRecord
    status_json: dict[str, Any] | None
    status_damage: str | None = None  # why status.json could not be read, when it exists


class Index:
    """Reads a localfs into a `Snapshot`; `scan()` reads everything, `refresh_*` one thing.

    `now` (the clock), `host` (this machine's name) and `alive(pid, last_progress)` (the process
    check) are parameters so that the status rule is tested without sleeping or real hosts.
    """

    def __init__(
        self,
        layout: localfs.Layout,
        *,
        now: Callable[[], float] = time.time,
        host: str | None = None,
        stale_after: float = STALE_AFTER_S,
        alive: Callable[[int, float], bool] | None = None,
    ) -> None:
        self.layout = layout
        self._now = now
        self._host = host or machine.this_host()
        self._stale_after = stale_after
        self._alive = alive
        self._boot = machine.boot_time()
        self._cache = FileCache()
        self._lock = threading.RLock()
        self._runs: dict[str, _RunSource] = {}
        self._legacy: dict[str, RunRecord] = {}
        self._evals: dict[str, EvalRecord] = {}  # by eval_runs folder name
        self._evals_by_run: dict[str, set[str]] = {}  # run (or guessed run) -> its eval folders
        self._eval_owners_touched: set[str] = set()  # since the last publish
        self._jobs_by_run: dict[str, set[str]] = {}
        self._eval_listing: tuple[int, list[str]] | None = None  # (folder mtime, names)
        self._jobs: dict[str, JobRecord] = {}
        self._snapshot = Snapshot(root=layout.root)

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    # ------------------------------------------------------------ whole scans

    def scan(self) -> Snapshot:
        """Read every run, legacy run, eval folder and job. Unchanged files come from the cache."""
        with self._lock, _no_gc():
            self._runs = {n: self._read_run(n, Path(p)) for n, p in folders.run_folders(self.layout)}
            self._legacy = {
                n: self._read_legacy(n, Path(p)) for n, p in folders.legacy_run_folders(self.layout)
            }
            self._evals, self._evals_by_run = {}, {}
            self._eval_listing = None
            for folder in self._eval_folders():
                self._put_eval(folder, self._read_eval(folder))
            self._jobs = {
                n: read_job(self._cache, str(p), n, self._boot) for n, p in _subdirs(self.layout.jobs)
            }
            self._jobs_by_run = {}
            for job in self._jobs.values():
                if job.run:
                    self._jobs_by_run.setdefault(job.run, set()).add(job.id)
            return self._publish_all()

    def reclassify(self) -> Snapshot:
        """Re-apply the status rule to what was read (time passes; processes and keepers end).

        No file is read; only runs whose status (or its reason) changed get new records."""
        with self._lock:
            changed = []
            for name, src in self._runs.items():
                r = src.record
                before = (r.status, r.status_reason, r.stalled, r.process_alive)
                self._classify(src)
                if (r.status, r.status_reason, r.stalled, r.process_alive) != before:
                    changed.append(name)
            for job_id, job in list(self._jobs.items()):
                orphaned = job.state.active and keeper_gone(job, self._boot)
                if orphaned != job.orphaned:
                    self._jobs[job_id] = dataclasses.replace(job, orphaned=orphaned)
                    if job.run:
                        changed.append(job.run)
            return self._publish_runs(sorted(set(changed)), resort=False)

    # ------------------------------------------------------------ one thing at a time

    def refresh_run(self, name: str) -> Snapshot:
        """Re-read one run folder (and its eval folders); a run that is gone leaves the snapshot."""
        with self._lock:
            path = self.layout.run_dir(name)
            if path.is_dir():
                self._runs[name] = self._read_run(name, path)
            else:
                self._runs.pop(name, None)
            self._refresh_evals_of(name)
            return self._publish_runs([name], resort=True)

    def refresh_eval(self, folder: str) -> Snapshot:
        """Re-read one `eval_runs/RUN_DATASET` folder."""
        with self._lock:
            localfs.validate_name(folder, "eval folder")
            old = self._drop_eval(folder)
            if (self.layout.eval_runs / folder).is_dir():
                self._put_eval(folder, self._read_eval(folder))
            runs = {_owner_key(e) for e in (old, self._evals.get(folder)) if e is not None}
            return self._publish_runs(sorted(runs), resort=False)

    def refresh_job(self, job_id: str) -> Snapshot:
        """Re-read one job's job.json and state.json; its run's status and totals follow."""
        with self._lock:
            path = self.layout.job_dir(job_id)
            old = self._jobs.pop(job_id, None)
            if old is not None and old.run:
                self._jobs_by_run.get(old.run, set()).discard(job_id)
            if path.is_dir():
                job = self._jobs[job_id] = read_job(self._cache, str(path), job_id, self._boot)
                if job.run:
                    self._jobs_by_run.setdefault(job.run, set()).add(job_id)
                if old is None:
                    self._jobs = dict(sorted(self._jobs.items()))
            runs = {j.run for j in (old, self._jobs.get(job_id)) if j is not None and j.run}
            return self._publish_runs(sorted(runs), resort=False)

    # ------------------------------------------------------------ readers

    def _read_run(self, name: str, path: Path) -> _RunSource:
        base = str(path)
        damaged: list[FileError] = []
        status_json = self._load_object(base + "/status.json", damaged)
        summary = read_config_summary(self._cache, base, damaged)
        checkpoints = read_checkpoints(self._cache, base + "/training_state", damaged)
        sj = status_json or {}
        complete = [c.step for c in checkpoints if c.complete]
        step = json_int(sj.get("step"))
        if step is None and complete:
            step = complete[-1]
        record = RunRecord(
            name=name,
            path=path,
            status=RunStatus.UNKNOWN,
            step=step,
            target_step=json_int(sj.get("target_step")) or summary.max_steps,
            target_history=[t for t in sj.get("target_history") or [] if json_int(t) is not None]
            if isinstance(sj.get("target_history"), list) else [],
            phase=sj.get("phase") if isinstance(sj.get("phase"), str) else None,
            latest_complete=complete[-1] if complete else None,
            checkpoints=checkpoints,
            config_summary=summary,
            last_metrics=last_metrics(base + "/logs/train_log.jsonl"),
            started=json_number(sj.get("started")) or time_from_run_name(name),
            updated=json_number(sj.get("time")),
            parent=sj.get("parent") if isinstance(sj.get("parent"), dict) else None,
            provenance=_provenance(self._load_object(base + "/provenance.json", damaged)),
            pid=json_int(sj.get("pid")),
            host=sj.get("host") if isinstance(sj.get("host"), str) else None,
            damaged=damaged,
        )
        if sj.get("error"):
            record.error = clean(str(sj["error"]))
        elif damaged:
            record.error = clean(str(damaged[0]))
        record.writer = writer_lock.holder(path)  # who writes it now (the trainer's lock)
        status_file = base + "/status.json"
        damage = next((e.reason for e in damaged if str(e.path) == status_file), None)
        src = _RunSource(record, status_json, damage)
        self._classify(src)
        return src

    def _classify(self, src: _RunSource) -> None:
        d = diagnose_run(src.status_json, self._now(), self._host, self._stale_after, alive=self._alive)
        rec = src.record
        reason = clean(f"damaged status.json: {src.status_damage}" if src.status_damage else d.reason)
        rec.status, rec.status_reason, rec.stalled, rec.process_alive = (
            d.status, reason, d.stalled, d.process_alive)

    def _read_legacy(self, name: str, path: Path) -> RunRecord:
        """An older run under rl_runs/: step_N adapter folders, listed read-only."""
        found = []
        for step, step_path in checkpoints.list_step_dirs(path):
            names = _file_names(step_path) | {f"model/{n}" for n in _file_names(step_path / "model")}
            problems = []
            if not names & {"adapter_config.json", "model/adapter_config.json"}:
                problems.append("no adapter_config.json")
            if not any(n.rsplit("/", 1)[-1].startswith("adapter_model.") for n in names):
                problems.append("no adapter_model file")
            size = sum(_size(step_path / n) for n in names)
            found.append(CheckpointRecord(step, step_path, not problems, problems, size))
        complete = [c.step for c in found if c.complete]
        damaged: list[FileError] = []
        summary = read_config_summary(self._cache, str(path), damaged)
        return RunRecord(
            name=name,
            path=path,
            status=RunStatus.UNKNOWN,
            status_reason="legacy run (rl_runs/, read-only)",
            step=found[-1].step if found else None,
            latest_complete=complete[-1] if complete else None,
            checkpoints=found,
            config_summary=summary,
            legacy=True,
            damaged=damaged,
            error=str(damaged[0]) if damaged else None,
        )

    def _read_eval(self, folder: str) -> EvalRecord:
        owner = self._eval_owner(folder)
        path = str(self.layout.eval_runs / folder)
        if owner.run is not None:
            return read_eval(self._cache, path, owner.run, owner.dataset)
        run, dataset = _guess_split(folder)
        rec = read_eval(self._cache, path, run, dataset)
        rec.owner_note = owner.how
        return rec

    def _eval_owner(self, folder: str) -> folders.EvalOwner:
        """The one rule (rltui.runs.folders): the run its eval_config.yaml names, else the one
        existing run whose name alone fits; nobody's when two fit."""
        path = str(self.layout.eval_runs / folder / folders.EVAL_CONFIG)
        try:
            recorded = self._cache.load(path, _parse_eval_record)
        except (FileNotFoundError, localfs.DamagedFile):
            recorded = None
        return folders.decide_eval_owner(folder, recorded, _RunNames(self))

    def _eval_folders(self) -> list[str]:
        """Names under eval_runs/, re-listed only when the folder changed (its mtime)."""
        root = str(self.layout.eval_runs)
        try:
            mtime = os.stat(root).st_mtime_ns
        except OSError:
            self._eval_listing = None
            return []
        if self._eval_listing is not None and self._eval_listing[0] == mtime:
            return self._eval_listing[1]
        names = [n for n, _p in folders.eval_folders(self.layout)]
        # A folder made within the timestamp granularity of the last one leaves the mtime as it
        # was: a listing younger than 2 s is not trusted next time.
        fresh = time.time() - mtime / 1e9 < 2.0
        self._eval_listing = None if fresh else (mtime, names)
        return names

    def _refresh_evals_of(self, run: str) -> None:
        """Re-read the eval folders named RUN_*, and drop those of `run` that are gone."""
        prefix = run + "_"
        listing = self._eval_folders()  # sorted: the RUN_* names are one slice of it
        i = bisect.bisect_left(listing, prefix)
        candidates = set(self._evals_by_run.get(run, ()))
        while i < len(listing) and listing[i].startswith(prefix):
            candidates.add(listing[i])
            i += 1
        for folder in sorted(candidates):
            self._drop_eval(folder)
            if (self.layout.eval_runs / folder).is_dir():
                self._put_eval(folder, self._read_eval(folder))

    def _put_eval(self, folder: str, rec: EvalRecord) -> None:
        self._evals[folder] = rec
        self._evals_by_run.setdefault(_owner_key(rec), set()).add(folder)
        self._eval_owners_touched.add(_owner_key(rec))

    def _drop_eval(self, folder: str) -> EvalRecord | None:
        rec = self._evals.pop(folder, None)
        if rec is not None:
            key = _owner_key(rec)
            self._eval_owners_touched.add(key)
            owned = self._evals_by_run.get(key)
            if owned is not None:
                owned.discard(folder)
                if not owned:
                    del self._evals_by_run[key]
        return rec

    def _known(self, run: str) -> bool:
        return run in self._runs or run in self._legacy

    def _load_object(self, path: str, damaged: list[FileError]) -> dict[str, Any] | None:
        try:
            obj = self._cache.load(path, parse_json)
        except FileNotFoundError:
            return None
        except localfs.DamagedFile as e:
            damaged.append(FileError(e.path, e.reason))
            return None
        if not isinstance(obj, dict):
            damaged.append(FileError(Path(path), f"not a JSON object ({type(obj).__name__})"))
            return None
        return obj

    # ------------------------------------------------------------ joining and publishing

    def _assemble(self, base: RunRecord) -> RunRecord:
        evals = {self._evals[f].dataset: self._evals[f] for f in self._evals_by_run.get(base.name, ())}
        return _join(base, evals, [self._jobs[j] for j in self._jobs_by_run.get(base.name, ())])

    def _publish_all(self) -> Snapshot:
        evals_by_run: dict[str, dict[str, EvalRecord]] = {}
        orphans: dict[str, EvalRecord] = {}
        for folder, ev in self._evals.items():
            if self._known(_owner_key(ev)):
                evals_by_run.setdefault(ev.run, {})[ev.dataset] = ev
            else:
                orphans[folder] = ev
        jobs_by_run: dict[str, list[JobRecord]] = {}
        for job in self._jobs.values():
            if job.run:
                jobs_by_run.setdefault(job.run, []).append(job)

        self._eval_owners_touched = set()

        def join(base: RunRecord) -> RunRecord:
            return _join(base, evals_by_run.get(base.name, {}), jobs_by_run.get(base.name, []))

        self._snapshot = Snapshot(
            root=self.layout.root,
            runs={n: join(s.record) for n, s in sorted(self._runs.items())},
            legacy_runs={n: join(r) for n, r in sorted(self._legacy.items())},
            jobs=dict(sorted(self._jobs.items())),
            orphan_evals=dict(sorted(orphans.items())),
            taken_at=self._now(),
        )
        return self._snapshot

    def _publish_runs(self, names: list[str], *, resort: bool) -> Snapshot:
        """A new snapshot in which only the named runs are rebuilt."""
        old = self._snapshot
        runs = dict(old.runs)
        legacy = dict(old.legacy_runs)
        # A re-read eval folder may have changed hands (a run whose name fits it came or went):
        # its old and new owners are rebuilt too.
        touched = set(names) | self._eval_owners_touched
        self._eval_owners_touched = set()
        for name in sorted(touched - {""}):
            if name in self._runs:
                runs[name] = self._assemble(self._runs[name].record)
            else:
                runs.pop(name, None)
            if name in self._legacy:
                legacy[name] = self._assemble(self._legacy[name])
        if resort:
            runs = dict(sorted(runs.items()))
        # Only eval folders re-read now, or of the named runs, can have become (or stopped being)
        # orphans; the rest keep their old standing.
        orphans = {f: e for f, e in old.orphan_evals.items() if _owner_key(e) not in touched}
        for name in touched:
            if not self._known(name):
                orphans.update((f, self._evals[f]) for f in self._evals_by_run.get(name, ()))
        self._snapshot = Snapshot(
            root=self.layout.root,
            runs=runs,
            legacy_runs=legacy,
            jobs=dict(self._jobs),
            orphan_evals=dict(sorted(orphans.items())),
            taken_at=self._now(),
        )
        return self._snapshot


def _join(base: RunRecord, evals: dict[str, EvalRecord], jobs: list[JobRecord]) -> RunRecord:
    """A run record with its evaluations and jobs: status corrected by the newest job, totals summed."""
    jobs = sorted(jobs, key=lambda j: (j.created or 0.0, j.id))
    status, reason = base.status, base.status_reason
    # only a training job says anything of the training: a backup (sync) or an evaluation of its
    # checkpoints running is not the run running, and one failing or stopped is not the run's end
    doers = [j for j in jobs if j.trains]
    if doers and not status.finished:
        status, reason = _with_job(status, reason, base.process_alive, doers[-1])
    return dataclasses.replace(
        base,
        status=status,
        status_reason=reason,
        evals=dict(sorted(evals.items())),
        job_ids=[j.id for j in jobs],
        restarts=sum(j.restarts for j in jobs),
        gpu_seconds=sum(j.usage.get("gpu_seconds") or 0.0 for j in jobs),
        cost=_total_cost(jobs),
    )


def _provenance(data: dict[str, Any] | None) -> Provenance | None:
    return Provenance.from_json(data) if data is not None else None


def _total_cost(jobs: list[JobRecord]) -> float | None:
    """The jobs' known costs added up; None (unknown) when no job had a price to cost it by."""
    costs = [c for c in (j.usage.get("cost") for j in jobs) if c is not None]
    return sum(costs) if costs else None


def _with_job(
    status: RunStatus, reason: str, process_alive: bool, job: JobRecord
) -> tuple[RunStatus, str]:
    """A run's status, corrected by its newest job: the keeper knows about restarts and losses.

    A lost job makes its run crashed, except while the run's own trainer is seen alive here:
    calling that crashed would invite a second trainer (a resume) or a cleanup under it.
    """
    if job.state is JobState.LOST or job.orphaned:
        if process_alive:
            return status, f"{reason}; its job {job.id} is lost (keeper gone), the trainer lives on"
        return RunStatus.CRASHED, f"job {job.id} lost (its keeper is gone)"
    if job.state.active and status in (RunStatus.CRASHED, RunStatus.UNKNOWN):
        return RunStatus.RUNNING, f"job {job.id} is {job.state.value}"
    if job.state is JobState.STOPPED and status is RunStatus.CRASHED and not process_alive:
        # the user stopped or killed it: its trainer died mid-step, but nothing went wrong
        return RunStatus.STOPPED, f"{job.last_reason or 'stopped by the user'} (job {job.id})"
    if job.state is JobState.FAILED and status is RunStatus.UNKNOWN:
        code = f" (exit code {job.exit_code})" if job.exit_code is not None else ""
        return RunStatus.CRASHED, f"job {job.id} failed{code}"
    return status, reason


@contextmanager
def _no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector during a scan.

    A scan makes hundreds of thousands of small acyclic objects; with the collector on, its
    repeated passes over them doubled the scan time at 1,000 runs (docs/benchmarks.md).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _subdirs(folder: Path) -> list[tuple[str, Path]]:
    """(name, path) of the folders in `folder` that are valid names, sorted; none if absent.

    A link to a folder counts: a run moved to another disk and linked back is still a run."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    out = []
    for e in entries:
        if e.name.startswith(".") or not e.is_dir():
            continue
        try:
            localfs.validate_name(e.name)
        except localfs.BadName:
            continue
        out.append((e.name, Path(e.path)))
    return sorted(out)


def _file_names(folder: Path) -> set[str]:
    try:
        return {e.name for e in os.scandir(folder) if e.is_file()}
    except OSError:
        return set()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0




def _owner_key(rec: EvalRecord) -> str:
    """The run an eval record is filed under: its owner, or "" (no run) when nobody owns it."""
    return "" if rec.owner_note else rec.run


def _parse_eval_record(data: bytes, path: str) -> tuple[str | None, str | None] | None:
    try:
        return folders.parse_eval_record(data.decode("utf-8"))
    except UnicodeDecodeError:
        return None


def _guess_split(folder: str) -> tuple[str, str]:
    """A display name for a folder no run owns: the split leaving a `run_...` name, else the
    first that leaves a dataset starting with a letter."""
    guess = None
    i = folder.find("_")
    while i != -1:
        run, dataset = folder[:i], folder[i + 1:]
        if dataset[:1].isalpha() and (guess is None or localfs.is_run_name(run)):
            guess = (run, dataset)
        i = folder.find("_", i + 1)
    return guess or (folder, "")


class _RunNames:
    """The index's run names (training and legacy) as a collection, without copying them."""

    def __init__(self, index: Index) -> None:
        self._index = index

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._index._known(name)

    def __iter__(self) -> Iterator[str]:
        return iter([*self._index._runs, *self._index._legacy])

    def __len__(self) -> int:
        return len(self._index._runs) + len(self._index._legacy)
