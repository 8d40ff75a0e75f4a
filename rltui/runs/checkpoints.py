"""Checkpoint rules: staging, the manifest written last, completeness, `step_latest`, "latest".

A checkpoint is complete only when `training_info.json` exists and every file it lists exists with
its recorded size (../shared/DESIGN.md). Standard library only: the trainer and the evaluator use it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

from rltui.runs.localfs import (
    CHECKPOINT_INFO,
    FORMAT_VERSION,
    STAGING_PREFIX,
    STEP_LATEST,
    BadName,
    DamagedFile,
    fsync_dir,
    parse_step_dir,
    read_json,
    step_dir_name,
    write_json_atomic,
)
from rltui.runs.machine import this_host


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def list_files(folder: Path) -> list[str]:
    """Relative paths (with '/') of every regular file under folder, sorted."""
    folder = Path(folder)
    out: list[str] = []
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            full = Path(dirpath) / name
            if full.is_file() and not full.is_symlink():
                out.append(full.relative_to(folder).as_posix())
    return sorted(out)


def file_manifest(folder: Path, exclude: Iterable[str] = (CHECKPOINT_INFO,)) -> dict[str, dict[str, Any]]:
    skip = set(exclude)
    return {
        rel: {"size": (Path(folder) / rel).stat().st_size, "sha256": sha256_file(Path(folder) / rel)}
        for rel in list_files(folder)
        if rel not in skip
    }


def staging_dir(run_training_state: Path, step: int) -> Path:
    """A fresh temporary folder beside `step_N` where a checkpoint is written before its rename."""
    run_training_state = Path(run_training_state)
    run_training_state.mkdir(parents=True, exist_ok=True)
    return Path(
        tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{step_dir_name(step)}.", dir=str(run_training_state))
    )


def _fsync_tree(folder: Path) -> None:
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def finalize_checkpoint(staging: Path, final: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Seal a staged checkpoint: flush its files, write training_info.json last, rename into place.

    `info` is extended with `files` (every file with size and sha256), `format` and `created`.
    If `final` exists already (a resumed run saving the same step again), the old folder is moved
    aside first and removed only after the new one is in place.
    """
    staging, final = Path(staging), Path(final)
    _fsync_tree(staging)
    info = dict(info)
    info["files"] = file_manifest(staging)
    info.setdefault("format", FORMAT_VERSION)
    info.setdefault("created", _now())
    info.setdefault("host", this_host())
    write_json_atomic(staging / CHECKPOINT_INFO, info)
    fsync_dir(staging)
    old = None
    if final.exists():
        old = final.with_name(f"{STAGING_PREFIX}old.{final.name}.{os.getpid()}")
        os.replace(final, old)
    os.replace(staging, final)
    fsync_dir(final.parent)
    if old is not None:
        _rmtree(old)
    return info


def checkpoint_problems(step_dir: Path, *, verify_hash: bool = False) -> list[str]:
    """Why `step_dir` is not a complete checkpoint; an empty list means complete.

    Complete: training_info.json exists and parses, and every file it lists exists with its
    recorded size (and sha256 when `verify_hash`). A staging folder is never complete.
    """
    step_dir = Path(step_dir)
    if step_dir.name.startswith(STAGING_PREFIX):
        return ["unfinished save (temporary folder left by an interrupted write)"]
    if not step_dir.is_dir():
        return ["missing folder"]
    info_path = step_dir / CHECKPOINT_INFO
    try:
        info = read_json(info_path)
    except FileNotFoundError:
        return [f"missing {CHECKPOINT_INFO} (save did not finish)"]
    except DamagedFile as e:
        return [f"damaged {CHECKPOINT_INFO}: {e.reason}"]
    return listed_file_problems(step_dir, info, verify_hash=verify_hash)


