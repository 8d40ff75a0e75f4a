"""The live archive: back a run up while it trains, soon after each checkpoint is complete.

    python -m rltui.sync_to_s3 --action follow --training-run RUN --follow-job JOB_ID

runs as its own job beside the training job (the keeper of an `--archive` training job starts it),
never inside the trainer: a step is never slowed by hashing or uploading. Every `interval_s` it
looks at the run's files; when any changed it runs the ordinary incremental backup (`backup_run`:
the same manifest, the same rules: a checkpoint is uploaded only once it is complete, `.tmp_`
folders never). After each backup it applies the retention policy, to local checkpoints that the
new manifest holds and whose every object a HEAD confirms in the bucket; the newest complete
checkpoint and the one `step_latest` names are always kept. When the training job ends (or its
keeper is gone) it makes one last pass and exits.

It writes `archive/status/RUN.json` after every pass (what `status` and the TUI show as the
archive's lag): newest local complete step, newest archived step, bytes and files pending.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

from rltui.archive.backup import backup_run
from rltui.archive.manifest import LocalRun, Manifest, archived_steps, scan_run
from rltui.archive.running import evaluating
from rltui.runs.disk import human_bytes
from rltui.archive.store import RemoteStore, describe_error
from rltui.errors import UsageError, WorkFailed
from rltui.runs import checkpoints, localfs
from rltui.runs.disk import tree_size
from rltui.runs.localfs import Layout

DEFAULT_INTERVAL_S = 10.0
_ENDED = ("succeeded", "failed", "stopped", "lost")


@dataclass(frozen=True)
class Retention:
    """Which local checkpoints the live archive may delete once they are safe in the bucket.

    Nothing is deleted unless one of the three is set. `keep_latest`: delete every verified
    checkpoint but the newest; `keep_every` N: never delete a step that is a multiple of N;
    `local_budget`: delete the oldest verified checkpoints while the run's checkpoints take more
    than this many bytes on the local disk.
    """

    keep_latest: bool = False
    keep_every: int | None = None
    local_budget: int | None = None

    @property
    def active(self) -> bool:
        return self.keep_latest or self.local_budget is not None


@dataclass
class ArchiveStatus:
    """`archive/status/RUN.json`: how far behind the bucket is, written after every pass."""

    run: str
    job: str | None = None
    pid: int = field(default_factory=os.getpid)
    state: str = "following"  # following | done | failed
    newest_local_step: int | None = None
    newest_archived_step: int | None = None
    pending_bytes: int = 0
    pending_files: int = 0
    archived_bytes: int = 0
    last_backup: float | None = None
    last_error: str | None = None
    deleted_steps: list[int] = field(default_factory=list)
    updated: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def status_path(layout: Layout, run: str) -> Path:
    return layout.archive / "status" / f"{localfs.validate_run_name(run)}.json"


def read_status(layout: Layout, run: str) -> dict[str, Any] | None:
    """The run's archive status, or None when it has none (a damaged one reads as None too)."""
    try:
        data = localfs.read_json(status_path(layout, run))
    except (OSError, localfs.DamagedFile):
        return None
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------- the loop


