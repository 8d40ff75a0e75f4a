"""An evaluation's progress for its keeper: eval_status.json after every batch, and a stalled
evaluation (real evaluator process under a real keeper) killed and failed as hung."""

from __future__ import annotations

import math
import time

import psutil
import pytest

from evaluator import results
from evaluator.eval_batch import main
from rltui.jobs import builders, control
from rltui.jobs.records import JobState, read_state
from rltui.runs.localfs import Layout, read_json

DATASET = "arith_r1_template"


def test_progress_is_written_after_every_batch(tiny_root, make_run, eval_args, monkeypatch) -> None:
    run = make_run(tiny_root, steps=(1,))
    writes: list[tuple[str, int | None, tuple[int, int] | None]] = []
    original = results.StatusFile.write

    def recording(self, phase, current_step=None, eta_s=None, error=None, completions=None):
        writes.append((phase, current_step, completions))
        original(self, phase, current_step, eta_s, error, completions)

    monkeypatch.setattr(results.StatusFile, "write", recording)
    assert main(eval_args(tiny_root, run, "--batch-size", "4")) == 0
    batches = [c for phase, step, c in writes if phase == "evaluating" and c is not None]
    total = batches[-1][1]
    assert len(batches) == math.ceil(total / 4) and batches[-1] == (total, total)
    assert [done for done, _ in batches] == sorted({done for done, _ in batches})
    assert all(step == 1 for phase, step, c in writes if phase == "evaluating")
    assert writes[0][0] == "loading" and writes[-1][0] == "completed"


@pytest.mark.slow
def test_a_stalled_evaluation_is_killed_and_its_job_fails_as_hung(tiny_root, make_run) -> None:
    layout = Layout(tiny_root)
    run = make_run(tiny_root, steps=(1, 2))
    spec = builders.eval_job(layout, run, DATASET, subset_frac=0.1, gpus=0, hang_timeout_s=8)
    spec = spec.with_changes(env={**spec.env, "RLTUI_TEST_EVAL_STALL_AT_STEP": "2"})
    job = control.launch(layout, spec)
    try:
        final = _wait_final(layout, job.id)
    finally:
        if not read_state(layout, job.id).state.final:  # the test failed: leave nothing running
            control.kill(layout, job.id)
    assert final.state is JobState.FAILED and final.last_reason.startswith("hung: no progress")
    log = control.read_log(layout, job.id)
    assert "test stall at step 2" in log and "no progress in eval_status.json" in log
    assert read_json(layout.eval_step_dir(run, DATASET, 1) / "summary.json")["error"] is None
    status = read_json(layout.eval_status(run, DATASET))
    assert status["phase"] == "evaluating" and status["current_step"] == 2 and status["done"] == [1]
    assert not psutil.pid_exists(final.child_pid) or psutil.Process(final.child_pid).status() == "zombie"


def _wait_final(layout: Layout, job_id: str, timeout: float = 300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = read_state(layout, job_id)
        if state.state.final:
            return state
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end in {timeout}s")
