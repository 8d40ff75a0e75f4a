"""Pick the plotted metric from a list (the `p` key); `m` and `M` step through it instead.

Usage:
    app.push_screen(MetricPicker(names, current="loss"), callback)   # -> the chosen name, or None
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList


class MetricPicker(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, names: list[str], current: str | None = None) -> None:
        super().__init__()
        self.names = names
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="metric-picker", classes="dialog"):
            yield Label("Plot which metric? (enter: plot it, escape: keep the plot)",
                        classes="dialog-title")
            yield OptionList(*self.names, id="metric-list")

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        if self.current in self.names:
            options.highlighted = self.names.index(self.current)
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(self.names[event.option_index])

    def action_cancel(self) -> None:
        self.dismiss(None)
