"""The UI thread reads no files: a job form's builder (which reads the config, the checkpoint's
manifest) runs in a thread worker, and the default config is looked up off the UI thread too."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from rltui.jobs import builders
from tui_kit import RUNS, Recorded, make_test_app, pilot_test, record_only_launcher, started, wait_until


@pilot_test
async def test_a_forms_builder_runs_off_the_ui_thread_and_its_spec_is_launched(
    tui_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[threading.Thread] = []
    real = builders.eval_job

    def spy(*args, **kwargs):
        threads.append(threading.current_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(builders, "eval_job", spy)
    recorded = Recorded([])
    app = make_test_app(tui_root, launcher=record_only_launcher(recorded))
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot)
        ui_thread = threading.current_thread()  # the app's loop runs in the test's thread
        await pilot.press("slash", *RUNS["completed"], "enter")
        assert await wait_until(pilot, lambda: app.query_one("RunsTable").selected == RUNS["completed"])
        await pilot.press("e")
        assert type(app.screen).__name__ == "EvalForm"
        await pilot.press("enter")
        assert await wait_until(pilot, lambda: bool(recorded.specs)), "nothing was launched"
        assert type(app.screen).__name__ != "EvalForm"  # dismissed with the spec
    assert len(threads) == 1 and threads[0] is not ui_thread
    assert recorded.specs[0].run == RUNS["completed"]


@pilot_test
async def test_the_default_config_is_found_off_the_ui_thread(
    tui_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rltui.tui import actions

    calls: list[threading.Thread] = []
    real_is_file = Path.is_file

    def is_file(self: Path) -> bool:
        if str(self) in actions.DEFAULT_CONFIGS:
            calls.append(threading.current_thread())
        return real_is_file(self)

    monkeypatch.setattr(Path, "is_file", is_file)
    app = make_test_app(tui_root)
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot)
        ui_thread = threading.current_thread()
        assert await wait_until(pilot, lambda: bool(calls))
        await pilot.press("n")
        assert type(app.screen).__name__ == "TrainForm"
    assert calls and all(t is not ui_thread for t in calls)
