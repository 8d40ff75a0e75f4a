"""What a backup holds, and which local files belong to a run.

A run's backup is the run folder `training_runs/RUN/` and its evaluations `eval_runs/RUN_DATASET/`.
Paths in a manifest are relative to the localfs root, with '/'. Left out on purpose:
- anything whose name starts with `.tmp_` (staging folders of unfinished saves, restore temps)
  and the `.NAME.*.tmp` temporaries of the atomic writers: half-written by definition;
- checkpoint folders `step_N` that are not complete (`localfs.checkpoint_problems`): an
  interrupted save is never archived as if it were a checkpoint; it stays on disk untouched;
- symlinks (S3 has none): `step_latest` is recorded as the manifest's `step_latest` instead;
- the `STOP` request file, which would stop a restored run at its first step;
- the writer lock `.writer.lock` and its record `.writer.json` (rltui.runs.writer_lock): they
  belong to a process on this machine, not to the run.
"""

from __future__ import annotations

import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from rltui.runs import checkpoints, folders, localfs, machine
from rltui.runs.localfs import Layout

MANIFEST_FORMAT = 1
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SKIP_NAMES = {"STOP", ".writer.lock", ".writer.json"}  # the writer lock: a live process's


class UnsafePath(ValueError):
    """A manifest path or object key that could land outside the run's folders."""


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to the localfs root, '/'-separated
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "sha256": self.sha256}


@dataclass
class Manifest:
    """The description of one complete backup of a run. Uploaded last; what restore trusts."""

    run: str
    files: dict[str, FileEntry] = field(default_factory=dict)
    step_latest: int | None = None
    created: float = field(default_factory=time.time)
    host: str = field(default_factory=machine.this_host)
    format: int = MANIFEST_FORMAT

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files.values())

    def same_content(self, other: "Manifest | None") -> bool:
        return (
            other is not None
            and other.files == self.files
            and other.step_latest == self.step_latest
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "run": self.run,
            "created": self.created,
            "host": self.host,
            "step_latest": self.step_latest,
            "file_count": len(self.files),
            "total_size": self.total_size,
            "files": {p: e.to_json() for p, e in sorted(self.files.items())},
        }

    @classmethod
    def from_json(cls, obj: Any, run: str) -> "Manifest":
        """Parse and check a downloaded manifest; every path must stay inside `run`'s folders."""
        if not isinstance(obj, dict) or not isinstance(obj.get("files"), dict):
            raise ValueError("not a manifest (no file list)")
        if obj.get("run") != run:
            raise ValueError(f"manifest is for run {obj.get('run')!r}, not {run!r}")
        files: dict[str, FileEntry] = {}
        for path, meta in obj["files"].items():
            check_run_path(path, run)
            if not isinstance(meta, dict):
                raise ValueError(f"bad entry for {path!r}")
            size, sha = meta.get("size"), meta.get("sha256")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ValueError(f"bad size for {path!r}: {size!r}")
            if not isinstance(sha, str) or not _SHA256.match(sha):
                raise ValueError(f"bad sha256 for {path!r}")
            files[path] = FileEntry(path, size, sha)
        step = obj.get("step_latest")
        if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
            raise ValueError(f"bad step_latest: {step!r}")
        return cls(
            run=run, files=files, step_latest=step,
            created=float(obj.get("created") or 0.0), host=str(obj.get("host") or ""),
            format=int(obj.get("format") or MANIFEST_FORMAT),
        )


def check_run_path(path: str, run: str) -> list[str]:
    """The segments of `path` if it is a safe file path of `run`'s folders, else UnsafePath.

    Refused: empty segments ('a//b', leading or trailing '/', so no absolute path), '.', '..',
    backslashes, NUL, and anything outside `training_runs/RUN/` and `eval_runs/RUN_DATASET/`.
    """
    if not isinstance(path, str) or not path:
        raise UnsafePath(f"unsafe path {path!r} (empty)")
    parts = path.split("/")
    for seg in parts:
        if seg in ("", ".", "..") or "\\" in seg or "\x00" in seg:
            raise UnsafePath(f"unsafe path {path!r} (segment {seg!r})")
    if len(parts) < 3:
        raise UnsafePath(f"unsafe path {path!r} (not inside a run folder)")
    top, folder = parts[0], parts[1]
    if top == "training_runs" and folder == run:
        return parts
    if top == "eval_runs" and localfs.eval_dir_dataset(run, folder) is not None:
        return parts
    raise UnsafePath(f"unsafe path {path!r} (outside training_runs/{run}/ and eval_runs/{run}_*/)")