class Follower:
    """One run's live archive. `clock` and `sleep` are passed in so the loop is tested fast."""

    def __init__(
        self,
        layout: Layout,
        store: RemoteStore,
        run: str,
        *,
        job: str | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
        retention: Retention = Retention(),
        out: TextIO | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.layout = layout
        self.store = store
        self.run = localfs.validate_run_name(run)
        self.job = job
        self.interval_s = interval_s
        self.retention = retention
        self.out = out or sys.stdout
        self.clock = clock
        self.sleep = sleep
        self.status = ArchiveStatus(run, job=job)
        self._seen: tuple | None = None
        self.stop_requested = False
        self._manifest: Manifest | None = None  # the last one this follower uploaded or found

    def request_stop(self, *_: object) -> None:
        """SIGTERM (a user's stop): make the last pass now, then end."""
        self.stop_requested = True

    def run_until_job_ends(self) -> ArchiveStatus:
        """Pass after pass until the watched job has ended (or a stop is asked), then one last pass."""
        while True:
            ended = self.stop_requested or self.job_ended()
            self.one_pass()
            if ended:
                break
            waited = 0.0
            while waited < self.interval_s and not self.stop_requested:
                step = min(0.2, self.interval_s - waited)
                self.sleep(step)
                waited += step
        self.status.state = "done" if self.status.last_error is None else "failed"
        self._write_status()
        if self.status.last_error is not None:
            raise WorkFailed(f"live archive of {self.run}: last pass failed: {self.status.last_error}")
        return self.status

    def job_ended(self) -> bool:
        if self.job is None:
            return True
        from rltui.jobs.control import keeper_gone
        from rltui.jobs.records import read_state

        try:
            state = read_state(self.layout, self.job)
        except (OSError, localfs.DamagedFile, ValueError):
            return False  # written atomically: a read error is passing, not an ending
        return state.state.value in _ENDED or keeper_gone(state) is not None

    def one_pass(self) -> bool:
        """Back up when anything changed, then apply retention. True when a backup ran."""
        local = scan_run(self.layout, self.run)
        fingerprint = tuple((f.path, f.size, f.mtime_ns) for f in local.files)
        self.status.newest_local_step = _newest_complete(self.layout, self.run)
        if fingerprint == self._seen:
            self._write_status()
            return False
        self._note_pending(local, self._manifest)
        self._write_status()
        try:
            result = backup_run(self.layout, self.store, self.run, live=True, out=self.out, err=io.StringIO())
        except (UsageError, WorkFailed) as e:
            self._failed(str(e))
            return False
        except Exception as e:  # network, S3: the next pass tries again
            self._failed(describe_error(e, self.store.settings))
            return False
        self._seen = fingerprint
        self._manifest = result.manifest
        self.status.last_error = None
        self.status.last_backup = self.clock()
        self.status.newest_archived_step = newest_archived_step(result.manifest)
        self.status.archived_bytes = result.manifest.total_size
        self._note_pending(scan_run(self.layout, self.run), result.manifest)
        if self.retention.active:
            self.status.deleted_steps += apply_retention(
                self.layout, self.store, result.manifest, self.retention, self.out)
        self._write_status()
        _refresh_catalog(self.layout, self.store, result.manifest)
        return True

    def _note_pending(self, local: LocalRun, manifest: Manifest | None) -> None:
        files = manifest.files if manifest is not None else {}
        since = manifest.created if manifest is not None else 0.0
        pending = [f for f in local.files
                   if (e := files.get(f.path)) is None or e.size != f.size or f.mtime_ns / 1e9 > since]
        self.status.pending_files = len(pending)
        self.status.pending_bytes = sum(f.size for f in pending)

    def _failed(self, why: str) -> None:
        self.status.last_error = why
        self.out.write(f"{self.run}: live archive pass failed: {why}; trying again in "
                       f"{self.interval_s:g}s\n")
        self._write_status()

    def _write_status(self) -> None:
        self.status.updated = self.clock()
        try:
            localfs.write_json_atomic(status_path(self.layout, self.run), self.status.to_json(),
                                      durable=False)
        except OSError as e:
            self.out.write(f"{self.run}: cannot write the archive status: {e.strerror or e}\n")


def _newest_complete(layout: Layout, run: str) -> int | None:
    try:
        return checkpoints.latest_complete_step(layout.training_state(run))
    except FileNotFoundError:
        return None


def newest_archived_step(manifest: Manifest) -> int | None:
    steps = archived_steps(manifest)
    return steps[-1] if steps else None


def _refresh_catalog(layout: Layout, store: RemoteStore, manifest: Manifest) -> None:
    from rltui.archive.catalog import remember_manifest

    remember_manifest(layout, store, manifest)


# ---------------------------------------------------------------- retention


def apply_retention(
    layout: Layout, store: RemoteStore, manifest: Manifest, policy: Retention, out: TextIO,
) -> list[int]:
    """Delete the local checkpoints the policy lets go, each only once it is verified in the
    bucket (in the manifest with the same size and sha256, and a HEAD of each object says the
    right size). Returns the steps deleted."""
    training_state = layout.training_state(manifest.run)
    complete = [(s, p) for s, p in checkpoints.list_step_dirs(training_state)
                if not checkpoints.checkpoint_problems(p)]
    if len(complete) < 2:
        return []
    reader = evaluating(layout, manifest.run)
    if reader:  # it reads them now: deletions wait for a pass after it ends
        out.write(f"  kept every local checkpoint: job {reader} evaluates them\n")
        return []
    protected = {complete[-1][0], checkpoints.read_step_latest(training_state)}
    if policy.keep_every:
        protected |= {s for s, _ in complete if s % policy.keep_every == 0}
    candidates = [(s, p) for s, p in complete if s not in protected]
    if not policy.keep_latest:  # only the budget deletes: oldest first while over it
        sizes = {s: tree_size(p) for s, p in complete}
        over = sum(sizes.values()) - (policy.local_budget or 0)
        chosen = []
        for s, p in candidates:
            if over <= 0:
                break
            chosen.append((s, p))
            over -= sizes[s]
        candidates = chosen
    deleted = []
    for step, folder in candidates:
        why = _not_safe(layout, store, manifest, folder)
        if why:
            out.write(f"  kept step_{step} locally: {why}\n")
            continue
        _delete_checkpoint(folder)
        deleted.append(step)
    if deleted:
        out.write(f"{manifest.run}: deleted local checkpoint(s) {', '.join(f'step_{s}' for s in deleted)} "
                  f"(verified in the bucket)\n")
    return deleted


def _not_safe(layout: Layout, store: RemoteStore, manifest: Manifest, folder: Path) -> str | None:
    """Why `folder` may not be deleted yet, or None when every file is verified in the bucket."""
    info = checkpoints.read_checkpoint_info(folder)
    listed = dict(info.get("files") or {})
    listed[localfs.CHECKPOINT_INFO] = {"size": (folder / localfs.CHECKPOINT_INFO).stat().st_size}
    for rel, meta in listed.items():
        path = (folder / rel).relative_to(layout.root).as_posix()
        entry = manifest.files.get(path)
        if entry is None or entry.size != meta.get("size"):
            return f"{rel} is not in the backup yet"
        if meta.get("sha256") not in (None, entry.sha256):
            return f"{rel} differs from the backup"
        if store.head_size(manifest.run, entry.sha256) != entry.size:
            return f"{rel} is not confirmed in the bucket"
    return None


def _delete_checkpoint(folder: Path) -> None:
    """Rename out of the way first, so no reader ever sees a half-deleted complete checkpoint."""
    doomed = folder.with_name(f"{localfs.STAGING_PREFIX}deleting.{folder.name}.{os.getpid()}")
    os.rename(folder, doomed)
    localfs.fsync_dir(folder.parent)
    shutil.rmtree(doomed, ignore_errors=True)


def describe_lag(status: dict[str, Any] | None, newest_local: int | None) -> str:
    """One line for `status` and the TUI: how far behind the bucket is."""
    if not status:
        return "not archived live"
    archived = status.get("newest_archived_step")
    local = newest_local if newest_local is not None else status.get("newest_local_step")
    lag = (local - archived) if isinstance(local, int) and isinstance(archived, int) else None
    parts = [f"archived step {archived if archived is not None else '-'}"
             f" of local {local if local is not None else '-'}"]
    if lag:
        parts.append(f"{lag} step(s) behind")
    pending = int(status.get("pending_bytes") or 0)
    if pending:
        parts.append(f"{human_bytes(pending)} pending")
    if status.get("last_error"):
        parts.append(f"last pass failed: {status['last_error']}")
    parts.append(str(status.get("state") or "?"))
    return ", ".join(parts)
