"""What `status` and the TUI show of the archive: each live archive's lag, and the runs that
only the bucket holds. Reads small local files only; the bucket is listed only when asked
(`status --remote`, the TUI's worker) and then through the ETag-revalidated catalog."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, TextIO

from rltui.archive.catalog import BucketRun, Catalog, bucket_only, read_catalog
from rltui.archive.follow import describe_lag, read_status
from rltui.runs.disk import human_bytes
from rltui.runs.localfs import Layout, is_run_name


@dataclass
class ArchiveView:
    lags: dict[str, dict[str, Any]] = field(default_factory=dict)  # run -> archive/status/RUN.json
    bucket_only: list[BucketRun] = field(default_factory=list)
    listed_at: float | None = None
    problem: str | None = None  # why the bucket could not be listed just now

    def to_json(self) -> dict[str, Any]:
        return {
            "archive": {
                "live": self.lags,
                "bucket_only_runs": [r.to_json() for r in self.bucket_only],
                "bucket_listed_at": self.listed_at,
                "problem": self.problem,
            }
        }


def archive_view(layout: Layout, local_runs: set[str], *, refresh: bool = False) -> ArchiveView:
    view = ArchiveView()
    try:
        names = [n[:-5] for n in os.listdir(layout.archive / "status") if n.endswith(".json")]
    except OSError:
        names = []
    for run in sorted(n for n in names if is_run_name(n)):
        status = read_status(layout, run)
        if status is not None:
            view.lags[run] = status
    catalog: Catalog | None = None
    if refresh:
        catalog, view.problem = _refresh(layout)
    if catalog is None:
        catalog = read_catalog(layout)
    if catalog is not None:
        view.bucket_only = bucket_only(catalog, local_runs)
        view.listed_at = catalog.listed_at
    return view


def _refresh(layout: Layout) -> tuple[Catalog | None, str | None]:
    from rltui.archive import catalog
    from rltui.archive.settings import load_settings, make_client
    from rltui.archive.store import RemoteStore, describe_error
    from rltui.errors import UsageError

    try:
        settings = load_settings()
    except UsageError as e:
        return None, str(e)
    try:
        return catalog.refresh(layout, RemoteStore(make_client(settings), settings)), None
    except Exception as e:  # a flaky network: the cached listing is shown, with why
        return None, f"could not list the bucket: {describe_error(e, settings)}"


def write_text(view: ArchiveView, newest_local: dict[str, int | None], out: TextIO) -> None:
    if view.lags:
        out.write("\nLIVE ARCHIVE\n")
        for run, status in view.lags.items():
            out.write(f"  {run}  {describe_lag(status, newest_local.get(run))}\n")
    if view.bucket_only:
        out.write("\nIN THE BUCKET ONLY (archived; `rltui --batch resume --training-run RUN --restore`)\n")
        for r in view.bucket_only:
            newest = "-" if r.newest_step is None else f"step_{r.newest_step}"
            out.write(f"  archived  {r.run}  {newest}  {human_bytes(r.size)}  {r.files} files\n")
    if view.problem:
        out.write(f"\nBUCKET: {view.problem}\n")
