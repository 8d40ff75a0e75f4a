"""Screenshots of the main screens at 80x24 and 160x48: runs in every status, jobs, and the GPU
pane with and without GPUs (pytest-textual-snapshot; `pytest --snapshot-update` accepts changes).

The localfs lives at a fixed path, the clock is fixed and local time is UTC, so a picture
changes only when the screen does.
"""

from __future__ import annotations

import time

import pytest

from tui_kit import RUNS, gpus_busy, make_test_app, no_gpus, started, wait_until

SIZES = [(80, 24), (160, 48)]


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def ready(*keys: str, log: str | None = None):
    """A run_before that waits for the first scan and GPU sample, presses keys, waits for a log."""

    async def run_before(pilot) -> None:
        await started(pilot)
        app = pilot.app
        await wait_until(pilot, lambda: app.query_one("RunDetail").history is not None)
        if keys:
            await pilot.press(*keys)
        if log is not None:
            await wait_until(pilot, lambda: app.screen.query_one(log).line_count > 0)
        await pilot.pause(0.3)
        from textual.widgets import Input

        for box in app.screen.query(Input):  # a blinking cursor would be caught on or off by chance
            box.cursor_blink = False
        await pilot.pause()

    return run_before


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "160x48"])
def test_runs_screen_shows_every_status(snap_compare, snapshot_root, size) -> None:
    app = make_test_app(snapshot_root, gpus=gpus_busy())
    assert snap_compare(app, terminal_size=size, run_before=ready())


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "160x48"])
def test_crashed_run_with_an_incomplete_checkpoint(snap_compare, snapshot_root, size) -> None:
    app = make_test_app(snapshot_root, gpus=gpus_busy())
    assert snap_compare(app, terminal_size=size,
                        run_before=ready("slash", *RUNS["crashed"], "enter"))


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "160x48"])
def test_plot_of_the_completed_run(snap_compare, snapshot_root, size) -> None:
    app = make_test_app(snapshot_root, gpus=gpus_busy())
    keys = ("slash", *RUNS["completed"], "enter", "tab", "right")
    assert snap_compare(app, terminal_size=size, run_before=ready(*keys))


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "160x48"])
def test_jobs_screen_with_the_selected_jobs_log(snap_compare, snapshot_root, size) -> None:
    app = make_test_app(snapshot_root, gpus=gpus_busy())
    assert snap_compare(app, terminal_size=size, run_before=ready("2", log="#job-log"))


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "160x48"])
@pytest.mark.parametrize("gpus", ["with-gpus", "no-gpu"])
def test_gpu_screen(snap_compare, snapshot_root, size, gpus) -> None:
    app = make_test_app(snapshot_root, gpus=gpus_busy() if gpus == "with-gpus" else no_gpus())
    assert snap_compare(app, terminal_size=size, run_before=ready("3"))


def test_evaluate_form_at_80x24(snap_compare, snapshot_root) -> None:
    app = make_test_app(snapshot_root, gpus=no_gpus())
    keys = ("slash", *RUNS["completed"], "enter", "e")
    assert snap_compare(app, terminal_size=(80, 24), run_before=ready(*keys))


def test_new_training_form_at_80x24_with_an_error(snap_compare, snapshot_root) -> None:
    app = make_test_app(snapshot_root, gpus=no_gpus())
    keys = ("n", "ctrl+u", *"missing.yaml", "enter")
    assert snap_compare(app, terminal_size=(80, 24), run_before=ready(*keys))


def test_help_at_80x24(snap_compare, snapshot_root) -> None:
    app = make_test_app(snapshot_root, gpus=no_gpus())
    assert snap_compare(app, terminal_size=(80, 24), run_before=ready("question_mark"))
