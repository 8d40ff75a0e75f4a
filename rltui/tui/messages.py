"""Messages that workers (threads) post to the app: new snapshots, GPU samples, watch mode.

High-rate messages coalesce: a GPU sample or a watch-mode change replaces one still queued, so
a slow UI never works through a backlog of stale samples.

A message can arrive before the pane it is for was mounted or after the app took it down;
`drawable(pane)` says whether the pane has its children to draw into.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from textual.message import Message

if TYPE_CHECKING:  # annotations only: the app imports these after its first frame
    from textual.widget import Widget

    from rltui.gpu import GpuSnapshot
    from rltui.runs.index import Snapshot


def drawable(pane: Widget) -> bool:
    """Mounted and not yet removed (a removed widget stays `is_mounted`, without its children)."""
    return pane.is_mounted and pane.is_attached


class SnapshotReady(Message):
    """A new index snapshot; `runs` / `jobs` name what changed, None meaning everything."""

    def __init__(self, snapshot: Snapshot, runs: set[str] | None = None,
                 jobs: set[str] | None = None, drawn: threading.Event | None = None) -> None:
        super().__init__()
        self.snapshot = snapshot
        self.runs = runs
        self.jobs = jobs
        self.drawn = drawn  # set once the frame showing it is drawn


class QuickListReady(Message):
    """Runs as their status.json files alone describe them, before the full scan is done."""

    def __init__(self, runs: list, drawn: threading.Event) -> None:
        super().__init__()
        self.runs = runs
        self.drawn = drawn  # set once the frame showing them is drawn


class GpuSampled(Message):
    def __init__(self, snapshot: GpuSnapshot) -> None:
        super().__init__()
        self.snapshot = snapshot

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, GpuSampled)


class WatchModeChanged(Message):
    def __init__(self, mode: str, reason: str) -> None:
        super().__init__()
        self.mode = mode
        self.reason = reason

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, WatchModeChanged)


class ArchiveViewReady(Message):
    """The live archives' lag and the bucket-only runs (rltui.archive.view.ArchiveView)."""

    def __init__(self, view: object, newest_local: dict[str, int | None]) -> None:
        super().__init__()
        self.view = view
        self.newest_local = newest_local

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ArchiveViewReady)
