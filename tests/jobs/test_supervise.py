"""`supervise`: lost training jobs with auto-resume are resumed (after a reboot too), others not."""

from __future__ import annotations

import os
import signal
import sys

from rltui.jobs import builders, control
from rltui.runs import checkpoints, localfs, machine
from rltui.gpu import FakeSampler, fake_gpus
from rltui.jobs.records import JobKind, JobSpec, JobState, StateFile, read_state, write_spec, write_state
from rltui.jobs.policy import RestartSettings
from rltui.jobs.supervise import supervise_once

from jobs_helpers import fake_train_spec, wait_final, wait_until

AUTO = RestartSettings(auto_resume=True, backoff_s=0.2)


def test_a_lost_auto_resume_job_is_resumed_to_completion(layout):
    spec = fake_train_spec(layout, steps=30, env={"FAKE_STEP_SLEEP": "0.1"}, restart=AUTO)
    control.launch(layout, spec)
    wait_until(lambda: (checkpoints.latest_complete_step(layout.training_state(spec.run)) or 0) >= 2,
               what="checkpoint 2")
    os.kill(read_state(layout, spec.id).keeper_pid, signal.SIGKILL)  # its trainer goes with it
    done = wait_until(lambda: (p := supervise_once(layout)).lost and p, 20, "the job to be lost")
    assert done.lost == [spec.id] and len(done.resumed) == 1
    new_id = done.resumed[0][1]
    new = control.read_job(layout, new_id)
    assert new.spec.kind is JobKind.RESUME and new.spec.parent_job == spec.id
    template = spec.resume_argv[:-1]  # ... --from-step latest: resolved once, passed as a number
    assert new.spec.argv[:len(template)] == template and new.spec.argv[len(template)].isdigit()
    assert read_state(layout, spec.id).resumed_by == new_id
    assert wait_final(layout, new_id).state is JobState.SUCCEEDED
    assert localfs.read_json(layout.run_status(spec.run))["step"] == 30
    assert supervise_once(layout).resumed == []  # resumed once, never twice


def test_a_job_running_before_a_reboot_is_resumed(layout):
    spec = fake_train_spec(layout, steps=4, restart=AUTO)
    write_spec(layout, spec)
    _checkpoint(layout, spec.run, 2, 4)
    write_state(layout, spec.id, StateFile(JobState.RUNNING, keeper_pid=1, run=spec.run,
                                           boot_time=(machine.boot_time() or 0) - 3600))
    result = supervise_once(layout)
    assert result.lost == [spec.id] and len(result.resumed) == 1
    assert wait_final(layout, result.resumed[0][1]).state is JobState.SUCCEEDED


def _checkpoint(layout, run, step, target):
    ts = layout.training_state(run)
    staging = checkpoints.staging_dir(ts, step)
    (staging / "w").write_bytes(b"w")
    checkpoints.finalize_checkpoint(staging, layout.step_dir(run, step), {"step": step, "target_step": target})
    checkpoints.update_step_latest(ts, step)


def _lost_with_checkpoint(layout):
    """A lost auto-resume training job whose run has a checkpoint at step 2 of 4."""
    spec = fake_train_spec(layout, steps=4, restart=AUTO)
    write_spec(layout, spec)
    _checkpoint(layout, spec.run, 2, 4)
    write_state(layout, spec.id, StateFile(JobState.LOST, run=spec.run))
    return spec


def test_an_eval_of_the_run_that_is_running_does_not_hold_back_the_resume_of_its_lost_training_job(layout):
    lost = _lost_with_checkpoint(layout)
    evaluation = JobSpec(id=builders.new_job_id(JobKind.EVAL), kind=JobKind.EVAL, run=lost.run, title="eval",
                         argv=(sys.executable, "-c", "import time; time.sleep(600)"), gpu_count=0)
    control.launch(layout, evaluation)
    wait_until(lambda: read_state(layout, evaluation.id).state is JobState.RUNNING, what="the eval to run")
    result = supervise_once(layout)
    assert len(result.resumed) == 1 and result.resumed[0][0] == lost.id
    assert wait_final(layout, result.resumed[0][1]).state is JobState.SUCCEEDED
    assert read_state(layout, evaluation.id).state is JobState.RUNNING  # untouched: it reads the run
    control.stop(layout, evaluation.id)
    wait_final(layout, evaluation.id)


def test_a_queued_training_job_of_the_run_holds_back_the_resume_of_its_lost_one(layout):
    lost = _lost_with_checkpoint(layout)
    sampler = FakeSampler(fake_gpus(1, used_mib=70000))
    queued = control.launch(layout, lost.with_changes(
        id=builders.new_job_id(JobKind.RESUME), kind=JobKind.RESUME, gpu_count=1,
        argv=lost.resume_argv[:-1] + ("2",)), sampler)
    assert queued.phase is JobState.QUEUED
    assert supervise_once(layout, sampler).resumed == []
    assert read_state(layout, lost.id).resumed_by is None


def test_jobs_without_auto_resume_or_checkpoint_or_with_a_finished_run_are_not_resumed(layout):
    plain = fake_train_spec(layout)
    no_ckpt = fake_train_spec(layout, restart=AUTO)
    for spec in (plain, no_ckpt):
        write_spec(layout, spec)
        write_state(layout, spec.id, StateFile(JobState.LOST, run=spec.run))
    result = supervise_once(layout)
    assert result.resumed == []
    assert any("no complete checkpoint" in p for p in result.problems)
    assert "not resumed" in read_state(layout, no_ckpt.id).last_reason
    assert supervise_once(layout).problems == []  # noted once


def test_supervise_starts_queued_jobs_when_gpus_free_up(layout):
    sampler = FakeSampler(fake_gpus(1, used_mib=70000))
    job = control.launch(layout, fake_train_spec(layout, steps=1).with_changes(gpu_count=1), sampler)
    assert job.phase is JobState.QUEUED
    assert supervise_once(layout, sampler).started == []
    sampler.set(fake_gpus(1))
    assert supervise_once(layout, sampler).started == [job.id]
    assert wait_final(layout, job.id).state is JobState.SUCCEEDED
