"""A live log pane: follows a file from its end, never reading a large file whole.

Usage:
    pane = LogPane(id="log")
    pane.follow(path, title="job 20261126-070000-eval")   # or pane.follow(None) to clear

`TailReader` starts at most `start_bytes` before the end of the file and then reads only what
was appended, at most `chunk_bytes` per poll (a runaway log skips ahead rather than stalling the
UI). Reads happen in a thread worker; the pane keeps at most `max_lines` lines. JSONL train logs
are shown as `step 5  reward=0.31  loss=0.02 ...` rather than raw JSON.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from textual import work
from textual.widgets import Log

from rltui.text import clean_lines

START_BYTES = 64 * 1024
CHUNK_BYTES = 256 * 1024


@dataclass
class TailReader:
    """Reads the new complete lines of a growing file; survives truncation and replacement."""

    path: Path
    start_bytes: int = START_BYTES
    chunk_bytes: int = CHUNK_BYTES
    offset: int = -1
    inode: int = -1
    partial: bytes = b""

    def read_new_lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                if st.st_ino != self.inode or st.st_size < self.offset:
                    self.inode, self.partial = st.st_ino, b""
                    self.offset = max(0, st.st_size - self.start_bytes)
                    skip_first = self.offset > 0
                else:
                    skip_first = False
                if st.st_size - self.offset > self.chunk_bytes:
                    self.offset, self.partial, skip_first = st.st_size - self.chunk_bytes, b"", True
                f.seek(self.offset)
                data = f.read(st.st_size - self.offset)
        except OSError:
            return []
        self.offset += len(data)
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        if skip_first and lines:
            lines = lines[1:]  # the first line was cut by where we started
        return [line.decode("utf-8", errors="replace").rstrip("\r") for line in lines]


def pretty_jsonl(line: str) -> str:
    """One train-log JSON line as `step N  key=value ...`; other lines unchanged."""
    if not line.startswith("{"):
        return line
    try:
        obj = json.loads(line)
    except ValueError:
        return line
    if not isinstance(obj, dict):
        return line
    parts = [f"step {obj['step']}"] if "step" in obj else []
    for key, value in obj.items():
        if key == "step" or isinstance(value, (dict, list)):
            continue
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return "  ".join(parts)


class LogPane(Log):
    """A Log that follows one file at a time."""

    DEFAULT_CSS = """
    LogPane { height: 1fr; }
    """

    def __init__(self, *, poll_s: float = 1.0, max_lines: int = 2000, **kwargs: object) -> None:
        super().__init__(max_lines=max_lines, highlight=False, **kwargs)  # type: ignore[arg-type]
        self.poll_s = poll_s
        self.reader: TailReader | None = None

    def on_mount(self) -> None:
        self.set_interval(self.poll_s, self.poll)
        self.poll()

    @property
    def path(self) -> Path | None:
        return self.reader.path if self.reader else None

    def follow(self, path: Path | None, title: str = "") -> None:
        """Show `path` from its tail on; the same path again keeps the current position."""
        if path is not None and self.reader is not None and self.reader.path == path:
            return
        if self.is_mounted:
            self.clear()
        self.border_title = title or (str(path) if path else "no log")
        self.reader = TailReader(Path(path)) if path else None
        self.poll()

    def poll(self) -> None:
        if self.reader is not None and self.is_mounted and self.region.area:  # on screen
            self._read(self.reader)

    @work(thread=True, exclusive=True, group="log-tail")
    def _read(self, reader: TailReader) -> None:
        lines = reader.read_new_lines()
        if lines and reader is self.reader:
            pretty = [clean_lines(pretty_jsonl(line)) for line in lines]  # no escape sequences
            self.app.call_from_thread(self._append, reader, pretty)

    def _append(self, reader: TailReader, lines: list[str]) -> None:
        if reader is self.reader:
            self.write_lines(lines)
