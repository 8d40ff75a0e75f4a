"""Help: every key and what it does, and what each status symbol means (for NO_COLOR terminals).

Usage:
    app.push_screen(HelpScreen(COMMANDS))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from rltui.runs.records import JobState, RunStatus

from rltui.tui.cells import JOB_SYMBOL

if TYPE_CHECKING:
    from rltui.tui.commands import Command

KEY_NAMES = {"slash": "/", "question_mark": "?"}


def help_table(commands: list[Command]) -> Table:
    table = Table(box=None, show_header=False, pad_edge=False, expand=True)
    table.add_column("key", style="bold", no_wrap=True)
    table.add_column("what")
    for command in commands:
        table.add_row(KEY_NAMES.get(command.key, command.key), command.help)
    for key, desc in (("ctrl+p", "Command palette: every action by name"),
                      ("tab / arrows", "Move between panes and rows; enter picks"),
                      ("s / S", "Sort the runs by the next column / reverse the order"),
                      ("w", "In a log: wrap long lines at the width, or cut them (scroll sideways)")):
        table.add_row(key, desc)
    return table


def legend() -> Text:
    text = Text("\nRun status: ", style="bold")
    text.append("  ".join(f"{s.symbol} {s.value}" for s in RunStatus))
    text.append("\nJob state: ", style="bold")
    seen = []
    for state in JobState:
        if state is not JobState.UNKNOWN:
            seen.append(f"{JOB_SYMBOL[state]} {state.value}")
    text.append("  ".join(seen))
    text.append("\nQuitting leaves every job running; `rltui` shows them again.", style="italic")
    return text


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "close", "Close")]

    def __init__(self, commands: list[Command]) -> None:
        super().__init__()
        self.commands = commands

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help", classes="dialog"):
            yield Static("rltui keys", classes="dialog-title")
            yield Static(help_table(self.commands))
            yield Static(legend())

    def action_close(self) -> None:
        self.dismiss(None)
