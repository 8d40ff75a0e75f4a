"""The runs filter: a one-line input over the runs table.

Usage:
    yield FilterBox(id="filter")        # the app shows it on `/` and focuses it
    @on(FilterBox.Closed) ...           # Escape: the filter is cleared, the box hidden

Enter keeps the filter and hands focus back (the app does that on Input.Submitted); Escape
cancels it: the box is emptied and hidden, so the next key goes to the table, not into the box.
"""

from __future__ import annotations

from textual.binding import Binding
from textual.message import Message
from textual.widgets import Input


class FilterBox(Input):
    BINDINGS = [Binding("escape", "close", "Close filter", show=False)]

    class Closed(Message):
        """The user closed the filter with Escape."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(placeholder="filter: words in name, status or dataset; enter to apply, "
                                     "escape to clear", compact=True, **kwargs)  # type: ignore[arg-type]

    def action_close(self) -> None:
        self.value = ""  # posts Input.Changed: the table shows every run again
        self.display = False
        self.post_message(self.Closed())
