"""The shape every job form shares: labelled fields, an error line, Launch and Cancel.

Usage (a subclass):
    class EvalForm(JobForm):
        heading = "Evaluate"
        def fields(self): yield self.text("dataset", "dataset", value="arith")
        def build(self): return jobs.eval_job(self.fs_layout, self.run, dataset=self.value("dataset"))

`build` validates through the rltui.jobs builders. Whatever it raises (a UsageError naming the
bad value, a BadName, a ValueError) is shown under the fields and the form stays open: nothing
is launched. The builders speak in the command line's flags (`bad --from-step: ...`); a field
made with `flag=` is the one such a line names: the line starts with the field's label and the
cursor goes to the field. On success the form is dismissed with the JobSpec, and the app
launches it.

The builders read files (a config, a checkpoint's manifest), so `build` runs in a thread worker,
never on the UI thread: on submit the UI thread only copies the fields' values, which `value`
and `checked` then read.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Button, Checkbox, Input, Label, Select, Static

from rltui.errors import UsageError
from rltui.runs.localfs import Layout


class TickBox(Checkbox):
    """A checkbox whose mark is a character, not only a colour, so it reads with NO_COLOR."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.BUTTON_INNER = "X" if self.value else " "

    def watch_value(self) -> None:
        self.BUTTON_INNER = "X" if self.value else " "
        super().watch_value()
        self.refresh()


class JobForm(ModalScreen[Any]):
    heading = "Job"
    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "submit", "Launch"),
    ]

    def __init__(self, layout: Layout, **context: Any) -> None:
        super().__init__()
        self.fs_layout = layout
        self.context = context
        self.values: dict[str, str | bool] = {}  # the fields as submitted (read on the UI thread)
        self.building = False
        self.flag_fields: dict[str, tuple[str, str]] = {}  # --flag -> (key, label) of its field

    # ------------------------------------------------------------ for subclasses

    def fields(self) -> Iterable[Widget]:
        raise NotImplementedError

    def build(self) -> Any:
        raise NotImplementedError

    def text(self, key: str, label: str, value: str = "", placeholder: str = "", *,
             flag: str | None = None) -> Widget:
        """A text field; `flag`: the command line's flag for it, as the builders' errors name it."""
        if flag:
            self.flag_fields[flag] = (key, label)
        return _row(label, Input(value=value, placeholder=placeholder, id=f"f-{key}", compact=True))

    def check(self, key: str, label: str, value: bool = False) -> Widget:
        return TickBox(label, value=value, id=f"f-{key}", compact=True)

    def choice(self, key: str, label: str, options: list[str], value: str) -> Widget:
        return _row(label, Select([(o, o) for o in options], value=value, allow_blank=False,
                                  id=f"f-{key}", compact=True))

    def value(self, key: str) -> str:
        """A text field's value as submitted, stripped; '' when empty."""
        return str(self.values[key])

    def checked(self, key: str) -> bool:
        return bool(self.values[key])

    def read_fields(self) -> dict[str, str | bool]:
        """Every field's value now (UI thread): text stripped, a choice as text, a tick as bool."""
        values: dict[str, str | bool] = {}
        for widget in self.query("Input, Select, Checkbox"):
            if not (widget.id or "").startswith("f-"):
                continue
            key = widget.id[2:]  # type: ignore[index]
            if isinstance(widget, Checkbox):
                values[key] = bool(widget.value)
            elif isinstance(widget, Select):
                values[key] = str(widget.value)
            else:
                values[key] = widget.value.strip()  # type: ignore[attr-defined]
        return values

    def optional_int(self, key: str, flag: str) -> int | None:
        raw = self.value(key)
        if not raw:
            return None
        try:
            return int(raw)
        except ValueError:
            raise UsageError(f"bad {flag}: {raw!r} (must be a whole number)") from None

    def optional_float(self, key: str, flag: str) -> float | None:
        raw = self.value(key)
        if not raw:
            return None
        try:
            return float(raw)
        except ValueError:
            raise UsageError(f"bad {flag}: {raw!r} (must be a number)") from None

    def optional_text(self, key: str) -> str | None:
        return self.value(key) or None

    # ------------------------------------------------------------ the dialog

    def compose(self) -> ComposeResult:
        with Vertical(id="form", classes="dialog"):
            yield Label(self.heading, classes="dialog-title")
            yield from self.fields()
            yield Static("", id="form-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Launch", variant="primary", id="ok", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def on_mount(self) -> None:
        first = self.query("Input, Select, Checkbox").first()
        first.focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_submit() if event.button.id == "ok" else self.action_cancel()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_submit()

    def action_submit(self) -> None:
        if self.building:  # a second Enter while the first is being checked
            return
        self.building = True
        self.values = self.read_fields()
        self.build_worker()

    @work(thread=True, exclusive=True, group="form-build")
    def build_worker(self) -> None:
        try:
            spec = self.build()
        except Exception as e:  # every builder error is the user's to read, in place
            self.app.call_from_thread(self.build_failed, str(e) or type(e).__name__)
            return
        self.app.call_from_thread(self.built, spec)

    def built(self, spec: Any) -> None:
        self.dismiss(spec)  # not awaited: the worker that called this belongs to this screen

    def build_failed(self, message: str) -> None:
        self.building = False
        self.show_error(message)

    def show_error(self, message: str) -> None:
        field = self.field_named(message)
        if field is not None:
            key, label = field
            message = f"{label}: {message}"
            self.query_one(f"#f-{key}").focus()
        error = self.query_one("#form-error", Static)
        error.update(f"✗ {message}")
        error.add_class("-shown")

    def field_named(self, message: str) -> tuple[str, str] | None:
        """The field whose flag the message names first, if any."""
        found = [(m.start(), field) for flag, field in self.flag_fields.items()
                 if (m := re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", message))]
        return min(found)[1] if found else None

    def action_cancel(self) -> None:
        self.dismiss(None)


def _row(label: str, widget: Widget) -> Horizontal:
    return Horizontal(Label(label, classes="field-label"), widget, classes="field")
