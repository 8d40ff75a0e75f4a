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


def test_the_index_and_the_run_detail_name_who_writes_a_run(layout):
    import os
    import time

    from rltui.runs import localfs, machine
    from rltui.runs.index import Index
    from rltui.tui.run_detail import summary_text

    run = localfs.create_run_dir(layout)
    localfs.write_json_atomic(layout.run_status(run), {
        "run": run, "step": 1, "target_step": 5, "phase": "training", "pid": os.getpid(),
        "host": machine.this_host(), "time": time.time(), "started": time.time()})
    held = writer_lock.acquire(layout.run_dir(run), job="20260101-000000-train-\x1b]0;x\x07abcd")
    try:
        record = Index(layout).scan().runs[run]
        assert record.writer is not None and record.writer.pid == os.getpid()
        shown = summary_text(record).plain
        assert f"written by pid {os.getpid()} on {machine.this_host()}" in shown
        assert "\x1b" not in shown and "\x07" not in shown  # the record's text, shown clean
    finally:
        held.release()
    assert Index(layout).scan().runs[run].writer is None
