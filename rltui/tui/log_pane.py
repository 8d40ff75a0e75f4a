"""A live log pane: follows a file from its end, never reading a large file whole.

Usage:
    pane = LogPane(id="log")
    pane.follow(path, title="job 20261126-070000-eval")   # or pane.follow(None) to clear

`TailReader` starts at most `start_bytes` before the end of the file and then reads only what
was appended, at most `chunk_bytes` per poll (a runaway log skips ahead rather than stalling the
UI). Reads happen in a thread worker; the pane keeps at most `max_lines` lines. JSONL train logs
are shown as `step 5  reward 0.310  loss 0.0213  kl 0.0012  lr 1.00e-05  3.21s │ clip_high=0 ...`:
the fields people read first, then the rest (the pane scrolls sideways). A step logged again (a
resume that repeats steps after a crash) replaces its earlier line: the latest entry per step.
`w` wraps long lines at the pane's width, or cuts them again (the full-screen log starts wrapped:
on an 80-column terminal an error line is wider than the screen).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from rich.cells import chop_cells
from textual import events, work
from textual.binding import Binding
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


# (key, label, format) of what is read first; the trainer's progress lines use the same order
FIRST_FIELDS = (("reward_mean", "reward", "{:.3f}"), ("loss", "loss", "{:.4g}"), ("kl", "kl", "{:.3g}"),
                ("learning_rate", "lr", "{:.2e}"))
STEP_TIMES = ("time_generation", "time_scoring", "time_training", "time_saving")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def step_line(line: str) -> tuple[int | None, str]:
    """(its step, how it reads) of one log line: a train-log JSON line becomes `step N  reward ...
    │ the rest`; any other line is shown unchanged, with no step."""
    if not line.startswith("{"):
        return None, line
    try:
        obj = json.loads(line)
    except ValueError:
        return None, line
    if not isinstance(obj, dict):
        return None, line
    step = obj.get("step") if isinstance(obj.get("step"), int) else None
    first = [f"step {step}"] if step is not None else []
    shown = {"step"}
    for key, label, fmt in FIRST_FIELDS:
        if _number(obj.get(key)):
            first.append(f"{label} {fmt.format(obj[key])}")
            shown.add(key)
    if all(_number(obj.get(k)) for k in STEP_TIMES[:3]):
        first.append(f"{sum(obj.get(k) or 0.0 for k in STEP_TIMES):.2f}s")
    rest = []
    for key, value in obj.items():
        if key in shown or isinstance(value, (dict, list)):
            continue
        rest.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return step, "  ".join(first) + ("  │ " + "  ".join(rest) if rest else "")


def pretty_jsonl(line: str) -> str:
    """One train-log JSON line as it reads in the pane; other lines unchanged."""
    return step_line(line)[1]


def wrapped(text: str, width: int) -> list[str]:
    """`text` cut into rows of at most `width` terminal cells (wide characters count two)."""
    return chop_cells(text, max(1, width)) or [""]


class LogPane(Log):
    """A Log that follows one file at a time."""

    DEFAULT_CSS = """
    LogPane { height: 1fr; }
    """
    BINDINGS = [Binding("w", "toggle_wrap", "Wrap")]

    def __init__(self, *, poll_s: float = 1.0, max_lines: int = 2000, wrap: bool = False,
                 **kwargs: object) -> None:
        super().__init__(max_lines=max_lines, highlight=False, **kwargs)  # type: ignore[arg-type]
        self.poll_s = poll_s
        self.wrap = wrap
        self.wrap_width = 0  # the width the shown rows were wrapped at (0: not wrapped)
        self.reader: TailReader | None = None
        self.entries: list[tuple[int | None, str]] = []  # what is shown: (step, text) per line
        self.step_rows: dict[int, int] = {}  # step -> its line in `entries`

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
        self.entries, self.step_rows = [], {}
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
            shown = [(step, clean_lines(text)) for step, text in map(step_line, lines)]  # no escapes
            self.app.call_from_thread(self._append, reader, shown)

    def _append(self, reader: TailReader, lines: list[tuple[int | None, str]]) -> None:
        if reader is not self.reader:
            return
        replaced = False
        for step, text in lines:
            if step is not None and step in self.step_rows:
                self.entries[self.step_rows[step]] = (step, text)  # logged again: the latest wins
                replaced = True
                continue
            if step is not None:
                self.step_rows[step] = len(self.entries)
            self.entries.append((step, text))
        limit = self.max_lines or len(self.entries)
        if len(self.entries) > limit:
            del self.entries[: len(self.entries) - limit]
            self.step_rows = {s: i for i, (s, _t) in enumerate(self.entries) if s is not None}
        if replaced or self.wrap_width != self._width_to_wrap():
            self._show_all()
        else:
            self.write_lines(self._rows([text for _step, text in lines]))

    def _width_to_wrap(self) -> int:
        """The pane's width where it wraps, 0 where it does not (or is not laid out yet)."""
        return self.scrollable_content_region.width if self.wrap else 0

    def _rows(self, texts: list[str]) -> list[str]:
        width = self.wrap_width
        return [row for text in texts for row in wrapped(text, width)] if width else texts

    def _show_all(self) -> None:
        """Every entry again, wrapped at the pane's width now (or not wrapped)."""
        self.wrap_width = self._width_to_wrap()
        self.clear()
        self.write_lines(self._rows([text for _step, text in self.entries]))

    def action_toggle_wrap(self) -> None:
        self.wrap = not self.wrap
        self.scroll_to(x=0, animate=False)
        self._show_all()

    def on_resize(self, event: events.Resize) -> None:
        if self.wrap and self.wrap_width != self._width_to_wrap():
            self._show_all()
