"""Restore a run from its last complete backup into localfs, ready to resume and evaluate.

Safety rules, checked for every file before anything is written:
- each path of the manifest must be a plain relative path inside `training_runs/RUN/` or
  `eval_runs/RUN_DATASET/` (`manifest.check_run_path`); one bad path refuses the whole restore;
- no folder on the way to a file, and not the file itself, may be a symlink: restore never writes
  through a link that is already in the destination;
- a local file that differs from the backup is not overwritten unless `force`;
- an eval folder the manifest lists that another run owns (rltui.runs.folders) is not restored.
Each file is downloaded to `.tmp_restore.*` beside its final name (opened with O_EXCL and
O_NOFOLLOW), its sha256 checked against the manifest, then renamed into place; a failure
leaves the temporary file removed and the local file as it was.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from rltui.runs import checkpoints, localfs
from rltui.archive.lock import run_lock
from rltui.archive.manifest import (
    FileEntry, HashCache, Manifest, UnsafePath, archived_steps, check_run_path, eval_folder_of_path,
    foreign_eval_folders, stat_local,
)
from rltui.archive.progress import Progress
from rltui.runs.disk import human_bytes
from rltui.archive.running import run_is_running
from rltui.archive.store import RemoteStore
from rltui.errors import UsageError, WorkFailed
from rltui.runs.localfs import Layout

WINDOW = 16  # files in flight at once (each may also be split into parallel ranges)
_TMP_PREFIX = localfs.STAGING_PREFIX + "restore."


@dataclass
class RestoreResult:
    run: str
    restored: list[str] = field(default_factory=list)
    restored_bytes: int = 0
    unchanged: list[str] = field(default_factory=list)
    overwritten: list[str] = field(default_factory=list)
    step_latest: int | None = None
    foreign: dict[str, str] = field(default_factory=dict)  # eval folder -> whose it is instead


def check_destination(root: Path, parts: list[str], *, file: bool = True) -> None:
    """UnsafePath if any existing component of root/parts is a symlink, or not what it must be
    (folders on the way, and a regular file at the end when `file`)."""
    p = root
    for i, seg in enumerate(parts):
        p = p / seg
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            return
        last = file and i == len(parts) - 1
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePath(f"refusing to restore through the symlink {p}")
        if not last and not stat.S_ISDIR(st.st_mode):
            raise UnsafePath(f"refusing to restore: {p} is not a folder")
        if last and not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"refusing to restore: {p} exists and is not a regular file")


def _make_dirs(root: Path, parts: list[str]) -> Path:
    """Create the folders of parts[:-1] one by one, refusing any symlink met on the way."""
    p = root
    for seg in parts[:-1]:
        p = p / seg
        try:
            os.mkdir(p)
        except FileExistsError:
            if os.path.islink(p) or not os.path.isdir(p):
                raise UnsafePath(f"refusing to restore through {p} (a symlink or not a folder)") from None
    return p


def restore_run(
    layout: Layout,
    store: RemoteStore,
    run: str,
    *,
    force: bool = False,
    for_resume: str | int | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> RestoreResult:
    """Restore the run's last complete backup; with `for_resume` ('latest' or a step) only what
    resuming from that checkpoint needs: the run folder's own files, its logs and that one
    checkpoint (not the other checkpoints, TensorBoard events or evaluations)."""
    localfs.validate_run_name(run)
    with run_lock(layout, run):
        return _restore_run(layout, store, run, force=force, for_resume=for_resume,
                            out=out or sys.stdout, err=err or sys.stderr)


def resume_files(manifest: Manifest, step: str | int) -> tuple[int, set[str]]:
    """(step, paths) of what resuming `manifest`'s run from `step` needs; UsageError if the
    backup holds no such checkpoint."""
    steps = archived_steps(manifest)
    if step == "latest":
        if not steps:
            raise UsageError(f"the backup of {manifest.run} holds no complete checkpoint to resume from")
        chosen = manifest.step_latest if manifest.step_latest in steps else steps[-1]
    else:
        chosen = int(step)
        if chosen not in steps:
            raise UsageError(f"bad --from-step: {step!r} (the backup of {manifest.run} holds steps "
                             f"{', '.join(map(str, steps)) or 'none'})")
    run_prefix = f"training_runs/{manifest.run}/"
    step_prefix = f"{run_prefix}training_state/{localfs.step_dir_name(chosen)}/"
    logs_prefix = f"{run_prefix}logs/"
    wanted = {p for p in manifest.files
              if p.startswith((step_prefix, logs_prefix))
              or (p.startswith(run_prefix) and "/" not in p[len(run_prefix):])}
    return chosen, wanted


def _restore_run(
    layout: Layout, store: RemoteStore, run: str, *, force: bool, for_resume: str | int | None,
    out: TextIO, err: TextIO,
) -> RestoreResult:
    if run_is_running(layout, run):
        raise UsageError(f"run {run} is running: refusing to restore into it (stop it first)")
    manifest = store.get_manifest(run)  # every path checked by Manifest.from_json
    if manifest is None:
        raise UsageError(
            f"bad --training-run: {run!r} (no complete backup in {store.url(store.run_prefix(run))})"
        )
    if for_resume is not None:
        step, wanted = resume_files(manifest, for_resume)
        manifest = Manifest(run, {p: e for p, e in manifest.files.items() if p in wanted}, step,
                            manifest.created, manifest.host)
    root = layout.root
    res = RestoreResult(run)
    cache = HashCache(layout, run)
    todo: list[FileEntry] = []
    conflicts: list[str] = []
    # An older backup may list another run's evaluations (once taken by name prefix): never
    # written over that run's folder.
    res.foreign = foreign_eval_folders(layout, run, manifest.files)
    for folder, whose in res.foreign.items():
        out.write(f"  not restored: eval_runs/{folder}/: not {run}'s ({whose})\n")
    try:
        for path, entry in sorted(manifest.files.items()):
            parts = check_run_path(path, run)
            if eval_folder_of_path(path) in res.foreign:
                continue
            check_destination(root, parts)
            local = stat_local(root, path)
            if local is None:
                todo.append(entry)
            elif local.size == entry.size and cache.sha256(local) == entry.sha256:
                res.unchanged.append(path)
            else:
                conflicts.append(path)
                todo.append(entry)
    except UnsafePath as e:
        raise WorkFailed(str(e)) from None
    finally:
        cache.save()
    if conflicts and not force:
        raise UsageError(
            f"restore of {run} would overwrite {len(conflicts)} local file(s) that differ from the "
            f"backup (first: {conflicts[0]}); pass --force to overwrite them"
        )
    res.overwritten = conflicts
    # checkpoint records last: no checkpoint looks complete before all its files are in place
    todo.sort(key=lambda e: (e.path.rsplit("/", 1)[-1] == localfs.CHECKPOINT_INFO, e.path))

    progress = Progress("downloading", sum(e.size for e in todo), stream=err)
    try:
        for i in range(0, len(todo), WINDOW):
            _restore_window(layout, store, run, todo[i:i + WINDOW], cache, progress, res)
    except UnsafePath as e:
        raise WorkFailed(str(e)) from None
    finally:
        progress.finish()
        cache.save()

    step = manifest.step_latest
    if step is not None and not checkpoints.checkpoint_problems(layout.step_dir(run, step)):
        check_destination(root, ["training_runs", run, "training_state"], file=False)
        checkpoints.update_step_latest(layout.training_state(run), step)
        res.step_latest = step
    out.write(f"{run}: restored {len(res.restored)} file(s), {human_bytes(res.restored_bytes)}; "
              f"{len(res.unchanged)} already present"
              + (f"; step_latest -> step_{step}" if res.step_latest is not None else "") + "\n")
    return res


def _restore_window(
    layout: Layout,
    store: RemoteStore,
    run: str,
    entries: list[FileEntry],
    cache: HashCache,
    progress: Progress,
    res: RestoreResult,
) -> None:
    """Download a few files at once into temporary names; verify each; rename each into place."""
    root = layout.root
    open_files: list[tuple[FileEntry, Path, int]] = []
    try:
        for entry in entries:
            parts = entry.path.split("/")
            folder = _make_dirs(root, parts)
            tmp = folder / f"{_TMP_PREFIX}{parts[-1][:100]}.{os.getpid()}.{len(open_files)}"
            try:
                os.unlink(tmp)  # left by an earlier run of ours that died
            except FileNotFoundError:
                pass
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            open_files.append((entry, tmp, fd))
        store.download_many(
            run, [(e.sha256, os.fdopen(os.dup(fd), "r+b")) for e, _t, fd in open_files], progress.add
        )
        for entry, tmp, fd in open_files:
            _verify(fd, entry)
            parts = entry.path.split("/")
            check_destination(root, parts)  # nothing turned into a symlink meanwhile
            os.replace(tmp, root / entry.path)
            localfs.fsync_dir(tmp.parent)
            res.restored.append(entry.path)
            res.restored_bytes += entry.size
            local = stat_local(root, entry.path)
            if local is not None:
                cache.remember(local, entry.sha256)
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        raise WorkFailed(f"restore of {run} stopped: {e.strerror or e}{where}; "
                         "files already restored are complete, run it again to finish") from None
    finally:
        for _entry, tmp, fd in open_files:
            os.close(fd)
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


def _verify(fd: int, entry: FileEntry) -> None:
    os.fsync(fd)
    h = hashlib.sha256()
    size = 0
    os.lseek(fd, 0, os.SEEK_SET)
    while True:
        block = os.read(fd, 1 << 20)
        if not block:
            break
        h.update(block)
        size += len(block)
    if size != entry.size or h.hexdigest() != entry.sha256:
        raise WorkFailed(
            f"downloaded {entry.path} does not match the backup's sha256 (got {size} bytes); "
            "nothing was overwritten"
        )
