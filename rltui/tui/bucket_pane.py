"""The Bucket pane: each live archive's lag, and the runs that only the S3 bucket holds.

Usage:
    pane = BucketPane(id="bucket-view")
    pane.show(view, newest_local)     # an rltui.archive.view.ArchiveView; {run: newest local step}
    pane.selected                     # the bucket-only run under the cursor, or None

`show` may come before the pane is mounted (the archive view's worker posts on a timer while the
hidden tabs are still being mounted) or after it was taken down (the app closing); the pane keeps
the view, draws it on mount, and draws nothing while it has no children to draw into.

Bucket-only runs come from the cached catalog (manifests alone); `R` restores the one under the
cursor, `A` turns the selected run's live archive on or off (rltui.tui.archive_actions).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from rltui.text import clean
from rltui.tui.messages import drawable

_COLUMNS = ("RUN", "NEWEST", "SIZE", "FILES", "BACKED UP")


def _when(t: float | None) -> str:
    return "-" if not t else _dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M")


class BucketPane(Vertical):
    DEFAULT_CSS = """
    BucketPane { height: 1fr; }
    BucketPane > #bucket-live { height: auto; max-height: 12; padding: 0 1; }
    BucketPane > #bucket-table { height: 1fr; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shown: tuple[Any, dict[str, int | None]] | None = None  # the latest view, drawn or not

    def compose(self) -> ComposeResult:
        yield Static(Text("Live archive: none", style="dim"), id="bucket-live")
        table: DataTable[Any] = DataTable(id="bucket-table", cursor_type="row", zebra_stripes=True)
        table.add_columns(*_COLUMNS)
        yield table

    def on_mount(self) -> None:
        if self.shown is not None:
            self._draw(*self.shown)

    def show(self, view: Any, newest_local: dict[str, int | None]) -> None:
        self.shown = (view, newest_local)
        if drawable(self):
            self._draw(view, newest_local)

    def _draw(self, view: Any, newest_local: dict[str, int | None]) -> None:
        from rltui.archive.follow import describe_lag
        from rltui.runs.disk import human_bytes

        live = Text()
        if view.lags:
            live.append("Live archive\n", style="bold")
            for run, status in view.lags.items():
                live.append(f"  {run}  ", style="bold")
                live.append(clean(describe_lag(status, newest_local.get(run))) + "\n")
        else:
            live.append("Live archive: none (A turns it on for the selected run)", style="dim")
        head = f"\nIn the bucket only: {len(view.bucket_only)} run(s)"
        head += f", listed {_when(view.listed_at)}" if view.listed_at else ", not listed yet"
        live.append(head, style="bold")
        if view.problem:
            live.append(f"\n  {clean(view.problem)}", style="red")
        self.query_one("#bucket-live", Static).update(live)
        table = self.query_one("#bucket-table", DataTable)
        keep = self.selected
        table.clear()
        for r in view.bucket_only:
            table.add_row(Text("☁ " + clean(r.run)), "-" if r.newest_step is None else f"step_{r.newest_step}",
                          human_bytes(r.size), str(r.files), _when(r.backed_up_at), key=r.run)
        if keep is not None and keep in {r.run for r in view.bucket_only}:
            table.move_cursor(row=table.get_row_index(keep))

    @property
    def selected(self) -> str | None:
        if not drawable(self):
            return None
        table = self.query_one("#bucket-table", DataTable)
        if table.row_count == 0:
            return None
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        except Exception:
            return None
        return None if key is None else str(key.value)
