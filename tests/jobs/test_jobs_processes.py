"""Jobs with real processes: the keeper, signals, process groups, restarts, hangs, reconcile.

The trainer here is tests/jobs/fake_trainer.py (real files, real checkpoints, real signals);
tests/jobs/test_real_trainer.py runs the same promises with the real trainer on the tiny model.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest

from rltui.jobs import builders, control
from rltui.runs import checkpoints, localfs, machine
from rltui.jobs.records import FollowUp, JobKind, JobSpec, JobState, read_state
from rltui.jobs.policy import RestartSettings

from jobs_helpers import fake_train_spec, group_alive, wait_final, wait_until

pytestmark = pytest.mark.slow
FAST = dict(backoff_s=0.2, stop_grace_s=10, kill_grace_s=2)


def test_a_job_keeps_running_after_the_process_that_launched_it_exits(layout):
    spec = fake_train_spec(layout, steps=8, env={"FAKE_STEP_SLEEP": "0.2"})
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from rltui.jobs import control
        from rltui.runs.localfs import Layout
        from rltui.jobs.records import JobSpec
        import json
        spec = JobSpec.from_json(json.loads(sys.stdin.read()))
        print(control.launch(Layout({str(layout.root)!r}), spec).id)
    """)
    import json

    launcher = subprocess.run([sys.executable, "-c", code], input=json.dumps(spec.to_json()),
                              capture_output=True, text=True, timeout=60, check=True)
    assert launcher.stdout.strip() == spec.id  # the launcher has exited here
    running = wait_until(lambda: (s := read_state(layout, spec.id)).state is JobState.RUNNING and s,
                         what="running")
    assert machine.pid_alive(running.keeper_pid)
    final = wait_final(layout, spec.id)
    assert final.state is JobState.SUCCEEDED
    assert localfs.read_json(layout.run_status(spec.run))["step"] == 8


def test_stop_saves_and_leaves_no_process_of_the_job_alive(layout):
    spec = fake_train_spec(layout, steps=500, env={"FAKE_STEP_SLEEP": "0.1"},
                           restart=RestartSettings(auto_resume=True, **FAST))
    control.launch(layout, spec)
    wait_until(lambda: checkpoints.latest_complete_step(layout.training_state(spec.run)), what="a checkpoint")
    running = read_state(layout, spec.id)
    control.stop(layout, spec.id)
    final = wait_final(layout, spec.id)
    assert final.state is JobState.STOPPED and final.exit_code == 0
    status = localfs.read_json(layout.run_status(spec.run))
    assert status["phase"] == "stopped"
    assert checkpoints.latest_complete_step(layout.training_state(spec.run)) == status["step"]
    wait_until(lambda: not machine.pid_alive(running.keeper_pid), 10, "the keeper to exit")
    wait_until(lambda: not group_alive(running.pgid), 10, "the job's process group to be gone")


def test_stop_of_a_process_that_ignores_it_escalates_to_sigkill_of_the_group(layout):
    script = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
              "print('ignor' + 'ing', flush=True); time.sleep(600)")  # argv (logged) lacks the word
    spec = JobSpec(id=builders.new_job_id(JobKind.SYNC), kind=JobKind.SYNC, argv=(sys.executable, "-c", script),
                   gpu_count=0, restart=RestartSettings(kill_grace_s=1))
    control.launch(layout, spec)
    wait_until(lambda: "\nignoring\n" in control.read_log(layout, spec.id), what="the script to start")
    pgid = read_state(layout, spec.id).pgid
    control.stop(layout, spec.id)
    final = wait_final(layout, spec.id, 30)
    assert final.state is JobState.STOPPED and final.signal == signal.SIGKILL
    wait_until(lambda: not group_alive(pgid), 10, "the group, grandchild included, to be gone")


def test_kill_ends_the_whole_group_at_once_and_is_not_resumed(layout):
    spec = fake_train_spec(layout, steps=500, env={"FAKE_STEP_SLEEP": "0.1"},
                           restart=RestartSettings(auto_resume=True, **FAST))
    control.launch(layout, spec)
    running = wait_until(lambda: (s := read_state(layout, spec.id)).state is JobState.RUNNING and s,
                         what="running")
    control.kill(layout, spec.id)
    final = wait_final(layout, spec.id, 20)
    assert final.state is JobState.STOPPED and final.signal == signal.SIGKILL and final.restarts == 0
    assert final.last_reason == "killed by the user (SIGKILL to the group)"
    wait_until(lambda: not group_alive(running.pgid), 10, "the job's process group to be gone")


