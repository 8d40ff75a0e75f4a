"""The headless job commands as a user runs them: `python -m rltui.cli --batch ...` subprocesses.
Bad input is one line and exit 2 with nothing written; output off a terminal has no escape codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rltui.errors import UsageError
from rltui.jobs import builders, control
from rltui.jobs.records import JobState, read_state
from rltui.runs import checkpoints, writer_lock
from rltui.runs.localfs import create_run_dir

from jobs_helpers import fake_train_spec, wait_final, wait_until


CFG = str(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml")  # a valid config


def rltui(root, *args, timeout=60):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "rltui.cli", "--root", str(root), "--batch", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("args, names", [
    (["train", "--cfg", "missing.yaml"], "missing.yaml"),
    (["train", "--cfg", CFG, "--steps", "0"], "--steps: 0"),
    (["train", "--cfg", CFG, "--nproc", "0"], "--nproc: 0"),
    (["train", "--cfg", CFG, "--gpus", "0,x"], "'0,x'"),
    (["train", "--cfg", CFG, "--gpus", "7"], "GPU 7"),
    (["train", "--cfg", CFG, "--eval-after", "../d"], "../d"),
    (["train", "--cfg", CFG, "--max-restarts", "-1"], "--max-restarts: -1"),
    (["train", "--cfg", CFG, "--hang-timeout", "0"], "--hang-timeout: 0.0"),  # once: killed as hung at once
    (["train", "--cfg", CFG, "--hang-timeout", "nan"], "--hang-timeout: nan"),
    (["train", "--cfg", CFG, "--stop-grace", "-5"], "--stop-grace: -5.0"),
    (["resume", "--training-run", "run_nope"], "run_nope"),
    (["resume", "--training-run", "../../etc"], "../../etc"),
    (["eval", "--training-run", "run_nope"], "run_nope"),
    (["eval", "--training-run", "run_nope", "--hang-timeout", "-1"], "--hang-timeout: -1"),
    (["resume"], "resume needs a run: rltui --batch resume RUN"),
    (["eval"], "eval needs a run"),
    (["resume", "run_a", "--training-run", "run_b"], "bad --training-run: 'run_b' (RUN already names 'run_a')"),
    (["resume", "run_nope"], "run_nope"),
    (["eval", "../../etc"], "../../etc"),
    (["stop", "no-such-job"], "no-such-job"),
    (["kill", "run_nope"], "no such job or run: 'run_nope'"),
    (["jobs", "--run", "run_nope"], "bad --run: no run named 'run_nope'"),
    (["jobs", "--run", "../x"], "'../x'"),
    (["logs", "../x"], "../x"),
    (["logs", "x", "--tail", "-1"], "--tail"),
    (["supervise", "--interval", "0"], "--interval"),
    (["demo", "--gpus", "2"], "--gpus: '2'"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(layout, args, names):
    r = rltui(layout.root, *args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and names in r.stderr and "Traceback" not in r.stderr
    assert list(layout.jobs.iterdir()) == [] and list(layout.training_runs.iterdir()) == []


@pytest.mark.parametrize("text, names", [
    ("training:\n  totl_steps: 5\n", "unknown key 'training.totl_steps'"),  # a typo
    ("optim:\n  learning_rate: fast\n", "'optim.learning_rate' must be a number, got 'fast'"),
    ("grpo:\n  num_generations: 0\n", "'grpo.num_generations' = 0: must be >= 2"),
    ("training: [1, 2\n", "not valid YAML"),
    ("- just\n- a list\n", "must be a mapping of sections"),
])
def test_a_config_the_trainer_would_refuse_is_one_line_exit_2_and_no_job(layout, tmp_path, text, names):
    # once a job and a run folder that failed a second later, the reason only in the job's log
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    r = rltui(layout.root, "train", "--cfg", str(cfg), "--gpus", "none")
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and names in r.stderr and "bad --cfg: " in r.stderr and str(cfg) in r.stderr
    assert list(layout.jobs.iterdir()) == [] and list(layout.training_runs.iterdir()) == []
    with pytest.raises(UsageError, match="bad --cfg"):  # the TUI's form asks the same builder
        builders.train_job(layout, cfg)
    assert builders.train_job(layout, CFG).kind.value == "train"  # a valid one still makes its spec


def _run_with_checkpoints(layout, steps, target):
    run = create_run_dir(layout)
    for step in steps:
        staging = checkpoints.staging_dir(layout.training_state(run), step)
        (staging / "w.bin").write_bytes(b"x")
        checkpoints.finalize_checkpoint(staging, layout.step_dir(run, step), {"step": step, "target_step": target})
    return run


def test_resuming_a_run_at_its_target_without_more_steps_is_one_line_exit_2_and_no_job(layout):
    # once a job that failed a second later, its reason only in the job's log
    run = _run_with_checkpoints(layout, (5, 10), target=10)
    r = rltui(layout.root, "resume", "--training-run", run)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "already reached its target step 10 at step 10" in r.stderr
    assert "--additional-steps" in r.stderr and list(layout.jobs.iterdir()) == []
    # more steps, or an earlier checkpoint short of the target, still make a job
    assert builders.resume_job(layout, run, additional_steps=2).title == f"resume {run} from step 10 +2"
    assert builders.resume_job(layout, run, from_step=5).title == f"resume {run} from step 5"


def test_resume_and_eval_take_the_run_as_an_argument_and_a_missing_step_lists_the_complete_ones(layout):
    # `rltui resume RUN` once answered "the following arguments are required: --training-run"
    run = _run_with_checkpoints(layout, (5, 10), target=20)
    checkpoints.staging_dir(layout.training_state(run), 15)  # an interrupted save: never complete
    (layout.step_dir(run, 12)).mkdir()  # a folder without training_info.json
    for args, names in (
        (["resume", run, "--from-step", "7"],
         f"bad --from-step: no checkpoint at step 7 in {run} (its complete checkpoints: 5, 10)"),
        (["resume", run, "--training-run", run, "--from-step", "12"],
         (f"bad --from-step: step 12 of {run} is not complete (missing training_info.json "
          "(save did not finish); its complete checkpoints: 5, 10)")),
        (["eval", run, "--steps", "7"], f"bad --steps: no checkpoint at step 7 in {run} (it has 5, 10, 12)"),
    ):
        r = rltui(layout.root, *args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and names in r.stderr, (args, r.stderr)
    assert list(layout.jobs.iterdir()) == []


def _job_record(layout, run, kind, state):
    from rltui.jobs.records import JobKind, JobSpec, StateFile, create_job

    spec = JobSpec(id=builders.new_job_id(JobKind(kind)), kind=JobKind(kind), run=run, title=kind,
                   argv=("true",))
    create_job(layout, spec, StateFile(state=JobState(state), run=run))
    return spec.id


def test_a_runs_name_stands_for_its_job_its_training_job_of_several_else_one_line(layout):
    run = create_run_dir(layout)
    done = _job_record(layout, run, "train", "stopped")
    assert control.job_for(layout, done) == done  # a job id is itself
    assert control.job_for(layout, run) == done  # none active: logs shows the newest
    with pytest.raises(UsageError, match=f"run {run} has no active job \\(its newest job, {done}: stopped\\)"):
        control.job_for(layout, run, active_only=True)
    training = _job_record(layout, run, "resume", "running")
    archive = _job_record(layout, run, "sync", "running")  # its live archive, started after it
    assert control.job_for(layout, run, active_only=True) == training
    evals = [_job_record(layout, run, "eval", "queued"), _job_record(layout, run, "eval", "running")]
    assert control.job_for(layout, run) == training  # still the one training job
    other = create_run_dir(layout)
    (layout.jobs / training / "job.json").unlink()  # unreadable: not counted as the run's
    with pytest.raises(UsageError, match=f"run {run} has 3 active jobs .*: name one of them") as e:
        control.job_for(layout, run)
    assert all(job in str(e.value) for job in (archive, *evals))  # in id order: the same second here
    with pytest.raises(UsageError, match=f"run {other} has no jobs"):
        control.job_for(layout, other)
    with pytest.raises(UsageError, match="no such job or run: 'run_nope'"):
        control.job_for(layout, "run_nope")


def test_resuming_a_run_whose_training_job_has_not_ended_is_one_line_exit_2_and_no_job(layout):
    # between restarts the keeper holds no writer lock, yet it will write the run again
    from rltui.jobs.records import StateFile, update_state

    run = _run_with_checkpoints(layout, (5, 10), target=20)
    waiting = _job_record(layout, run, "train", "restarting")
    r = rltui(layout.root, "resume", run)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"run {run} has a training job not yet ended ({waiting}, restarting)" in r.stderr
    assert f"stop it first (rltui --batch stop {waiting})" in r.stderr
    assert sorted(p.name for p in layout.jobs.iterdir()) == [waiting]
    # from an older step the run is only read (a new run is forked), and an ended job is no writer
    assert builders.resume_job(layout, run, from_step=5).title == f"resume {run} from step 5"
    _job_record(layout, run, "eval", "running")  # an eval does not write the run
    update_state(layout, waiting, lambda s: StateFile.from_json({**s.to_json(), "state": "failed"}))
    assert builders.resume_job(layout, run).title == f"resume {run} from step 10"


def test_jobs_lists_one_runs_jobs_and_only_those_not_ended(layout):
    run, other = create_run_dir(layout), create_run_dir(layout)
    ended = _job_record(layout, run, "train", "failed")
    queued = _job_record(layout, run, "eval", "queued")
    elsewhere = _job_record(layout, other, "train", "stopped")

    def listed(*flags):
        r = rltui(layout.root, "jobs", *flags)
        assert r.returncode == 0, r.stderr
        return {line.split()[0] for line in r.stdout.splitlines()[1:]}, r.stdout

    assert listed()[0] == {ended, queued, elsewhere}
    assert listed("--run", run)[0] == {ended, queued}
    assert listed("--active")[0] == {queued}
    assert listed("--run", run, "--active")[0] == {queued}
    assert listed("--run", other, "--active")[1] == f"no active jobs of run {other} in {layout.jobs}\n"
    doc = json.loads(rltui(layout.root, "jobs", "--run", other, "--json").stdout)
    assert [job["id"] for job in doc] == [elsewhere]


def test_stop_and_logs_by_a_runs_name_reach_its_running_job(layout):
    spec = fake_train_spec(layout, steps=500, env={"FAKE_STEP_SLEEP": "0.1"})
    control.launch(layout, spec)
    wait_until(lambda: read_state(layout, spec.id).state is JobState.RUNNING, what="running")
    r = rltui(layout.root, "stop", spec.run, "--wait")
    assert r.returncode == 0 and r.stdout.startswith(f"job {spec.id}: stop requested"), r.stderr
    assert read_state(layout, spec.id).state is JobState.STOPPED
    logs = rltui(layout.root, "logs", spec.run, "--tail", "1")
    assert logs.stderr == f"rltui: run {spec.run}: job {spec.id}\n" and "stopped" in logs.stdout
    again = rltui(layout.root, "kill", spec.run)
    assert again.returncode == 2 and f"has no active job (its newest job, {spec.id}: stopped)" in again.stderr


def test_resuming_a_run_another_process_writes_is_one_line_exit_2_and_no_job(layout):
    run = _run_with_checkpoints(layout, (5,), target=10)
    lock = writer_lock.acquire(layout.run_dir(run), job="20261205-000000-train-abcd")
    try:
        r = rltui(layout.root, "resume", "--training-run", run)
    finally:
        lock.release()
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and f"being written by pid {os.getpid()}" in r.stderr
    assert "rltui --batch stop 20261205-000000-train-abcd" in r.stderr and list(layout.jobs.iterdir()) == []
    assert builders.resume_job(layout, run).title == f"resume {run} from step 5"  # free again


def test_logs_follow_streams_to_the_end_and_jobs_lists_it(layout):
    spec = fake_train_spec(layout, steps=5, env={"FAKE_STEP_SLEEP": "0.2"})
    control.launch(layout, spec)
    r = rltui(layout.root, "logs", spec.id, "-f")
    assert r.returncode == 0
    assert "step 5/5" in r.stdout and "succeeded: completed" in r.stdout
    assert "\x1b" not in r.stdout + r.stderr
    listing = rltui(layout.root, "jobs")
    assert spec.id in listing.stdout and "succeeded" in listing.stdout
    doc = json.loads(rltui(layout.root, "jobs", "--json").stdout)
    (job,) = doc
    assert job["id"] == spec.id and job["state"]["state"] == "succeeded"
    assert job["spec"]["argv"] == list(spec.argv) and job["state"]["usage"]["gpu_seconds"] == 0.0


def test_logs_tail_prints_the_last_lines(layout):
    spec = fake_train_spec(layout, steps=3)
    control.launch(layout, spec)
    wait_final(layout, spec.id)
    r = rltui(layout.root, "logs", spec.id, "--tail", "1")
    assert r.stdout.startswith("[rltui keeper") and "succeeded" in r.stdout and r.stdout.count("\n") == 1


def test_jobs_shows_a_running_jobs_cpu_and_memory_and_stop_wait_returns_when_it_stopped(layout):
    spec = fake_train_spec(layout, steps=500, env={"FAKE_STEP_SLEEP": "0.1"})
    control.launch(layout, spec)
    wait_until(lambda: read_state(layout, spec.id).state is JobState.RUNNING, what="running")
    (listed,) = json.loads(rltui(layout.root, "jobs", "--json").stdout)
    assert listed["resources"]["processes"] >= 1 and listed["resources"]["rss_mib"] > 1
    r = rltui(layout.root, "stop", spec.id, "--wait")
    assert r.returncode == 0 and "stopped" in r.stdout.splitlines()[-1]
    assert read_state(layout, spec.id).state is JobState.STOPPED
    again = rltui(layout.root, "stop", spec.id)
    assert again.returncode == 2 and "already ended (stopped)" in again.stderr


def test_any_batch_command_reconciles_a_job_whose_keeper_died(layout):
    spec = fake_train_spec(layout, steps=500, env={"FAKE_STEP_SLEEP": "0.1"})
    control.launch(layout, spec)
    running = wait_until(lambda: (s := read_state(layout, spec.id)).state is JobState.RUNNING and s,
                         what="running")
    os.kill(running.keeper_pid, 9)
    from rltui.runs.machine import pid_alive

    wait_until(lambda: not pid_alive(running.keeper_pid), 10, "the keeper to die")
    r = rltui(layout.root, "jobs")
    assert "lost" in r.stdout and read_state(layout, spec.id).state is JobState.LOST


def test_ctrl_c_while_waiting_stops_the_job_gracefully_and_a_second_returns_leaving_it_to_its_keeper(layout):
    import io

    from rltui.cli.follow import wait_and_stream

    spec = fake_train_spec(layout, steps=500, env={"FAKE_STEP_SLEEP": "0.1"})
    control.launch(layout, spec)
    wait_until(lambda: read_state(layout, spec.id).state is JobState.RUNNING, what="running")
    interrupts = iter([True])

    def sleep_with_one_ctrl_c(dt):
        if next(interrupts, False):
            raise KeyboardInterrupt
        __import__("time").sleep(dt)

    out = io.StringIO()
    job = wait_and_stream(layout, spec.id, out, sleep=sleep_with_one_ctrl_c)
    assert job.phase is JobState.STOPPED and job.exit_status() == 130
    assert "stopped at step" in out.getvalue()

    second = fake_train_spec(layout, steps=500, env={"FAKE_STEP_SLEEP": "0.1"})
    control.launch(layout, second)
    wait_until(lambda: read_state(layout, second.id).state is JobState.RUNNING, what="running")

    def always_ctrl_c(dt):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        wait_and_stream(layout, second.id, io.StringIO(), sleep=always_ctrl_c)
    state = read_state(layout, second.id)
    assert state.state.active  # the command returned; the keeper carries out the stop
    assert wait_final(layout, second.id).state is JobState.STOPPED
