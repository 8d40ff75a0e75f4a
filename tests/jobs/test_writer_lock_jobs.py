"""The keeper never starts a second writer: a restart waits while another process holds the run's
writer lock (e.g. a trainer started by hand), and goes on once it is let go."""

from __future__ import annotations

import pytest

from jobs_helpers import fake_train_spec, wait_final, wait_until
from rltui.jobs import control
from rltui.jobs.policy import RestartSettings
from rltui.jobs.records import JobState, read_state
from rltui.runs import writer_lock

pytestmark = pytest.mark.slow


def test_a_restart_waits_for_the_runs_writer_lock(layout):
    spec = fake_train_spec(layout, steps=4, env={"FAKE_EXIT_AFTER_STEPS": "2", "FAKE_EXIT_CODE": "1"},
                           restart=RestartSettings(auto_resume=True, backoff_s=0.1))
    held = writer_lock.acquire(layout.run_dir(spec.run), job="by-hand")  # the hand-started writer
    try:
        control.launch(layout, spec)
        wait_until(lambda: "the restart waits for it" in control.read_log(layout, spec.id), 60,
                   "the keeper to wait for the lock")
        log = control.read_log(layout, spec.id)
        assert log.count("] starting: ") == 1 and "(job by-hand)" in log
        assert read_state(layout, spec.id).state is JobState.RESTARTING
    finally:
        held.release()
    final = wait_final(layout, spec.id)
    assert final.state is JobState.SUCCEEDED and final.restarts >= 1