# ---------------------------------------------------------------- the local side


@dataclass(frozen=True)
class LocalFile:
    path: str  # relative to the root
    full: Path
    size: int
    mtime_ns: int
    inode: int


@dataclass
class LocalRun:
    """The files of one run that a backup takes, and what it leaves out (with why)."""

    run: str
    files: list[LocalFile]
    step_latest: int | None
    skipped: list[tuple[str, str]]  # (path, reason)
    recorded: dict[str, str] = field(default_factory=dict)  # path -> sha256 from training_info.json


def _skip_name(name: str) -> bool:
    return (
        name.startswith(localfs.STAGING_PREFIX)
        or (name.startswith(".") and name.endswith(".tmp"))
        or name in _SKIP_NAMES
    )


def _walk(root: Path, top: Path, skipped: list[tuple[str, str]],
          checkpoint_problems: dict[str, list[str]]) -> Iterator[LocalFile]:
    """The files under `top` a backup takes; `checkpoint_problems` of its step folders by name."""
    training_state = top / "training_state"
    for dirpath, dirs, names in os.walk(top):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirs):
            sub = here / d
            rel = sub.relative_to(root).as_posix()
            if _skip_name(d):
                skipped.append((rel + "/", "unfinished write (temporary folder)"))
            elif os.path.islink(sub):
                if not (here == training_state and d == localfs.STEP_LATEST):  # recorded apart
                    skipped.append((rel, "symlink"))
            elif here == training_state and (problems := checkpoint_problems.get(d)):
                skipped.append((rel + "/", "incomplete checkpoint: " + problems[0]))
            else:
                keep.append(d)
        dirs[:] = keep
        for name in sorted(names):
            full = here / name
            rel = full.relative_to(root).as_posix()
            if _skip_name(name):
                continue
            st = os.lstat(full)
            if not stat.S_ISREG(st.st_mode):  # lstat: a link is not a regular file
                if name != localfs.STEP_LATEST:
                    skipped.append((rel, "not a regular file"))
                continue
            yield LocalFile(rel, full, st.st_size, st.st_mtime_ns, st.st_ino)


def recorded_hashes(root: Path, step_dir: Path) -> dict[str, str]:
    """sha256 of a complete checkpoint's files as its own training_info.json records them.

    The trainer hashed these bytes when it sealed the checkpoint, so a first backup need not read
    them twice. Trusted only for a file with the recorded size that is not newer than
    training_info.json (written last): a file changed in place afterwards is hashed again.
    A file that rotted on disk keeps its mtime; restore's sha256 check catches it, and cleanup,
    which hashes every file itself before deleting it, keeps it.
    """
    info_path = step_dir / localfs.CHECKPOINT_INFO
    try:
        info_mtime = os.stat(info_path).st_mtime_ns
        info = localfs.read_json(info_path)
    except (OSError, localfs.DamagedFile):
        return {}
    files = info.get("files") if isinstance(info, dict) else None
    out: dict[str, str] = {}
    for rel, meta in (files or {}).items():
        sha = meta.get("sha256") if isinstance(meta, dict) else None
        if not isinstance(sha, str) or not _SHA256.match(sha):
            continue
        full = step_dir / rel
        try:
            st = os.lstat(full)
        except OSError:
            continue
        if st.st_size == meta.get("size") and st.st_mtime_ns <= info_mtime and os.path.isfile(full):
            out[full.relative_to(root).as_posix()] = sha
    return out


def run_eval_dirs(layout: Layout, run: str) -> list[Path]:
    """The eval folders `run` owns (rltui.runs.folders: what their eval_config.yaml records, never
    a name prefix); links are left out, the archive never reads or deletes through them."""
    return [path for _dataset, path in folders.eval_folders_of(layout, run, follow_links=False)]


def eval_folder_of_path(path: str) -> str | None:
    """The eval_runs/ folder name of a manifest path, None for a path of the run folder."""
    parts = path.split("/", 2)
    return parts[1] if len(parts) == 3 and parts[0] == "eval_runs" else None