def test_sigkill_of_the_trainer_is_resumed_and_the_run_completes(layout):
    spec = fake_train_spec(layout, steps=12, env={"FAKE_STEP_SLEEP": "0.15"},
                           restart=RestartSettings(auto_resume=True, **FAST))
    control.launch(layout, spec)
    wait_until(lambda: (checkpoints.latest_complete_step(layout.training_state(spec.run)) or 0) >= 3,
               what="checkpoint 3")
    first = read_state(layout, spec.id).child_pid
    os.kill(first, signal.SIGKILL)
    final = wait_final(layout, spec.id)
    assert final.state is JobState.SUCCEEDED and final.restarts == 1
    assert any("killed by SIGKILL; restart 1 from checkpoint step" in r for r in final.reasons)
    assert final.last_restart_cause == "killed by SIGKILL"
    assert final.child_pid != first
    status = localfs.read_json(layout.run_status(spec.run))
    assert status["phase"] == "completed" and status["step"] == 12
    assert checkpoints.latest_complete_step(layout.training_state(spec.run)) == 12
    assert re.search(r"--from-step \d+", control.read_log(layout, spec.id))  # resolved once, a number


def test_a_stalled_trainer_is_detected_killed_and_resumed(layout):
    spec = fake_train_spec(layout, steps=6, env={"FAKE_STALL_AT_STEP": "3"},
                           restart=RestartSettings(auto_resume=True, hang_timeout_s=1.5, **FAST))
    control.launch(layout, spec)
    final = wait_final(layout, spec.id)
    assert final.state is JobState.SUCCEEDED and final.restarts == 1
    assert any(r.startswith("hung: no progress") for r in final.reasons)
    assert "stalling at step 3" in control.read_log(layout, spec.id)
    assert localfs.read_json(layout.run_status(spec.run))["step"] == 6


def test_max_restarts_exhausted_ends_failed_with_the_reason(layout):
    spec = fake_train_spec(layout, steps=50, env={"FAKE_EXIT_AFTER_STEPS": "2", "FAKE_EXIT_CODE": "7"},
                           restart=RestartSettings(auto_resume=True, max_restarts=2, **FAST))
    control.launch(layout, spec)
    final = wait_final(layout, spec.id)
    assert final.state is JobState.FAILED and final.restarts == 2 and final.exit_code == 7
    assert final.last_reason == "exit code 7; gave up after 2 restarts (max_restarts)"
    assert control.read_job(layout, spec.id).exit_status() == 1


def test_restarts_that_make_no_checkpoint_give_up(layout):
    spec = fake_train_spec(layout, steps=50, env={"FAKE_EXIT_AT_STEP": "3"},
                           restart=RestartSettings(auto_resume=True, max_restarts=10, **FAST))
    control.launch(layout, spec)
    final = wait_final(layout, spec.id)
    assert final.state is JobState.FAILED and final.restarts == 2
    assert "2 restarts in a row made no new checkpoint" in final.last_reason


def test_sigkill_of_the_keeper_is_reconciled_to_lost_and_nothing_runs_on(layout):
    spec = fake_train_spec(layout, steps=500, env={"FAKE_STEP_SLEEP": "0.1"})
    control.launch(layout, spec)
    running = wait_until(lambda: (s := read_state(layout, spec.id)).state is JobState.RUNNING and s,
                         what="running")
    os.kill(running.keeper_pid, signal.SIGKILL)
    wait_until(lambda: not machine.pid_alive(running.keeper_pid), 10, "the keeper to die")
    assert control.reconcile(layout) == [spec.id]
    state = read_state(layout, spec.id)
    assert state.state is JobState.LOST and "keeper (pid" in state.last_reason
    wait_until(lambda: not group_alive(running.pgid), 10, "the trainer to go with its keeper")
    assert control.reconcile(layout) == []


def test_a_job_from_before_the_last_boot_is_lost(layout):
    spec = fake_train_spec(layout)
    from rltui.jobs.records import StateFile, write_spec, write_state

    write_spec(layout, spec)
    write_state(layout, spec.id, StateFile(JobState.RUNNING, keeper_pid=os.getpid(),
                                           boot_time=(machine.boot_time() or 0) - 86400))
    assert control.reconcile(layout) == [spec.id]
    assert "rebooted" in read_state(layout, spec.id).last_reason


