"""list-backups and verify: read-only views of the bucket and of a run against its backup."""

from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass, field
from typing import Any

from rltui.runs import localfs
from rltui.archive.manifest import HashCache, Manifest, scan_run, stat_local
from rltui.runs.disk import human_bytes
from rltui.archive.store import RemoteStore
from rltui.errors import UsageError
from rltui.runs.localfs import Layout


@dataclass
class BackupInfo:
    run: str
    complete: bool
    state: str  # "complete" or why not
    files: int
    size: int
    backed_up_at: float | None  # when the manifest was written (the last complete backup)
    unreferenced: int = 0  # objects beyond the manifest: a later backup that did not finish

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def backup_info(store: RemoteStore, run: str) -> BackupInfo:
    objects = store.list_objects(run)
    raw = store.get_manifest_raw(run)
    if raw is None:
        return BackupInfo(run, False, "incomplete: no manifest (a first backup did not finish)",
                          len(objects), sum(objects.values()), None, len(objects))
    try:
        manifest = Manifest.from_json(raw[0], run)
    except ValueError as e:
        return BackupInfo(run, False, f"damaged manifest: {e}", len(objects), sum(objects.values()),
                          raw[1], len(objects))
    missing = [p for p, e in manifest.files.items() if objects.get(e.sha256) != e.size]
    referenced = {e.sha256 for e in manifest.files.values()}
    state = "complete" if not missing else f"incomplete: {len(missing)} file(s) missing from the bucket"
    return BackupInfo(run, not missing, state, len(manifest.files), manifest.total_size,
                      manifest.created, len(set(objects) - referenced))


def list_backups(store: RemoteStore) -> list[BackupInfo]:
    return [backup_info(store, run) for run in store.list_runs()]


def _when(t: float | None) -> str:
    if not t:
        return "-"
    return _dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def format_unfinished(uploads: list[tuple[str, str, float]], prefix: str, now: float) -> str:
    """A note on multipart uploads that interrupted backups left (they hold storage until
    aborted; the next backup of their run aborts those older than an hour)."""
    if not uploads:
        return ""
    runs = sorted({key[len(prefix):].split("/", 1)[0] for key, _id, _t in uploads})
    oldest = now - min(t for _k, _i, t in uploads)
    return (f"{len(uploads)} unfinished upload(s) left by interrupted backups of {', '.join(runs)} "
            f"(oldest {oldest / 3600:.1f} h); the next backup of the run aborts them\n")


def format_backups(infos: list[BackupInfo], where: str) -> str:
    if not infos:
        return f"no backups in {where}\n"
    head = f"{'RUN':<28} {'FILES':>6} {'SIZE':>10}  {'LAST COMPLETE BACKUP':<20} STATE"
    lines = [f"backups in {where}", head]
    for b in infos:
        state = b.state + (f" (+{b.unreferenced} objects of an unfinished backup)"
                           if b.unreferenced and b.backed_up_at else "")
        lines.append(f"{b.run:<28} {b.files:>6} {human_bytes(b.size):>10}  "
                     f"{_when(b.backed_up_at if b.complete else None):<20} {state}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- verify


@dataclass
class VerifyResult:
    run: str
    same: list[str] = field(default_factory=list)
    differs: list[str] = field(default_factory=list)  # local file differs from the backup
    not_backed_up: list[str] = field(default_factory=list)  # local only
    only_in_backup: list[str] = field(default_factory=list)  # cleaned up locally, or never restored
    missing_remote: list[str] = field(default_factory=list)  # the manifest names it, bucket lacks it
    has_backup: bool = True

    @property
    def in_sync(self) -> bool:
        return self.has_backup and not (self.differs or self.not_backed_up or self.missing_remote)

    def summary(self) -> str:
        if not self.has_backup:
            return f"{self.run}: no complete backup"
        parts = [f"{len(self.same)} same"]
        for label, items in (("differ locally", self.differs), ("not backed up", self.not_backed_up),
                             ("only in the backup", self.only_in_backup),
                             ("missing from the bucket", self.missing_remote)):
            if items:
                parts.append(f"{len(items)} {label}")
        verdict = "in sync" if self.in_sync else "NOT in sync"
        return f"{self.run}: {verdict}: " + ", ".join(parts)


def verify_run(layout: Layout, store: RemoteStore, run: str) -> VerifyResult:
    """Compare local files with the last complete backup and the bucket; change nothing.

    Local files are compared by size and sha256 (from the cache when size, mtime and inode are
    unchanged; the cache is not written), remote objects by their listed size.
    """
    localfs.validate_run_name(run)
    res = VerifyResult(run)
    manifest = store.get_manifest(run)
    local = scan_run(layout, run)
    if manifest is None:
        if not local.files:
            raise UsageError(f"bad --training-run: {run!r} (no such run locally and no backup)")
        res.has_backup = False
        res.not_backed_up = [f.path for f in local.files]
        return res
    objects = store.list_objects(run)
    cache = HashCache(layout, run)
    local_paths = {f.path for f in local.files}
    for path, entry in sorted(manifest.files.items()):
        if objects.get(entry.sha256) != entry.size:
            res.missing_remote.append(path)
        f = stat_local(layout.root, path)
        if f is None:
            res.only_in_backup.append(path)
        elif f.size == entry.size and cache.sha256(f) == entry.sha256:
            res.same.append(path)
        else:
            res.differs.append(path)
    res.not_backed_up = sorted(local_paths - set(manifest.files))
    return res


def format_verify(res: VerifyResult, limit: int = 20) -> str:
    lines = []
    for label, items in (("differs", res.differs), ("not backed up", res.not_backed_up),
                         ("missing from the bucket", res.missing_remote)):
        for p in items[:limit]:
            lines.append(f"  {label}: {p}")
        if len(items) > limit:
            lines.append(f"  {label}: ... and {len(items) - limit} more")
    lines.append(res.summary())
    return "\n".join(lines) + "\n"
