"""Reading a job's output.log: the last N lines from the end, or all of it in bounded pieces.

Usage:
    from rltui.jobs.output import open_output, tail_bytes, iter_chunks
    with open_output(layout, job_id) as f:      # UsageError (one line) if it is not a file
        data = tail_bytes(f, 100)                # the last 100 lines, read backwards in blocks
        for piece in iter_chunks(f): ...         # or everything, a piece at a time

A log can be hundreds of megabytes; reading it whole to print its end took 4x its size in memory.
`tail_bytes` reads backwards block by block until it has N newlines, so memory follows the size
of the lines asked for, not of the file. What is printed goes through rltui.text unless the user
asked for the raw bytes (`logs --raw`).
"""

from __future__ import annotations

import os
import re
import stat
from typing import BinaryIO, Iterator

from rltui.errors import UsageError
from rltui.runs.localfs import Layout
from rltui.text import clean_lines

BLOCK = 64 * 1024
CHUNK = 1024 * 1024
CAUSE_LINES = 200  # how far back from the end of a log `cause_line` looks
CAUSE_CHARS = 400
KEEPER_NOTE = "[rltui keeper "  # the keeper's own lines in output.log (rltui.jobs.keeper.Keeper.log)
_ERROR_LINE = re.compile(r"[\w.-]+: error: \S")  # rltui's processes: `rl_runner: error: ...`
_EXCEPTION_LINE = re.compile(r"(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt)(?::.*)?")
_RANK_PREFIX = re.compile(r"\[(?:default)?(?:rank)?\d+\]:\s?")  # torchrun's per-rank prefix
_WRAPPER_EXCEPTIONS = ("ChildFailedError",)  # torchrun's own, after the rank's real one
# Slurm's launcher sums up its task after the task's own words (`srun: error: HOST: task 0: Exited
# with exit code 1`): its first error line is the cause only where the task said nothing (srun's
# own failure to start it)
_LAUNCHERS = ("srun",)


class _NoOutput:
    """Stands in for an output.log that does not exist yet: empty."""

    def __enter__(self) -> "_NoOutput":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def tell(self) -> int:
        return 0

    def read(self, size: int = -1) -> bytes:
        return b""


def open_output(layout: Layout, job_id: str) -> BinaryIO | _NoOutput:
    """The job's output.log opened for reading; empty when the job has written none yet.

    A folder, a device or an unreadable file in its place is one clear line (UsageError)."""
    path = layout.job_log(job_id)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return _NoOutput()
    except OSError as e:
        raise UsageError(f"cannot read the output of job {job_id}: {path}: {e.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        what = "a folder, not a file" if stat.S_ISDIR(mode) else "not a regular file"
        raise UsageError(f"cannot read the output of job {job_id}: {path} is {what}")
    return os.fdopen(fd, "rb")


def output_size(layout: Layout, job_id: str) -> int:
    """The bytes in the job's output.log now (0 when there is none): where the next attempt's
    output will begin, for `cause_line(start=...)`."""
    try:
        return os.stat(layout.job_log(job_id)).st_size
    except OSError:
        return 0


def tail_bytes(f: BinaryIO | _NoOutput, lines: int, block: int = BLOCK) -> bytes:
    """The last `lines` lines of `f` (a last line without its newline counts), read backwards."""
    if lines <= 0:
        return b""
    end = f.seek(0, os.SEEK_END)
    pos, pieces, newlines = end, [], 0
    # a final newline ends the last line; it does not start one more
    wanted = lines + 1 if end and _last_byte(f, end) == b"\n" else lines
    while pos > 0 and newlines < wanted:
        size = min(block, pos)
        pos -= size
        f.seek(pos)
        piece = f.read(size)
        pieces.append(piece)
        newlines += piece.count(b"\n")
    data = b"".join(reversed(pieces))
    if newlines >= wanted:
        cut = len(data)
        for _ in range(wanted):
            cut = data.rindex(b"\n", 0, cut)
        data = data[cut + 1:]
    return data


def _last_byte(f: BinaryIO | _NoOutput, end: int) -> bytes:
    f.seek(end - 1)
    return f.read(1)


def iter_chunks(f: BinaryIO | _NoOutput, start: int = 0, chunk: int = CHUNK) -> Iterator[bytes]:
    """The file from `start` to its current end, in pieces that end at a newline where one is
    found (so a sequence is rarely cut in two; `shown` makes each piece safe on its own)."""
    f.seek(start)
    rest = b""
    while True:
        piece = f.read(chunk)
        if not piece:
            break
        data = rest + piece
        cut = data.rfind(b"\n") + 1
        if cut == 0 and len(data) < 4 * chunk:
            rest = data
            continue
        cut = cut or len(data)
        rest = data[cut:]
        yield data[:cut]
    if rest:
        yield rest


def cause_line(f: BinaryIO | _NoOutput, lines: int = CAUSE_LINES, start: int = 0) -> str | None:
    """The process's own last word on why it ended, from the last `lines` lines of its output
    after byte `start` (where this process's output began: not an earlier attempt's line): the
    last `PROG: error: ...` line (how rltui's processes report bad input and known failures),
    or the exception line that ends a Python traceback (`torch.OutOfMemoryError: CUDA out of
    memory...`), whichever comes later; None when there is neither. Made safe to show, one line,
    at most CAUSE_CHARS. torchrun's own ChildFailedError is passed over for the rank's exception,
    and srun's error lines for the task's own line, if it has one."""
    data = tail_bytes(f, lines)
    end = f.seek(0, os.SEEK_END)
    if end - len(data) < start:
        data = data[start - (end - len(data)):]
    rows = [_RANK_PREFIX.sub("", clean_lines(line.rstrip("\r"))) for line in
            data.decode("utf-8", "replace").split("\n")]
    rows = [row for row in rows if not row.startswith(KEEPER_NOTE)]
    launcher = None  # the launcher's first error line (where its trouble began), for want of the task's own
    for i in range(len(rows) - 1, -1, -1):
        row = rows[i].strip()
        if _ERROR_LINE.match(row):
            if row.split(":")[0] not in _LAUNCHERS:
                return _cut(row)
            launcher = _cut(row)
            continue
        after_frames = i > 0 and rows[i - 1][:1].isspace() and not rows[i][:1].isspace()
        if after_frames and _EXCEPTION_LINE.fullmatch(row) and not row.split(":")[0].endswith(_WRAPPER_EXCEPTIONS):
            return _cut(row)
    return launcher


def _cut(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= CAUSE_CHARS else text[:CAUSE_CHARS - 1] + "…"


def shown(data: bytes, *, raw: bool = False) -> str:
    """Output bytes as text for a terminal: decoded, escape sequences and controls removed
    (newlines and tabs kept); `raw` keeps them, for `logs --raw`."""
    text = data.decode("utf-8", "replace")
    return text if raw else clean_lines(text)
