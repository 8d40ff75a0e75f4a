"""Watch localfs for changes: inotify through watchdog, or polling where events cannot be trusted.

Usage:
    watcher = RootWatcher(root, on_changes=lambda changes: ...)
    watcher.start()          # picks inotify or polling; watcher.mode / watcher.reason say which
    ...
    watcher.stop()

Only training_runs/, eval_runs/ and jobs/ are watched. An event is reduced to the one thing it
concerns (a run, an eval folder, a job), collected for `debounce_s`, and delivered as one set,
so that a checkpoint save (dozens of files) costs the reader one re-read of one run.

Polling is used when the root lives on NFS/CIFS/SSHFS/FUSE (events from other hosts never
arrive there), when inotify cannot start (ENOSPC: out of watches, EMFILE: out of instances), or
when the observer thread dies. The poller stats a few files per run and job (status.json,
training_state/, step_latest, the train log, state.json) rather than walking every checkpoint.
In inotify mode a slow reconciliation poll still runs, because watchdog silently skips
sub-folders it cannot add a watch for.
"""

from __future__ import annotations

import errno
import os
import threading
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Callable, Iterable

from rltui.runs.folders import is_run_folder_name, list_run_folders

WATCHED = ("training_runs", "eval_runs", "jobs")
KIND_OF_FOLDER = {"training_runs": "run", "eval_runs": "eval", "jobs": "job"}
# fstype values (from /proc/mounts) where inotify misses changes made by other hosts or daemons.
REMOTE_FSTYPES = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre",
     "gpfs", "beegfs", "sshfs", "davfs", "virtiofs"}
)


# inotify reports opens and closes after reading too; only writes matter here.
READ_ONLY_EVENTS = frozenset({"opened", "closed_no_write"})


class WatchMode(Enum):
    STARTING = "starting"
    INOTIFY = "inotify"
    POLLING = "polling"


@dataclass(frozen=True, order=True)
class Change:
    """One thing that changed: kind is 'run', 'eval' or 'job'; name is its folder name."""

    kind: str
    name: str


def change_for_path(root: Path, path: str | os.PathLike[str]) -> Change | None:
    """The run, eval folder or job that a changed path belongs to, or None if none."""
    try:
        rel = Path(os.fsdecode(path)).relative_to(root)
    except ValueError:
        return None
    parts = rel.parts
    if len(parts) < 2 or parts[0] not in KIND_OF_FOLDER or not is_run_folder_name(parts[1]):
        return None  # the index lists no such folder (rltui.runs.folders)
    return Change(KIND_OF_FOLDER[parts[0]], parts[1])


# ---------------------------------------------------------------- which filesystem


