"""A log full screen: the same live tail as the pane, with the whole terminal to read it.

Usage:
    app.push_screen(LogScreen(path, "job X output"))
"""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer

from rltui.tui.log_pane import LogPane


class LogScreen(Screen[None]):
    BINDINGS = [Binding("escape,q,l", "close", "Back")]

    def __init__(self, path: Path, title: str) -> None:
        super().__init__()
        self.path = path
        self.log_title = title

    def compose(self) -> ComposeResult:
        yield LogPane(id="full-log", max_lines=20000, wrap=True)  # `w`: cut long lines instead
        yield Footer(compact=True)

    def on_mount(self) -> None:
        pane = self.query_one(LogPane)
        pane.follow(self.path, self.log_title)
        pane.focus()

    def action_close(self) -> None:
        self.app.pop_screen()
