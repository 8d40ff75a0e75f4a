"""One archive command at a time per run on this machine (flock on archive/.locks/RUN.lock).

Two backups of one run at once would each delete the objects the other's manifest does not name
yet; a restore beside a cleanup would race it. The lock is advisory and local: two machines
backing up the same run to one bucket are not protected (don't).
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from typing import Iterator

from rltui.runs import localfs
from rltui.errors import UsageError
from rltui.runs.localfs import Layout


@contextmanager
def run_lock(layout: Layout, run: str) -> Iterator[None]:
    folder = layout.archive / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{localfs.validate_run_name(run)}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"another archive command is working on {run} (lock {path}); "
                             "wait for it to finish") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock
