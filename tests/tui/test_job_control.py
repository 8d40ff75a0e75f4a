"""Stop and kill from the keyboard act on a real keeper supervising a real process."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from rltui.jobs import builders, control
from rltui.jobs.records import JobKind, JobSpec, read_state
from rltui.runs.localfs import Layout
from rltui.runs.machine import pid_alive
from rltui.gpu import FakeSampler
from tui_kit import RUNS, make_test_app, no_gpus, pilot_test, started, wait_until, write_run


@pytest.fixture
def quiet_root(tmp_path: Path):
    """One finished run and nothing active, so the only running job is the test's own."""
    layout = Layout(tmp_path / "localfs").ensure()
    write_run(layout, RUNS["completed"], steps=3, target=3, ckpts=[3],
              status={"step": 3, "phase": "completed", "pid": 11, "time": 0.0})
    yield layout
    for job in control.list_jobs(layout):
        state = job.state
        if state and state.keeper_pid and pid_alive(state.keeper_pid):
            os.kill(state.keeper_pid, signal.SIGKILL)
        if state and state.pgid:
            try:
                os.killpg(state.pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def start_sleeper(layout: Layout) -> str:
    spec = JobSpec(id=builders.new_job_id(JobKind.EVAL), kind=JobKind.EVAL, run=RUNS["completed"],
                   argv=(sys.executable, "-c", "import time; print('working', flush=True); time.sleep(300)"),
                   title="sleeper", gpu_count=0)
    control.launch(layout, spec, FakeSampler(no_gpus()))
    return spec.id


def job_state(layout: Layout, job_id: str) -> str:
    try:
        return read_state(layout, job_id).state.value
    except Exception:
        return "unreadable"


async def act_on_job(layout: Layout, key: str) -> str:
    job_id = start_sleeper(layout)
    app = make_test_app(layout.root, watch=True, fixed=False, gpus=no_gpus())
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot)
        await pilot.press("2")
        pane = app.query_one("JobsPane")
        assert await wait_until(pilot, lambda: pane.selected is not None and pane.selected.state.value == "running",
                                timeout=60)
        await pilot.press(key)
        assert type(app.screen).__name__ == "Confirm"
        await pilot.press("y")
        assert await wait_until(pilot, lambda: job_state(layout, job_id) in ("stopped", "failed"), timeout=60)
        assert await wait_until(pilot, lambda: pane.jobs[job_id].state.value in ("stopped", "failed"))
    return job_id


@pilot_test
async def test_stop_key_asks_then_stops_the_selected_job(quiet_root: Layout) -> None:
    job_id = await act_on_job(quiet_root, "x")
    state = read_state(quiet_root, job_id)
    assert state.state.value == "stopped"
    assert any("stop requested" in r for r in state.reasons)


@pilot_test
async def test_kill_key_asks_then_kills_the_selected_job(quiet_root: Layout) -> None:
    job_id = await act_on_job(quiet_root, "k")
    state = read_state(quiet_root, job_id)
    assert state.signal == signal.SIGKILL
    assert "SIGKILL), as the user asked" in quiet_root.job_log(job_id).read_text()
    assert not pid_alive(state.child_pid)


@pilot_test
async def test_answering_no_leaves_the_job_running(quiet_root: Layout) -> None:
    job_id = start_sleeper(quiet_root)
    app = make_test_app(quiet_root.root, watch=True, fixed=False, gpus=no_gpus())
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot)
        await pilot.press("2")
        pane = app.query_one("JobsPane")
        assert await wait_until(pilot, lambda: pane.selected is not None and pane.selected.state.value == "running",
                                timeout=60)
        await pilot.press("x", "n")
        await pilot.pause(0.5)
        assert job_state(quiet_root, job_id) == "running"
        await pilot.press("q")
    assert f"still running and will keep running: {job_id}" in app.return_value
    assert job_state(quiet_root, job_id) == "running"


@pilot_test
async def test_jobs_arriving_after_the_jobs_pane_was_taken_down_are_kept_not_drawn() -> None:
    # A worker's last snapshot can reach the app while it closes: a removed pane is still
    # "mounted" but has no table to draw into (the Bucket pane raised NoMatches so in CI).
    from textual.app import App

    from rltui.tui.jobs_pane import JobsPane

    pane = JobsPane(lambda: 0.0, id="jobs-view")

    class Host(App[None]):
        def compose(self):
            yield pane

    async with Host().run_test(size=(100, 20)) as pilot:
        await pilot.pause()
        await pane.remove()
        pane.set_jobs([])
        assert pane.selected is None and pane.jobs == {}
