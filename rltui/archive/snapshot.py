"""The bytes of a file as they were hashed, for upload: a running run's files change under us.

    body = open_as_hashed(local_file, sha256, small=8 * 2**20)   # None: not that content any more
    ... manager.upload(body, bucket, key) ...; body.close()

A backup hashes a file, then uploads it by its sha256 while it hashes the next one. Meanwhile the
trainer may replace the file (status.json, written atomically: a new inode) or append to it
(train_log.jsonl). Uploading by file name would then send other bytes than the key names, or
fewer than the Content-Length taken a moment before: the server waits for the rest and the upload
hangs until the read timeout. So the file is opened once, now, and checked to be the hashed one:
- the same inode as when it was hashed (an atomic replace made a new one);
- small files (under one part) are read whole and their sha256 checked, then sent from memory;
- larger ones (checkpoint files, immutable once complete; a long log that only grows) are sent
  as their first `size` bytes through the descriptor opened now, whatever is appended later.
None means the content is not the hashed one any more: the caller leaves it to its re-read.
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import IO

from rltui.archive.manifest import LocalFile


def open_as_hashed(f: LocalFile, sha256: str, small: int) -> IO[bytes] | None:
    try:
        fd = os.open(f.full, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # deleted meanwhile
    raw = os.fdopen(fd, "rb")
    try:
        st = os.fstat(raw.fileno())
        if st.st_ino != f.inode or st.st_size < f.size:
            raw.close()
            return None
        if f.size < small:
            data = raw.read(f.size)
            raw.close()
            if len(data) != f.size or hashlib.sha256(data).hexdigest() != sha256:
                return None
            return io.BytesIO(data)
        return _Prefix(raw, f.size)
    except BaseException:
        raw.close()
        raise


class _Prefix(io.RawIOBase):
    """The first `size` bytes of an open file, seekable (what s3transfer reads parts from)."""

    def __init__(self, raw: IO[bytes], size: int) -> None:
        super().__init__()
        self.raw = raw
        self.size = size
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, min(self.size, base + offset))
        return self.pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), self.size - self.pos)
        if want <= 0:
            return 0
        got = os.pread(self.raw.fileno(), want, self.pos)
        n = len(got)
        buffer[:n] = got
        self.pos += n
        return n

    def close(self) -> None:
        self.raw.close()
        super().close()
