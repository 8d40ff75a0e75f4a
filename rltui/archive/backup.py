"""Backup of one run (or every run that is not running) and the `--cleanup` that may follow.

Order of a backup, each step safe to interrupt:
1. read the remote manifest and the list of objects already in the bucket;
2. hash the local files (cached) and upload, in parallel, every content not yet in the bucket;
3. check that no uploaded file changed while it was read (else hash and upload it again);
4. upload the new manifest last, in one PUT; until then the previous one still describes a
   complete backup. An unchanged run uploads nothing, not even the manifest;
5. delete objects that no manifest refers to any more (old versions of changed files).

A backup never drops what an earlier backup holds: files gone locally (cleaned up, or removed by
a retention policy) stay in the new manifest. Cleanup deletes a local file only when it still
matches the uploaded manifest and a HEAD of its object returns the right size.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import TextIO

from rltui.runs import checkpoints, folders, localfs
from rltui.archive.lock import run_lock
from rltui.archive.manifest import (
    FileEntry, HashCache, LocalFile, Manifest, eval_folder_of_path, foreign_eval_folders,
    run_eval_dirs, scan_run, stat_local,
)
from rltui.archive.progress import Progress
from rltui.runs.disk import human_bytes
from rltui.archive.running import cleanup_refusal, evaluating, running_runs
from rltui.archive.store import RemoteStore, translate
from rltui.errors import UsageError, WorkFailed
from rltui.runs.localfs import Layout

MAX_CHANGE_ROUNDS = 3
#: a multipart upload of this run unfinished for this long was left by an interrupted backup
#: (a kill, a cut connection): the next backup of the run aborts it, so the bucket keeps no parts
STALE_UPLOAD_S = float(os.environ.get("RLTUI_S3_STALE_UPLOAD_S", "3600"))


@dataclass
class CleanupResult:
    deleted: list[str] = field(default_factory=list)
    deleted_bytes: int = 0
    kept: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    foreign: dict[str, str] = field(default_factory=dict)  # eval folder -> whose it is instead


@dataclass
class BackupResult:
    run: str
    manifest: Manifest
    uploaded: list[str] = field(default_factory=list)
    uploaded_bytes: int = 0
    manifest_uploaded: bool = False
    garbage_deleted: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    cleanup: CleanupResult | None = None


@dataclass
class _Plan:
    entries: dict[str, FileEntry]
    files: dict[str, LocalFile]


def backup_run(
    layout: Layout,
    store: RemoteStore,
    run: str,
    *,
    cleanup: bool = False,
    keep_latest: bool = False,
    dry_run: bool = False,
    live: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> BackupResult:
    """Back up one run (and clean it up if asked), holding the run's archive lock.

    `live` (the live archive's passes over a running run): files that changed while the pass read
    them (a log the trainer appends to every step) are left for the next pass, keeping the
    previous backup's version in the manifest, instead of being read again or failing the pass."""
    localfs.validate_run_name(run)
    if not layout.root.is_dir():
        raise UsageError(f"bad --root: {str(layout.root)!r} (no such folder)")
    with run_lock(layout, run):
        return _backup_run(layout, store, run, cleanup=cleanup, keep_latest=keep_latest,
                           dry_run=dry_run, live=live, out=out or sys.stdout, err=err or sys.stderr)


def _backup_run(
    layout: Layout,
    store: RemoteStore,
    run: str,
    *,
    cleanup: bool,
    keep_latest: bool,
    dry_run: bool,
    live: bool,
    out: TextIO,
    err: TextIO,
) -> BackupResult:
    why = cleanup_refusal(layout, run) if cleanup else None
    if why:
        raise UsageError(f"{why}: refusing to clean it up (stop it, or back up without --cleanup)")
    local = scan_run(layout, run)
    previous = store.get_manifest(run)
    if not local.files and previous is None:
        raise UsageError(f"bad --training-run: {run!r} (no such run in {layout.training_runs} and no backup)")
    remote = store.list_objects(run)
    if not dry_run and (aborted := store.abort_stale_uploads(run, STALE_UPLOAD_S)):
        out.write(f"  aborted {aborted} unfinished upload(s) an interrupted backup left in the bucket\n")
    result = BackupResult(run, previous or Manifest(run), skipped=local.skipped)
    for path, why in local.skipped:
        out.write(f"  not backed up: {path} ({why})\n")

    cache = HashCache(layout, run)
    try:
        plan = _hash_and_upload(store, run, local.files, cache, remote, result, dry_run, err, local.recorded)
        for reread in range(MAX_CHANGE_ROUNDS + 1):
            now = {p: stat_local(layout.root, p) for p in plan.files}
            changed = [f for p, f in now.items() if f is not None and f != plan.files[p]]
            for gone in [p for p, f in now.items() if f is None]:  # deleted meanwhile: not backed up
                del plan.files[gone], plan.entries[gone]
            if not changed or dry_run:
                break
            if live:  # a running run: what changed is left for the next pass, not read again now
                for f in changed:  # the previous backup's version stays listed (_merge), if any
                    plan.entries.pop(f.path, None)
                    plan.files.pop(f.path, None)
                out.write(f"  {len(changed)} file(s) still being written: left for the next pass\n")
                break
            if reread == MAX_CHANGE_ROUNDS:
                raise WorkFailed(f"files of {run} keep changing during the backup (is it running?); run it again")
            out.write(f"  {len(changed)} file(s) changed while being read; reading them again\n")
            again = _hash_and_upload(store, run, changed, cache, remote, result, dry_run, err)
            plan.entries.update(again.entries)
            plan.files.update(again.files)
    finally:
        cache.save()

    manifest = _merge(run, previous, plan.entries, local.step_latest, remote, out)
    result.manifest = manifest
    if dry_run:
        for path in result.uploaded:
            if (f := plan.files.get(path)) is not None:  # not a file deleted while it was read
                out.write(f"  would upload {path} ({human_bytes(f.size)})\n")
        out.write(f"{run}: dry run: would upload {len(result.uploaded)} file(s), "
                  f"{human_bytes(result.uploaded_bytes)}; nothing uploaded or deleted\n")
    elif manifest.same_content(previous):
        out.write(f"{run}: up to date ({len(manifest.files)} files, {human_bytes(manifest.total_size)})\n")
    else:
        store.put_manifest(manifest)
        result.manifest_uploaded = True
        referenced = {e.sha256 for e in manifest.files.values()}
        garbage = set(remote) - referenced
        if garbage:
            store.delete_objects(run, garbage)
            result.garbage_deleted = len(garbage)
        out.write(f"{run}: backed up {len(manifest.files)} files, {human_bytes(manifest.total_size)} "
                  f"({len(result.uploaded)} uploaded, {human_bytes(result.uploaded_bytes)}) to "
                  f"{store.url(store.run_prefix(run))}\n")
    if cleanup:
        pending = {plan.entries[p].sha256 for p in result.uploaded} if dry_run else set()
        result.cleanup = cleanup_run(layout, store, manifest, keep_latest=keep_latest, dry_run=dry_run,
                                     out=out, would_upload=pending)
    return result


def _hash_and_upload(
    store: RemoteStore,
    run: str,
    files: list[LocalFile],
    cache: HashCache,
    remote: dict[str, int],
    result: BackupResult,
    dry_run: bool,
    err: TextIO,
    recorded: dict[str, str] | None = None,
) -> _Plan:
    """Hash each file and, while the next one hashes, upload the contents the bucket lacks.

    `recorded`: sha256 that complete checkpoints record for their own files (not re-read).
    """
    recorded = recorded or {}
    plan = _Plan({}, {})
    progress = Progress("uploading", sum(f.size for f in files), stream=err)
    if dry_run:
        for f in files:
            sha = recorded.get(f.path) or cache.sha256(f)
            plan.entries[f.path] = FileEntry(f.path, f.size, sha)
            plan.files[f.path] = f
            if remote.get(sha) != f.size:
                remote[sha] = f.size  # counted once even when two files share it
                result.uploaded.append(f.path)
                result.uploaded_bytes += f.size
        return plan
    with store.uploader(run, progress.add) as up:
        for f in files:
            sha = recorded.get(f.path) or cache.sha256(f)
            plan.entries[f.path] = FileEntry(f.path, f.size, sha)
            plan.files[f.path] = f
            if remote.get(sha) == f.size:
                progress.total -= f.size
                continue
            if not up.submit(f, sha):  # changed since it was hashed: the re-read below has it
                progress.total -= f.size
                continue
            remote[sha] = f.size
            result.uploaded.append(f.path)
            result.uploaded_bytes += f.size
    progress.finish()
    return plan


def _merge(
    run: str,
    previous: Manifest | None,
    local: dict[str, FileEntry],
    step_latest: int | None,
    remote: dict[str, int],
    out: TextIO,
) -> Manifest:
    """The previous backup's files, updated by the local ones; files lost from the bucket dropped."""
    files = dict(previous.files) if previous else {}
    files.update(local)
    lost = sorted(p for p, e in files.items() if remote.get(e.sha256) != e.size)
    for p in lost:
        out.write(f"  warning: {p} of the previous backup is missing from the bucket; no longer listed\n")
        del files[p]
    if step_latest is None and previous is not None:
        step_latest = previous.step_latest
    if previous is not None and previous.same_content(Manifest(run, files, step_latest)):
        return previous
    return Manifest(run, files=files, step_latest=step_latest)


# ---------------------------------------------------------------- cleanup


def keep_paths(layout: Layout, run: str) -> tuple[str, str, str]:
    """What --keep-latest keeps, as (run folder prefix, logs prefix, latest step prefix).

    Every file directly in the run folder (config.yaml, the trainer's config_resolved.yaml,
    status.json: small, and what resume and the index read), everything under logs/, and the
    newest complete checkpoint (the one `step_latest` names when it is complete).
    """
    rel = lambda p: p.relative_to(layout.root).as_posix() + "/"  # noqa: E731
    step_prefix = ""
    try:
        step = checkpoints.resolve_step(layout.training_state(run), "latest")
        step_prefix = rel(layout.step_dir(run, step))
    except (FileNotFoundError, localfs.BadName):
        pass
    return rel(layout.run_dir(run)), rel(layout.logs_dir(run)), step_prefix


def _kept(path: str, keep: tuple[str, str, str]) -> bool:
    run_prefix, logs_prefix, step_prefix = keep
    top_level = path.startswith(run_prefix) and "/" not in path[len(run_prefix):]
    return top_level or path.startswith(logs_prefix) or bool(step_prefix and path.startswith(step_prefix))


def cleanup_run(
    layout: Layout,
    store: RemoteStore,
    manifest: Manifest,
    *,
    keep_latest: bool,
    dry_run: bool,
    out: TextIO,
    would_upload: set[str] | frozenset[str] = frozenset(),
) -> CleanupResult:
    """Delete local files of `manifest` that are confirmed in the bucket (HEAD: right size).

    On a dry run, `would_upload` names contents that the backup would have uploaded first.
    """
    run = manifest.run
    why = cleanup_refusal(layout, run)
    if why:
        raise UsageError(f"{why}: refusing to clean it up")
    res = CleanupResult()
    keep = keep_paths(layout, run)
    cache = HashCache(layout, run)
    res.foreign = foreign_eval_folders(layout, run, manifest.files)
    for folder, whose in res.foreign.items():
        out.write(f"  kept eval_runs/{folder}/: not {run}'s ({whose})\n")
    candidates: list[tuple[LocalFile, FileEntry]] = []
    for path, entry in sorted(manifest.files.items()):
        if eval_folder_of_path(path) in res.foreign:
            continue
        f = stat_local(layout.root, path)
        if f is None:
            continue
        if keep_latest and _kept(path, keep):
            res.kept.append(path)
        elif f.size != entry.size or cache.sha256(f) != entry.sha256:
            res.refused.append((path, "changed since the backup"))
        else:
            candidates.append((f, entry))
    cache.save()

    confirmed: dict[str, bool] = {}
    for _f, entry in candidates:
        if entry.sha256 in would_upload:
            confirmed[entry.sha256] = True
        elif entry.sha256 not in confirmed:
            confirmed[entry.sha256] = store.head_size(run, entry.sha256) == entry.size
    doomed = [(f, e) for f, e in candidates if confirmed[e.sha256]]
    res.refused += [(f.path, "not confirmed in the bucket") for f, e in candidates if not confirmed[e.sha256]]
    for path, why in res.refused:
        out.write(f"  kept {path}: {why}\n")
    if dry_run:
        for f, _e in doomed:
            out.write(f"  would delete {f.path}\n")
        out.write(f"{run}: dry run: would delete {len(doomed)} local file(s), "
                  f"{human_bytes(sum(f.size for f, _ in doomed))}; kept {len(res.kept)}\n")
        return res

    _unlink_step_latest_if_doomed(layout, run, {f.path for f, _ in doomed})
    # training_info.json last: a checkpoint cut short by a crash here reads "missing file X"
    order = sorted(doomed, key=lambda fe: (fe[0].full.name == localfs.CHECKPOINT_INFO, fe[0].path))
    for f, _e in order:
        try:
            os.unlink(f.full)
        except FileNotFoundError:
            continue
        except OSError as e:
            raise WorkFailed(f"cleanup of {run} stopped: cannot delete {f.full}: {e.strerror}") from None
        res.deleted.append(f.path)
        res.deleted_bytes += f.size
    _remove_empty_dirs(layout, run)
    out.write(f"{run}: cleaned up {len(res.deleted)} local file(s), {human_bytes(res.deleted_bytes)}"
              + (f"; kept the latest checkpoint, config, status and logs ({len(res.kept)} files)"
                 if keep_latest else "") + "\n")
    return res


def _unlink_step_latest_if_doomed(layout: Layout, run: str, doomed: set[str]) -> None:
    training_state = layout.training_state(run)
    step = checkpoints.read_step_latest(training_state)
    if step is None:
        return
    prefix = layout.step_dir(run, step).relative_to(layout.root).as_posix() + "/"
    if any(p.startswith(prefix) for p in doomed):
        try:
            os.unlink(layout.step_latest(run))
        except FileNotFoundError:
            pass


def _remove_empty_dirs(layout: Layout, run: str) -> None:
    link = layout.step_latest(run)
    if os.path.islink(link) and not link.exists():
        os.unlink(link)
    for top in [layout.run_dir(run), *run_eval_dirs(layout, run)]:
        if not top.is_dir() or top.is_symlink():
            continue
        for dirpath, _dirs, _files in os.walk(top, topdown=False):
            try:
                os.rmdir(dirpath)  # only succeeds when empty
            except OSError:
                pass


def backup_all(
    layout: Layout,
    store: RemoteStore,
    *,
    cleanup: bool = False,
    keep_latest: bool = False,
    dry_run: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> list[BackupResult]:
    """Back up every run that is not running; one run's failure does not stop the others."""
    out = out or sys.stdout
    results: list[BackupResult] = []
    failed: list[str] = []
    runs = [name for name, _path in folders.run_folders(layout)]  # the index's rule: links count
    if not runs:
        out.write(f"no runs in {layout.training_runs}\n")
    busy = running_runs(layout)
    for run in runs:
        if run in busy:
            out.write(f"{run}: running; skipped\n")
            continue
        reader = evaluating(layout, run) if cleanup else None
        if reader:
            out.write(f"{run}: being evaluated (job {reader}); skipped\n")
            continue
        try:
            results.append(backup_run(layout, store, run, cleanup=cleanup, keep_latest=keep_latest,
                                      dry_run=dry_run, out=out, err=err))
        except Exception as e:  # one line per run; the summary below fails the command
            out.write(f"{run}: failed: {translate(e, store.settings, 'backup')}\n")
            failed.append(run)
    if dry_run and results:
        out.write(f"dry run: would upload {sum(len(r.uploaded) for r in results)} file(s), "
                  f"{human_bytes(sum(r.uploaded_bytes for r in results))} in all, "
                  f"from {len(results)} run(s)\n")
    if failed:
        raise WorkFailed(f"backup failed for {len(failed)} run(s): {', '.join(failed)}")
    return results
