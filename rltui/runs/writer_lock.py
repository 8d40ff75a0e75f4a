"""One writer per run: an OS lock held by the trainer (rank 0) for its whole life.

    training_runs/RUN/.writer.lock   the file locked with flock(LOCK_EX); empty
    training_runs/RUN/.writer.json   who holds it: {pid, host, since, job, run, start}, written
                                     atomically once the lock is taken

The lock, not the record, is the truth: a crashed holder's lock goes with its process (the kernel
drops it), and a record left behind is shown as stale. Readers never take the lock to look at it
(a reader's try could make a starting trainer refuse); `holder()` reads the record and checks it
against /proc/locks, else against the holder's pid and start time.

A second writer gets `WriterBusy` naming the holder, or waits when asked (`wait=True`). A launcher
that execs the trainer passes the lock on: the descriptor survives exec, and `RLTUI_WRITER_LOCK`
(RUN:PID:FD) tells the trainer, or a torchrun worker whose parent holds it, that it is already held
for it. Standard library only: the trainer imports it.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from rltui.runs.localfs import DamagedFile, read_json, write_json_atomic
from rltui.runs.machine import pid_alive, this_host

LOCK_NAME = ".writer.lock"
HOLDER_NAME = ".writer.json"
HANDOFF_ENV = "RLTUI_WRITER_LOCK"  # RUN:PID of the process that holds the lock for this one
JOB_ENV = "RLTUI_JOB_ID"  # set by the keeper (rltui.jobs.ownership): the job the holder runs for


@dataclass(frozen=True)
class Holder:
    pid: int
    host: str
    since: float
    run: str
    job: str | None = None
    start: int | None = None  # the holder's start, clock ticks since boot (/proc/PID/stat)

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"pid {self.pid} on {self.host} since {when}" + (f" (job {self.job})" if self.job else "")

    def to_json(self) -> dict:
        return asdict(self)


class WriterBusy(Exception):
    def __init__(self, run: str, holder: Holder | None) -> None:
        self.run, self.holder = run, holder
        who = holder.describe() if holder else "another process"
        super().__init__(f"run {run} is being written by {who}; one writer at a time "
                         "(wait for it with --wait-for-lock)")


@dataclass
class WriterLock:
    """A held lock; `release()` (or the process's end) gives it back."""

    run_dir: Path
    fd: int | None
    holder: Holder
    inode: int | None = None  # of the locked file: a descriptor number reused since is not ours

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            ours = self.inode is None or os.fstat(self.fd).st_ino == self.inode
        except OSError:
            ours = False
        if not ours:  # released already through another handle (a hand-off in one process)
            self.fd = None
            return
        for name in (HOLDER_NAME, LOCK_NAME):  # removed while still held, then let go
            try:
                os.unlink(self.run_dir / name)
            except OSError:
                pass
        os.close(self.fd)
        self.fd = None

    def hand_off_env(self) -> dict[str, str]:
        """What a process this one execs (or its torchrun workers) needs to know it holds the lock."""
        if self.fd is None:
            return {}
        os.set_inheritable(self.fd, True)
        return {HANDOFF_ENV: f"{self.holder.run}:{self.holder.pid}:{self.fd}"}


def _start_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _try_lock(path: Path) -> int | None:
    """An fd holding flock on `path` (the file as it is now at that path), or None when busy."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed it as it let go: lock the file that is there now


def acquire(run_dir: Path, *, job: str | None = None, wait: bool = False,
            on_wait: Callable[[Holder | None], None] | None = None, poll_s: float = 0.2) -> WriterLock:
    """Take the run's writer lock, or raise WriterBusy (wait=False); `on_wait` is told once."""
    run_dir = Path(run_dir)
    path = run_dir / LOCK_NAME
    told = False
    while (fd := _try_lock(path)) is None:
        if not wait:
            raise WriterBusy(run_dir.name, holder(run_dir))
        if not told and on_wait is not None:
            on_wait(holder(run_dir))
            told = True
        time.sleep(poll_s)
    pid = os.getpid()
    who = Holder(pid=pid, host=this_host(), since=time.time(), run=run_dir.name,
                 job=job if job is not None else os.environ.get(JOB_ENV) or None,
                 start=_start_ticks(pid))
    try:
        write_json_atomic(run_dir / HOLDER_NAME, who.to_json(), durable=False)
    except OSError:
        pass  # a full disk: the lock is held all the same; readers see no record
    return WriterLock(run_dir, fd, who, os.fstat(fd).st_ino)


def handed_off(run_dir: Path) -> WriterLock | None:
    """The run's lock when this process's launcher passed it on (RLTUI_WRITER_LOCK), checked
    against the record: held by this very process (exec kept the descriptor: it is adopted and
    released at the end) or by its parent (a torchrun worker: `fd` None, nothing to release)."""
    run_dir = Path(run_dir)
    run, pid, fd = (os.environ.get(HANDOFF_ENV, "").split(":") + ["", "", ""])[:3]
    if run != run_dir.name or not pid.isdigit() or int(pid) not in (os.getpid(), os.getppid()):
        return None
    found = holder(run_dir)
    if found is None or found.pid != int(pid):
        return None
    if int(pid) != os.getpid():
        return WriterLock(run_dir, None, found)
    try:
        same = fd.isdigit() and os.fstat(int(fd)).st_ino == os.stat(run_dir / LOCK_NAME).st_ino
    except OSError:
        same = False
    if not same:
        return None
    os.set_inheritable(int(fd), False)
    return WriterLock(run_dir, int(fd), found, os.fstat(int(fd)).st_ino)


def _printable(value: object) -> str:
    """A record's text without control characters (it is shown on terminals)."""
    return "".join(c for c in str(value) if c.isprintable())


def _read_holder(run_dir: Path) -> Holder | None:
    try:
        d = read_json(run_dir / HOLDER_NAME)
        job = d.get("job")
        return Holder(pid=int(d["pid"]), host=_printable(d["host"]), since=float(d["since"]),
                      run=_printable(d.get("run") or run_dir.name),
                      job=_printable(job) if job is not None else None,
                      start=d.get("start") if isinstance(d.get("start"), int) else None)
    except (OSError, DamagedFile, KeyError, TypeError, ValueError, json.JSONDecodeError):
        return None


def _locked_files() -> set[tuple[int, int, int]] | None:
    """(major, minor, inode) of files with a FLOCK write lock now (/proc/locks), or None where
    it cannot be read."""
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    out = set()
    for line in lines:
        parts = line.split()
        if "->" in parts:  # a process waiting for the lock, not holding it
            continue
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[3] == "WRITE":
            try:
                major, minor, ino = parts[5].split(":")
                out.add((int(major, 16), int(minor, 16), int(ino)))
            except ValueError:
                continue
    return out


def holder(run_dir: Path) -> Holder | None:
    """Who holds the run's writer lock now, or None when nobody does. Takes no lock."""
    run_dir = Path(run_dir)
    try:
        st = os.stat(run_dir / LOCK_NAME)
    except OSError:
        return None
    found = _read_holder(run_dir)
    locked = _locked_files()
    if locked is not None:
        if (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino) not in locked:
            return None
        return found or Holder(pid=0, host="?", since=0.0, run=run_dir.name)
    if found is None or found.host != this_host() or not pid_alive(found.pid):
        return None
    if found.start is not None and _start_ticks(found.pid) != found.start:
        return None
    return found
