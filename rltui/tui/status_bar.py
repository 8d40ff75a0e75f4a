"""The status bar: localfs root, watch mode (inotify or polling, and why), jobs running, last update.

Usage:
    bar = StatusBar(root, id="status")
    bar.watch_mode = "polling: nfs4 filesystem"
    bar.jobs_running = 2
    bar.mark_updated()
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget


class StatusBar(Widget):
    DEFAULT_CSS = """
    StatusBar { height: 1; padding: 0 1; background: $panel; }
    """

    watch_mode: reactive[str] = reactive("starting")
    jobs_running: reactive[int] = reactive(0)
    updated: reactive[float | None] = reactive(None)

    def __init__(self, root: Path, clock: Callable[[], float] = time.time, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.root = root
        self.clock = clock

    def mark_updated(self) -> None:
        self.updated = self.clock()

    def render(self) -> Text:
        when = time.strftime("%H:%M:%S", time.localtime(self.updated)) if self.updated else "–"
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(f"watch: {self.watch_mode}")
        text.append(f" │ jobs running: {self.jobs_running}")
        text.append(f" │ updated {when} │ ")
        text.append(f"{self.root}", style="bold")
        return text
