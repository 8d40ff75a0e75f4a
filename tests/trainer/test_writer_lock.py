"""One writer per run: real trainers on the tiny model, started on one run at once (issue 13).

Two resumes at once: one trains, the other refuses with one line and exit 2; a new run forced
onto a run being written refuses too; `--wait-for-lock` waits, then resumes from the checkpoint
the first writer left (resolved after the wait); `supervise` does not resume a lost job while a
trainer started by hand writes its run; status shows who holds the lock.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rltui.runs import checkpoints, localfs, writer_lock

pytestmark = pytest.mark.slow


@pytest.fixture
def three_steps(tiny_cache, tmp_path, kit, test_config):
    """A finished 3-step run (checkpoints 0 and 3) in a fresh root."""
    cfg = json.loads(json.dumps(test_config))
    cfg["training"]["total_steps"] = 3
    root, run, _ = kit.new_run(tiny_cache, tmp_path, cfg)
    return root, run


def _resume(kit, root, run, log, *extra, sleep="0.4"):
    args = ["--training-run", run, "--from-step", "latest", "--additional-steps", "3", "--no-torchrun",
            "--root", str(root), *extra]
    return kit.spawn("trainer.resume_training", args, log, env={"RLTUI_TEST_STEP_SLEEP": sleep})


def _sessions_per_step(kit, root, run) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    path = root / "training_runs" / run / "logs" / "train_log.jsonl"
    for line in path.read_text().splitlines():
        row = json.loads(line)
        out.setdefault(row["step"], set()).add(row["session"])
    return out


def _error_lines(text: str) -> list[str]:
    return [x for x in text.splitlines() if "error" in x.lower() or "Traceback" in x]


def test_two_resumes_at_once_one_trains_the_other_refuses_with_exit_2(three_steps, kit, tmp_path):
    root, run = three_steps
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [_resume(kit, root, run, log) for log in logs]
    codes = [p.wait(timeout=300) for p in procs]
    assert sorted(codes) == [0, 2], [log.read_text()[-2000:] for log in logs]
    refused = logs[codes.index(2)].read_text()
    errors = _error_lines(refused)
    assert len(errors) == 1 and f"run {run} is being written by pid" in errors[0], refused
    assert "Traceback" not in refused
    per_step = _sessions_per_step(kit, root, run)
    assert all(len(per_step[s]) == 1 for s in (4, 5, 6)), per_step  # each step trained once
    state = localfs.Layout(root).training_state(run)
    assert checkpoints.read_step_latest(state) == checkpoints.latest_complete_step(state) == 6
    assert writer_lock.holder(root / "training_runs" / run) is None  # let go at the end
    assert not (root / "training_runs" / run / writer_lock.LOCK_NAME).exists()


def test_a_new_run_on_a_folder_being_resumed_refuses_and_a_waiting_resume_goes_on_after(
        three_steps, kit, tmp_path, cfg_file):
    root, run = three_steps
    first = _resume(kit, root, run, tmp_path / "first.log")
    run_dir = root / "training_runs" / run
    status = localfs.Layout(root).run_status(run)
    kit.wait_status(status, lambda st: st.get("step", 0) >= 4 and st["phase"] != "loading")
    held = writer_lock.holder(run_dir)
    assert held is not None and held.pid == first.pid

    # status shows who writes it
    shown = subprocess.run([sys.executable, "-m", "rltui.cli", "--batch", "status", "--json",
                            "--root", str(root)], capture_output=True, text=True, timeout=120)
    doc = json.loads(shown.stdout)
    assert [r["writer"]["pid"] for r in doc["runs"] if r["name"] == run] == [first.pid]

    # train racing resume: a new run forced onto this folder
    code, _, err = kit.run_inprocess(["--cfg", str(cfg_file()), "--root", str(root), "--run-name", run,
                                      "--steps", "1"])
    assert code == 2 and f"run {run} is being written by pid {first.pid}" in err, err

    waiting = _resume(kit, root, run, tmp_path / "second.log", "--wait-for-lock", sleep="0")
    assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()[-2000:]
    assert waiting.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()[-2000:]
    second = (tmp_path / "second.log").read_text()
    assert f"waiting for run {run}: it is being written by pid {first.pid}" in second
    per_step = _sessions_per_step(kit, root, run)
    assert sorted(per_step) == list(range(1, 10)) and all(len(v) == 1 for v in per_step.values())
    st = json.loads(status.read_text())
    assert st["target_step"] == 9 and st["phase"] == "completed"  # "latest" resolved after the wait
    state = localfs.Layout(root).training_state(run)
    assert checkpoints.read_step_latest(state) == checkpoints.latest_complete_step(state) == 9


def test_supervise_does_not_resume_a_run_a_hand_started_trainer_writes(three_steps, kit, tmp_path):
    from rltui.jobs import builders, supervise
    from rltui.jobs.policy import RestartSettings
    from rltui.jobs.records import JobKind, JobSpec, JobState, StateFile, read_state, write_spec, write_state
    from rltui.runs import machine

    root, run = three_steps
    layout = localfs.Layout(root)
    # a lost job of this run, with auto-resume on
    spec = JobSpec(id=builders.new_job_id(JobKind.RESUME), kind=JobKind.RESUME, run=run,
                   argv=("true",), resume_argv=tuple(builders.resume_argv(layout, run, 1)), gpu_count=0,
                   restart=RestartSettings(auto_resume=True))
    write_spec(layout, spec)
    write_state(layout, spec.id, StateFile(JobState.LOST, run=run, boot_time=machine.boot_time()))
    by_hand = _resume(kit, root, run, tmp_path / "hand.log")
    kit.wait_status(layout.run_status(run), lambda st: st.get("step", 0) >= 4)
    done = supervise.supervise_once(layout)
    assert done.resumed == [] and read_state(layout, spec.id).resumed_by is None
    assert by_hand.wait(timeout=300) == 0
    # the hand-started trainer finished the run: nothing left to resume
    assert supervise.supervise_once(layout).resumed == []
