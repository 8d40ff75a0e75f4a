"""A full disk, said in one line: which filesystem (its mount point), for which path, how much
was needed and how much is free; and every byte count rltui shows, one way (`human_bytes`:
binary units, as NVML and nvidia-smi count GPU memory). Standard library only: the trainer, the
keeper and the command line use it.

    try: ...
    except Exception as e:
        if disk.is_full(e):
            print(disk.describe(path, needed=...))      # "disk full: /mnt/x (for ...): ..."
    human_bytes(1_500_000)                              # '1.4 MiB'; None -> '?' (or `missing`)

A trainer that ends on a full disk exits with DISK_FULL_EXIT: the restart policy does not
restart it (a restart would fail the same way until somebody frees space).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
DISK_FULL_EXIT = 28  # = ENOSPC
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_FULL_WORDS = ("No space left on device", "Disk quota exceeded", "file write failed")


class DiskFull(Exception):
    """Raised where a full disk was recognised; its message is the one line to show."""


def is_full(exc: BaseException | None) -> bool:
    """Whether `exc`, or anything in its chain, is a full disk (ENOSPC, EDQUOT; torch's writer
    reports it only as "file write failed", in a RuntimeError)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFull):
            return True
        if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
            return True
        if any(w in str(exc) for w in _FULL_WORDS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def mount_point(path: Path) -> Path:
    """The mount point of the filesystem holding `path` (or its nearest existing parent)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: Path) -> int | None:
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def human_bytes(n: float | None, missing: str = "?") -> str:
    """`n` bytes: whole bytes below 1 KiB, else one decimal in the largest unit under 1024."""
    if n is None:
        return missing
    value = float(n)
    for unit in BYTE_UNITS[:-1]:
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} {BYTE_UNITS[-1]}"


def describe(path: Path, needed: int | None = None, what: str = "") -> str:
    """One line: `disk full: MOUNT (for PATH): WHAT needs about N, F free`."""
    need = f"{what + ' ' if what else ''}needs about {human_bytes(needed)}, " if needed else (
        f"{what}: " if what else "")
    return f"disk full: {mount_point(path)} (for {path}): {need}{human_bytes(free_bytes(path))} free"


def tree_size(folder: str | Path, *, follow_links: bool = False) -> int:
    """Bytes of the files under `folder` (a link counts as itself unless `follow_links`: the
    Hugging Face cache's snapshots are links to its blobs); files that vanish meanwhile count 0."""
    stat = os.stat if follow_links else os.lstat
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += stat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total