def test_a_keeper_pid_reused_by_another_process_or_a_keeper_that_never_started_is_lost(layout):
    from rltui.jobs.records import StateFile, write_spec, write_state

    reused, never = fake_train_spec(layout), fake_train_spec(layout)
    for spec in (reused, never):
        write_spec(layout, spec)
    write_state(layout, reused.id, StateFile(JobState.RUNNING, keeper_pid=os.getpid(),
                                             boot_time=machine.boot_time()))
    state = StateFile(JobState.STARTING, boot_time=machine.boot_time()).to_json()
    state["updated_at"] = state["updated_at"] - 3600  # the launcher wrote it an hour ago
    localfs.write_json_atomic(layout.job_state(never.id), state)
    assert sorted(control.reconcile(layout)) == sorted([reused.id, never.id])
    assert "now belongs to another process" in read_state(layout, reused.id).last_reason
    assert "never started" in read_state(layout, never.id).last_reason


def test_a_follow_up_eval_starts_when_training_succeeds(layout):
    spec = fake_train_spec(layout, steps=3).with_changes(
        followups=(FollowUp(JobKind.EVAL, "arith"),))
    control.launch(layout, spec)
    wait_final(layout, spec.id)
    final = wait_until(lambda: (s := read_state(layout, spec.id)).followup_jobs and s, 10, "the follow-up")
    assert final.state is JobState.SUCCEEDED and len(final.followup_jobs) == 1
    follow = control.read_job(layout, final.followup_jobs[0])
    assert follow.spec.kind is JobKind.EVAL and follow.spec.parent_job == spec.id
    assert follow.spec.argv[1:6] == ("-m", "evaluator.eval_batch", "--training-run", spec.run, "--eval-dataset")
    assert follow.phase is not JobState.QUEUED  # it was started, on the GPUs training held (none here)
    wait_final(layout, follow.id)


def test_a_failed_job_starts_no_follow_up(layout):
    spec = fake_train_spec(layout, steps=5, env={"FAKE_EXIT_AT_STEP": "2"}).with_changes(
        followups=(FollowUp(JobKind.EVAL, "arith"),))
    control.launch(layout, spec)
    final = wait_final(layout, spec.id)
    assert final.state is JobState.FAILED and final.followup_jobs == []
    assert "auto-resume is off" in final.last_reason


def test_a_new_run_refused_for_bad_input_leaves_no_empty_run_folder_but_keeps_a_used_one(layout):
    refused = fake_train_spec(layout, restart=RestartSettings(auto_resume=True, **FAST)).with_changes(
        argv=(sys.executable, "-c", "import sys; print('bad config'); sys.exit(2)"))
    used = fake_train_spec(layout, env={"FAKE_EXIT_AT_STEP": "1", "FAKE_EXIT_CODE": "2"},
                           restart=RestartSettings(auto_resume=True, **FAST))
    for spec in (refused, used):
        control.launch(layout, spec)
    for spec in (refused, used):
        final = wait_final(layout, spec.id)
        assert final.state is JobState.FAILED and final.exit_code == 2 and final.restarts == 0
        assert "bad input" in final.last_reason
    assert not layout.run_dir(refused.run).exists()
    assert "removed the unused, empty run folder" in control.read_log(layout, refused.id)
    assert layout.run_status(used.run).exists()


def test_a_stop_right_after_launch_waits_for_the_keepers_pid_and_signals_it(layout):
    import threading

    from rltui.jobs.records import StateFile, write_spec, write_state
    from rltui.runs.machine import boot_time, this_host

    spec = fake_train_spec(layout)
    write_spec(layout, spec)
    state = StateFile(JobState.STARTING, run=spec.run, host=this_host(), boot_time=boot_time())
    write_state(layout, spec.id, state)  # what the launcher writes before the keeper runs
    keeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "rltui.jobs.keeper",
                               str(layout.job_dir(spec.id))])  # a keeper's command line names its job
    try:
        def keeper_starts():  # as a real keeper does once it runs: its pid in state.json
            state.keeper_pid = keeper.pid
            write_state(layout, spec.id, state)

        threading.Timer(0.5, keeper_starts).start()
        control.stop(layout, spec.id)
        assert keeper.wait(timeout=10) == -signal.SIGTERM  # the signal reached the keeper
    finally:
        keeper.kill()
        keeper.wait()
