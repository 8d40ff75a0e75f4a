"""Helpers for the job tests (imported by name: tests/jobs is put on sys.path by conftest.py)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable

from rltui.jobs import builders
from rltui.jobs.records import JobKind, JobSpec, read_state
from rltui.runs.localfs import Layout, create_run_dir
from rltui.jobs.policy import RestartSettings

FAKE_TRAINER = str(Path(__file__).with_name("fake_trainer.py"))


def fake_train_spec(layout: Layout, steps: int = 6, env: dict | None = None,
                    restart: RestartSettings | None = None, **changes) -> JobSpec:
    """A training job running the fake trainer on a fresh run folder."""
    run = create_run_dir(layout)
    spec = JobSpec(
        id=builders.new_job_id(JobKind.TRAIN), kind=JobKind.TRAIN, run=run, title="fake train",
        argv=(sys.executable, FAKE_TRAINER, "--root", str(layout.root), "--run-name", run,
              "--steps", str(steps)),
        resume_argv=(sys.executable, FAKE_TRAINER, "--root", str(layout.root),
                     "--training-run", run, "--from-step", "latest"),
        env={"FAKE_STEP_SLEEP": "0.05", **(env or {})}, gpu_count=0,
        restart=restart or RestartSettings(),
    )
    return spec.with_changes(**changes) if changes else spec


def wait_until(predicate: Callable[[], object], timeout: float = 60.0, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_final(layout: Layout, job_id: str, timeout: float = 60.0):
    def final():
        try:
            s = read_state(layout, job_id)
        except Exception:
            return None
        return s if s.state.final else None

    return wait_until(final, timeout, f"job {job_id} to end")


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
