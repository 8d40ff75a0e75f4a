"""A throttled progress line: bytes done of total, rate and ETA.

On a terminal the line is rewritten in place (at most 4 times a second); otherwise (a job's
output.log, a pipe) a plain line is printed at most every `plain_interval` seconds, so logs stay
short. Byte counts may be negative when s3transfer retries a part; the total never goes below 0.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable, TextIO

from rltui.runs.disk import human_bytes


def human_seconds(s: float) -> str:
    s = int(max(0, s))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class Progress:
    def __init__(
        self,
        verb: str,
        total: int,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        plain_interval: float = 5.0,
    ) -> None:
        self.verb = verb
        self.total = max(0, total)
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = 0.25 if self.tty else plain_interval
        self.start = clock()
        self._last = self.start
        self._lock = threading.Lock()
        self._printed = False

    def add(self, n: int) -> None:
        with self._lock:
            self.done = max(0, self.done + n)
            now = self.clock()
            if now - self._last >= self.interval:
                self._last = now
                self._emit(now)

    def line(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        elapsed = max(now - self.start, 1e-6)
        rate = self.done / elapsed
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        return (
            f"{self.verb} {human_bytes(self.done)} / {human_bytes(self.total)} ({pct:.0f}%), "
            f"{human_bytes(rate)}/s, ETA {human_seconds(eta)}"
        )

    def _emit(self, now: float) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K" + self.line(now))
        else:
            self.stream.write(self.line(now) + "\n")
        self.stream.flush()
        self._printed = True

    def finish(self) -> None:
        with self._lock:
            if self.tty and self._printed:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