def listed_file_problems(
    step_dir: str | os.PathLike[str], info: Any, *, verify_hash: bool = False, dir_fd: int | None = None
) -> list[str]:
    """The completeness rule applied to an already parsed training_info.json (`info`).

    Split from `checkpoint_problems` so that a reader that caches parsed info files (the index)
    applies exactly the same rule. `dir_fd`, an open descriptor of `step_dir`, makes the stat
    calls relative to it (the index checks tens of thousands of files per scan).
    """
    files = info.get("files") if isinstance(info, dict) else None
    if not isinstance(files, dict) or not files:
        return [f"damaged {CHECKPOINT_INFO}: no file list"]
    found: list[tuple[str, str]] = []  # (file, problem), sorted by file at the end
    base = os.fspath(step_dir)
    for rel, meta in files.items():
        if not isinstance(rel, str) or not rel or rel[0] == "/" or (".." in rel and ".." in rel.split("/")):
            found.append((str(rel), f"damaged {CHECKPOINT_INFO}: file path {rel!r} leaves the checkpoint"))
            continue
        try:
            if dir_fd is None:
                size = os.stat(os.path.join(base, rel)).st_size
            else:
                size = os.stat(rel, dir_fd=dir_fd).st_size
        except OSError:
            found.append((rel, f"missing file {rel}"))
            continue
        want = meta.get("size") if isinstance(meta, dict) else None
        if size != want:
            found.append((rel, f"wrong size {rel}: {size} bytes, expected {want}"))
        elif verify_hash and sha256_file(Path(base, rel)) != meta.get("sha256"):
            found.append((rel, f"wrong sha256 {rel}"))
    return [problem for _rel, problem in sorted(found)]


def is_complete(step_dir: Path) -> bool:
    return not checkpoint_problems(step_dir)


def read_checkpoint_info(step_dir: Path) -> dict[str, Any]:
    return read_json(Path(step_dir) / CHECKPOINT_INFO)


def list_step_dirs(training_state: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every `step_N` folder, sorted by step; staging folders excluded."""
    out = []
    try:
        entries = list(os.scandir(training_state))
    except OSError:
        return []
    for e in entries:
        step = parse_step_dir(e.name)
        if step is not None and e.is_dir(follow_symlinks=False):
            out.append((step, Path(e.path)))
    return sorted(out)


def list_staging_dirs(training_state: Path) -> list[Path]:
    try:
        return sorted(
            Path(e.path) for e in os.scandir(training_state) if e.name.startswith(STAGING_PREFIX)
        )
    except OSError:
        return []


def latest_complete_step(training_state: Path) -> int | None:
    """The one rule for "latest": the newest complete checkpoint, whatever `step_latest` names
    (a kill between a save's rename and the link's update leaves the link one behind)."""
    for step, path in reversed(list_step_dirs(training_state)):
        if is_complete(path):
            return step
    return None


def read_step_latest(training_state: Path) -> int | None:
    """The step that `step_latest` names, or None when there is no such link."""
    try:
        target = os.readlink(Path(training_state) / STEP_LATEST)
    except OSError:
        return None
    return parse_step_dir(os.path.basename(target.rstrip("/")))


def update_step_latest(training_state: Path, step: int) -> None:
    """Point `step_latest` at `step_N` atomically: a new link renamed over the old one."""
    training_state = Path(training_state)
    target = step_dir_name(step)
    tmp = training_state / f"{STAGING_PREFIX}link.{os.getpid()}"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    os.symlink(target, tmp)
    os.replace(tmp, training_state / STEP_LATEST)
    fsync_dir(training_state)


def resolve_step(training_state: Path, spec: str | int) -> int:
    """'latest' -> the newest complete checkpoint (latest_complete_step; `step_latest` is only a
    hint, never followed past a newer complete step); N -> N. Every reader of "latest" (jobs,
    the keeper, supervise, the trainer's resume, the archive) resolves it here."""
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        return int(spec)
    if spec != "latest":
        raise BadName(f"bad step: {spec!r} (use 'latest' or a step number)")
    found = latest_complete_step(training_state)
    if found is None:
        raise FileNotFoundError(f"no complete checkpoint in {training_state}")
    return found


def _now() -> float:
    return time.time()


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