def foreign_eval_folders(layout: Layout, run: str, paths: Iterable[str]) -> dict[str, str]:
    """Eval folders among `paths` (manifest paths of `run`) that `run` does not own, with why.

    An older backup may list another run's evaluations (they were once taken by name prefix);
    cleanup and restore leave those folders alone."""
    names = sorted({f for p in paths if (f := eval_folder_of_path(p)) is not None})
    if not names:
        return {}
    runs = folders.run_names(layout) | {run}
    out = {}
    for name in names:
        owner = folders.eval_owner(layout, name, runs)
        if owner.run != run:
            out[name] = f"owned by run {owner.run}" if owner.run else owner.how
    return out


def scan_run(layout: Layout, run: str) -> LocalRun:
    """Every file a backup of `run` takes, in path order. The run folder may be absent."""
    run_dir = layout.run_dir(run)
    # Each checkpoint is checked once (its training_info.json read, its files stat'ed), here.
    problems = {folder.name: checkpoints.checkpoint_problems(folder)
                for _step, folder in checkpoints.list_step_dirs(layout.training_state(run))}
    skipped: list[tuple[str, str]] = []
    files: list[LocalFile] = []
    # The run folder may be a link (a run moved to another disk: the index lists it too);
    # links inside it, and linked eval folders, are not followed.
    for top in [run_dir, *run_eval_dirs(layout, run)]:
        if top.is_dir() and (top == run_dir or not top.is_symlink()):
            files.extend(_walk(layout.root, top, skipped, problems))
    recorded: dict[str, str] = {}
    for name, found in problems.items():
        if not found:
            recorded.update(recorded_hashes(layout.root, layout.training_state(run) / name))
    step = checkpoints.read_step_latest(layout.training_state(run))
    if step is not None:
        name = localfs.step_dir_name(step)
        found = problems[name] if name in problems else checkpoints.checkpoint_problems(layout.step_dir(run, step))
        if found:
            step = None  # a link to something we do not back up is not worth recording
    return LocalRun(run, files, step, skipped, recorded)


# ---------------------------------------------------------------- the sha256 cache


class HashCache:
    """sha256 of local files, remembered by (size, mtime_ns, inode) so large files hash once.

    One small JSON file per run under `archive/.sha256_cache/`, written atomically; a damaged or
    missing cache only costs a rehash.
    """

    def __init__(self, layout: Layout, run: str) -> None:
        self.path = layout.archive / ".sha256_cache" / f"{localfs.validate_run_name(run)}.json"
        self._entries: dict[str, list[Any]] = {}
        self._dirty = False
        try:
            data = localfs.read_json(self.path)
            if isinstance(data, dict) and isinstance(data.get("files"), dict):
                self._entries = data["files"]
        except (FileNotFoundError, localfs.DamagedFile):
            pass

    def sha256(self, f: LocalFile) -> str:
        key = [f.size, f.mtime_ns, f.inode]
        hit = self._entries.get(f.path)
        if isinstance(hit, list) and len(hit) == 4 and hit[:3] == key:
            return str(hit[3])
        digest = checkpoints.sha256_file(f.full)
        self.remember(f, digest)
        return digest

    def remember(self, f: LocalFile, digest: str) -> None:
        self._entries[f.path] = [f.size, f.mtime_ns, f.inode, digest]
        self._dirty = True

    def save(self) -> None:
        """Write the cache; a failure (disk full, read-only root) only costs a rehash next time."""
        if not self._dirty:
            return
        try:
            localfs.write_json_atomic(self.path, {"files": self._entries}, durable=False)
        except OSError:
            return
        self._dirty = False


def stat_local(root: Path, path: str) -> LocalFile | None:
    """The LocalFile at `path` under `root` if it is a regular file (not a symlink)."""
    full = root / path
    try:
        st = os.lstat(full)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):  # lstat: a link is not a regular file
        return None
    return LocalFile(path, full, st.st_size, st.st_mtime_ns, st.st_ino)


def archived_steps(manifest: Manifest) -> list[int]:
    """Steps whose checkpoint record is in the manifest (a backup takes complete ones only)."""
    found = []
    for path in manifest.files:
        parts = path.split("/")
        if len(parts) == 5 and parts[2] == "training_state" and parts[4] == localfs.CHECKPOINT_INFO:
            step = localfs.parse_step_dir(parts[3])
            if step is not None:
                found.append(step)
    return sorted(found)
