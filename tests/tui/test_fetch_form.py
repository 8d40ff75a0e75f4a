"""The fetch form (key f): a Hub model or dataset download becomes a fetch job record."""

from __future__ import annotations

import sys
from pathlib import Path

from textual.widgets import Input, Select

from rltui.runs.localfs import Layout
from tui_kit import Recorded, make_test_app, pilot_test, read_job_json, record_only_launcher, started, wait_until

PY = sys.executable


@pilot_test
async def test_fetch_key_writes_a_gsm8k_dataset_job_by_default(tui_root: Path) -> None:
    recorded = Recorded([])
    app = make_test_app(tui_root, launcher=record_only_launcher(recorded))
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot)
        await pilot.press("f")
        assert type(app.screen).__name__ == "FetchForm"
        app.screen.query_one("#f-repo", Input).focus()
        await pilot.press("enter")
        assert await wait_until(pilot, lambda: bool(recorded.specs))
        job = read_job_json(Layout(tui_root), recorded.specs[-1].id)
    assert job["kind"] == "fetch" and job["run"] is None and job["gpu_count"] == 0
    assert job["argv"] == [PY, "-m", "trainer.fetch", "dataset", "gsm8k", "--root", str(tui_root)]
    assert job["restart"]["auto_resume"] is True and job["restart"]["max_restarts"] == 3  # --retries 3


@pilot_test
async def test_fetch_form_model_with_a_local_name_and_a_bad_id_named_in_place(tui_root: Path) -> None:
    recorded = Recorded([])
    app = make_test_app(tui_root, launcher=record_only_launcher(recorded))
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot)
        await pilot.press("f")
        form = app.screen
        form.query_one("#f-what", Select).value = "model"
        form.query_one("#f-repo", Input).value = "not an id"
        form.query_one("#f-repo", Input).focus()
        await pilot.press("enter")
        assert await wait_until(pilot, lambda: "not an id" in str(form.query_one("#form-error").render()))
        assert not recorded.specs
        form.query_one("#f-repo", Input).value = "acme/tiny-qwen"
        form.query_one("#f-as_name", Input).value = "small"
        await pilot.press("enter")
        assert await wait_until(pilot, lambda: bool(recorded.specs))
        job = read_job_json(Layout(tui_root), recorded.specs[-1].id)
    assert job["argv"] == [PY, "-m", "trainer.fetch", "model", "acme/tiny-qwen", "--as", "small",
                           "--root", str(tui_root)]


@pilot_test
async def test_fetch_form_retries_field_sets_the_jobs_restarts_and_a_bad_count_is_named(tui_root: Path) -> None:
    recorded = Recorded([])
    app = make_test_app(tui_root, launcher=record_only_launcher(recorded))
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot)
        await pilot.press("f")
        form = app.screen
        assert form.query_one("#f-retries", Input).value == "3"  # the command line's default
        form.query_one("#f-retries", Input).value = "many"
        form.query_one("#f-repo", Input).focus()
        await pilot.press("enter")
        error = lambda: str(form.query_one("#form-error").render())  # noqa: E731
        assert await wait_until(pilot, lambda: "many" in error())
        assert error().startswith("✗ retries: bad --retries: 'many'") and app.focused.id == "f-retries"
        assert not recorded.specs
        await pilot.press("ctrl+u", "0", "enter")  # no restart: one try
        assert await wait_until(pilot, lambda: bool(recorded.specs))
        job = read_job_json(Layout(tui_root), recorded.specs[-1].id)
    assert job["restart"]["auto_resume"] is False and job["restart"]["max_restarts"] == 0
