"""The Bucket tab: live archive lag and bucket-only runs (from the cached catalog, no network),
`R` restores the run under the cursor as a sync job, `A` turns a running job's live archive on."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from rltui.archive.catalog import BucketRun, Catalog, _save
from rltui.runs import localfs
from rltui.runs.localfs import Layout
from tui_kit import RUNS, Recorded, make_test_app, pilot_test, read_job_json, record_only_launcher, started, wait_until

PY = sys.executable
ONLY_IN_BUCKET = "run_2025-12-31_23-59-59"


def _seed_archive(root: Path) -> None:
    layout = Layout(root)
    where = "s3://bucket/team/"
    runs = {ONLY_IN_BUCKET: BucketRun(ONLY_IN_BUCKET, '"e1"', 3 << 30, 42, 40, 40, (20, 40), time.time(), "gpu-box"),
            RUNS["completed"]: BucketRun(RUNS["completed"], '"e2"', 1 << 20, 5, 30, 30, (30,), time.time(), "h")}
    _save(layout, Catalog(where, runs, time.time()))
    localfs.write_json_atomic(layout.archive / "status" / f"{RUNS['completed']}.json", {
        "run": RUNS["completed"], "state": "following", "newest_local_step": 30,
        "newest_archived_step": 20, "pending_bytes": 5 << 20, "pending_files": 3, "last_error": None,
    })


@pilot_test
async def test_the_bucket_tab_lists_bucket_only_runs_and_r_restores_the_one_under_the_cursor(tui_root: Path) -> None:
    _seed_archive(tui_root)
    recorded = Recorded([])
    app = make_test_app(tui_root, launcher=record_only_launcher(recorded))
    async with app.run_test(size=(120, 30)) as pilot:
        await started(pilot)
        await pilot.press("4")
        assert await wait_until(pilot, lambda: app.bucket_pane is not None and app.bucket_pane.selected == ONLY_IN_BUCKET)
        live = str(app.bucket_pane.query_one("#bucket-live").render())
        assert "archived step 20 of local" in live and "5.0 MiB pending" in live.replace("MB", "MiB")
        assert RUNS["completed"] not in [str(k.value) for k in app.bucket_pane.query_one("#bucket-table").rows]
        await pilot.press("R")
        assert type(app.screen).__name__ == "Confirm"
        assert "run_2025-12-31_23-59-59" in str(app.screen.query_one("Label").render())  # names the run
        await pilot.press("y")
        assert await wait_until(pilot, lambda: bool(recorded.specs))
    job = read_job_json(Layout(tui_root), recorded.specs[-1].id)
    assert job["kind"] == "sync"
    assert job["argv"][:6] == [PY, "-m", "rltui.sync_to_s3", "--action", "restore", "--training-run"]
    assert job["argv"][6] == ONLY_IN_BUCKET


@pilot_test
async def test_shift_a_starts_the_live_archive_of_the_selected_running_job(tui_root: Path, monkeypatch) -> None:
    monkeypatch.setenv("RLTUI_S3_BUCKET", "bucket")
    monkeypatch.setenv("RLTUI_S3_ENV", "/dev/null")
    launched = []
    monkeypatch.setattr("rltui.jobs.control.launch", lambda layout, spec, *a, **k: launched.append(spec))
    app = make_test_app(tui_root)
    async with app.run_test(size=(120, 30)) as pilot:
        await started(pilot)
        await pilot.press("slash", *RUNS["running"], "enter")
        assert await wait_until(pilot, lambda: app.query_one("RunsTable").selected == RUNS["running"])
        await pilot.press("A")
        assert await wait_until(pilot, lambda: bool(launched))
    spec = launched[-1]
    assert spec.kind.value == "sync" and "--follow-job" in spec.argv
    assert spec.argv[spec.argv.index("--training-run") + 1] == RUNS["running"]
    assert json.dumps(spec.to_json())  # a job record that can be written


@pilot_test
async def test_a_view_shown_before_the_pane_is_mounted_is_drawn_once_it_is_and_not_after_removal() -> None:
    # The archive view's worker posts on a timer; its message could reach the app while the hidden
    # tabs were still mounting, or while the app closed, and drawing into a pane without its
    # children raised NoMatches (CI, stop 46).
    from textual.app import App

    from rltui.archive.view import ArchiveView
    from rltui.tui.bucket_pane import BucketPane

    pane = BucketPane(id="bucket-view")
    bucket_only = [BucketRun(ONLY_IN_BUCKET, '"e1"', 1 << 20, 3, 40, 40, (40,), time.time(), "h")]
    pane.show(ArchiveView(lags={}, bucket_only=bucket_only, listed_at=None, problem=None), {})
    assert pane.selected is None  # not mounted: no table to ask

    class Host(App[None]):
        def compose(self):
            yield pane

    async with Host().run_test(size=(100, 20)) as pilot:
        await pilot.pause()
        assert pane.selected == ONLY_IN_BUCKET
        assert "In the bucket only: 1 run(s)" in str(pane.query_one("#bucket-live").render())
        await pane.remove()  # as when the app closes: still "mounted", its children gone
        pane.show(ArchiveView(lags={}, bucket_only=[], listed_at=None, problem="late"), {})
        assert pane.selected is None and pane.shown[0].problem == "late"
