"""The Jobs pane follows a Slurm job from the state Slurm reports (state.json, written from one
squeue call for all jobs): queued while held, running, succeeded."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from slurm_kit import run_cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tui"))
from tui_kit import make_test_app, no_gpus, pilot_test, started, wait_until  # noqa: E402

pytestmark = pytest.mark.slow


def test_the_jobs_pane_shows_queued_then_running_then_succeeded(slurm_cluster, slurm_root, slurm_cfg,
                                                                 monkeypatch):
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    done = run_cli(slurm_cluster, slurm_root, "train", "--cfg", str(slurm_cfg(training__total_steps=2)),
                   "--backend", "slurm", "--gpus", "none", "--detach", "--sbatch-arg=--hold")
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    slurm_id = json.loads((slurm_root / "jobs" / job_id / "job.json").read_text())["slurm"]["job_id"]
    seen: list[str] = []

    @pilot_test
    async def drive() -> None:
        app = make_test_app(slurm_root, watch=True, fixed=False, gpus=no_gpus())
        async with app.run_test(size=(120, 30)) as pilot:
            await started(pilot)
            await pilot.press("2")
            pane = app.query_one("JobsPane")

            def state() -> str:
                job = pane.jobs.get(job_id)
                value = job.state.value if job else "-"
                if not seen or seen[-1] != value:
                    seen.append(value)
                return value

            # queued, and the reason is Slurm's: the pane reads what the poll of Slurm wrote
            assert await wait_until(pilot, lambda: state() == "queued" and "JobHeldUser" in (
                pane.jobs[job_id].last_reason or ""), timeout=30)
            slurm_cluster.run(["scontrol", "release", slurm_id])
            assert await wait_until(pilot, lambda: state() == "running", timeout=60)
            assert await wait_until(pilot, lambda: state() == "succeeded", timeout=240)

    drive()
    assert [s for s in seen if s in ("queued", "running", "succeeded")] == ["queued", "running", "succeeded"]