def mount_fstype(path: Path, mounts_file: str = "/proc/mounts") -> str | None:
    """The fstype of the mount that holds `path` (longest mount point prefix), None if unknown."""
    try:
        with open(mounts_file, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best, best_type = "", None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, best_type = point, fields[2]
    return best_type


def events_unreliable_on(fstype: str | None) -> bool:
    """True for network and FUSE filesystems, where inotify sees only this host's own writes."""
    if not fstype:
        return False
    return fstype in REMOTE_FSTYPES or fstype.startswith("fuse") or fstype.startswith("nfs")


# ---------------------------------------------------------------- polling


def _stat_key(path: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def _signature(kind: str, folder: Path) -> tuple:
    """A few stats that change whenever the thing in `folder` changes in a way readers care about."""
    if kind == "run":
        state = folder / "training_state"
        return (_stat_key(folder), _stat_key(folder / "status.json"), _stat_key(state),
                _stat_key(state / "step_latest"), _stat_key(folder / "logs" / "train_log.jsonl"))
    if kind == "eval":
        return (_stat_key(folder), _stat_key(folder / "consolidated_metrics.csv"),
                _stat_key(folder / "eval_status.json"))
    return (_stat_key(folder), _stat_key(folder / "state.json"), _stat_key(folder / "job.json"))


def poll_signatures(root: Path) -> dict[Change, tuple]:
    """Signature of every run, eval folder and job under root."""
    out: dict[Change, tuple] = {}
    for folder_name, kind in KIND_OF_FOLDER.items():
        for name, path in list_run_folders(root / folder_name):  # the index's rule
            out[Change(kind, name)] = _signature(kind, Path(path))
    return out


def diff_signatures(old: dict[Change, tuple], new: dict[Change, tuple]) -> set[Change]:
    changed = {c for c, sig in new.items() if old.get(c) != sig}
    changed.update(c for c in old if c not in new)
    return changed


# ---------------------------------------------------------------- the watcher


class RootWatcher:
    """Delivers sets of Changes under root to `on_changes`, from a background thread.

    `observer_factory` builds the watchdog observer (tests pass one that fails like an exhausted
    inotify); `fstype` overrides what /proc/mounts says.
    """

    def __init__(
        self,
        root: Path,
        on_changes: Callable[[set[Change]], None],
        *,
        debounce_s: float = 0.25,
        poll_interval_s: float = 2.0,
        reconcile_interval_s: float = 30.0,
        force_polling: bool = False,
        observer_factory: Callable[[], object] | None = None,
        fstype: str | None = None,
        on_mode: Callable[[WatchMode, str], None] | None = None,
    ) -> None:
        self.root = Path(root)
        self.on_changes = on_changes
        self.on_mode = on_mode
        self.debounce_s = debounce_s
        self.poll_interval_s = poll_interval_s
        self.reconcile_interval_s = reconcile_interval_s
        self.force_polling = force_polling
        self.observer_factory = observer_factory
        self.fstype = fstype if fstype is not None else mount_fstype(self.root)
        self.mode = WatchMode.STARTING
        self.reason = ""
        self._observer: object | None = None
        self._pending: set[Change] = set()
        self._lock = threading.Lock()
        self._flush_timer: threading.Timer | None = None
        self._stop = threading.Event()
        self._poll_thread: threading.Thread | None = None
        self._signatures: dict[Change, tuple] = {}

    # -- life cycle

    def start(self, baseline: dict[Change, tuple] | None = None) -> WatchMode:
        """Start watching. With `baseline` (signatures taken earlier, e.g. before a scan), what
        changed since then is delivered at once, so nothing between the two is missed."""
        reason = self._reason_to_poll()
        if reason is None:
            reason = self._start_observer()
        if reason is None:
            self._set_mode(WatchMode.INOTIFY, "inotify events")
        else:
            self._set_mode(WatchMode.POLLING, reason)
        self._signatures = poll_signatures(self.root)
        if baseline is not None:
            missed = diff_signatures(baseline, self._signatures)
            if missed:
                self.notify(missed)
        self._poll_thread = threading.Thread(target=self._poll_loop, name="rltui-poll", daemon=True)
        self._poll_thread.start()
        return self.mode

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            if self._flush_timer is not None:
                self._flush_timer.cancel()
        self._stop_observer()

    # -- choosing a mode

    def _reason_to_poll(self) -> str | None:
        if self.force_polling:
            return "polling (asked for)"
        if events_unreliable_on(self.fstype):
            return f"polling: {self.fstype} filesystem"
        return None

    def _start_observer(self) -> str | None:
        """Start watchdog on the watched folders; the reason to poll instead, or None."""
        try:
            observer = self.observer_factory() if self.observer_factory else _default_observer()
            handler = _Handler(self)
            kinds = _write_events()
            for name in WATCHED:
                folder = self.root / name
                folder.mkdir(parents=True, exist_ok=True)
                observer.schedule(handler, str(folder), recursive=True,  # type: ignore[attr-defined]
                                  event_filter=kinds)
            observer.start()  # type: ignore[attr-defined]
        except OSError as e:
            return f"polling: inotify unavailable ({_errno_name(e)})"
        self._observer = observer
        return None

    def _stop_observer(self) -> None:
        observer, self._observer = self._observer, None
        if observer is None:
            return
        try:
            observer.stop()  # type: ignore[attr-defined]
            observer.join(timeout=2)  # type: ignore[attr-defined]
        except (RuntimeError, OSError):
            pass

    def _set_mode(self, mode: WatchMode, reason: str) -> None:
        self.mode, self.reason = mode, reason
        if self.on_mode is not None:
            self.on_mode(mode, reason)

    # -- events in, sets of changes out

    def notify(self, changes: Iterable[Change]) -> None:
        """Collect changes; deliver them together `debounce_s` after the first one."""
        with self._lock:
            before = len(self._pending)
            self._pending.update(changes)
            if len(self._pending) == before or self._flush_timer is not None or self._stop.is_set():
                return
            self._flush_timer = threading.Timer(self.debounce_s, self._flush)
            self._flush_timer.daemon = True
            self._flush_timer.start()

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, set()
            self._flush_timer = None
        if pending and not self._stop.is_set():
            self.on_changes(pending)

    def _poll_loop(self) -> None:
        waited = 0.0
        while not self._stop.wait(self.poll_interval_s):
            waited += self.poll_interval_s
            if self.mode is WatchMode.INOTIFY and not self._observer_alive():
                self._stop_observer()
                self._set_mode(WatchMode.POLLING, "polling: the inotify observer stopped")
            if self.mode is WatchMode.INOTIFY and waited < self.reconcile_interval_s:
                continue
            waited = 0.0
            new = poll_signatures(self.root)
            changed = diff_signatures(self._signatures, new)
            self._signatures = new
            if changed:
                self.notify(changed)

    def _observer_alive(self) -> bool:
        observer = self._observer
        return observer is not None and bool(observer.is_alive())  # type: ignore[attr-defined]


def _errno_name(e: OSError) -> str:
    if e.errno in (errno.ENOSPC, errno.EMFILE):
        return f"{errno.errorcode[e.errno]}: {e.strerror or 'limit reached'}"
    return str(e)


def _write_events() -> list[type]:
    """Writes, creations, deletions and renames only. Without this filter inotify also reports
    every open and read-only close, and listing a big tree (ours, the index's, watchdog's own
    re-sync after an overflow) overflows the kernel queue again and again."""
    from watchdog import events as ev

    return [ev.FileCreatedEvent, ev.DirCreatedEvent, ev.FileDeletedEvent, ev.DirDeletedEvent,
            ev.FileMovedEvent, ev.DirMovedEvent, ev.FileModifiedEvent, ev.DirModifiedEvent,
            ev.FileClosedEvent]


def _default_observer() -> object:
    from watchdog.observers import Observer

    return Observer()


class _Handler:
    """A watchdog event handler reduced to the one call we need (dispatch)."""

    def __init__(self, watcher: RootWatcher) -> None:
        self.watcher = watcher

    def dispatch(self, event: object) -> None:
        if getattr(event, "event_type", "") in READ_ONLY_EVENTS:
            return  # our own reads (the index, log tails) must not trigger re-reads
        changes = []
        for attr in ("src_path", "dest_path"):
            path = getattr(event, attr, "")
            change = change_for_path(self.watcher.root, path) if path else None
            if change is not None:
                changes.append(change)
        if changes:
            self.watcher.notify(changes)
