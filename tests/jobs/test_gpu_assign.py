"""GPU assignment and queueing with an injected NVML sampler, and real keepers starting the jobs."""

from __future__ import annotations

import pytest

from rltui.jobs import gpu_assign
from rltui.jobs import control
from rltui.errors import UsageError
from rltui.gpu import FakeSampler, GpuInfo, GpuSnapshot, fake_gpus
from rltui.jobs.records import JobState, read_state

from jobs_helpers import fake_train_spec, wait_final, wait_until


def test_a_request_is_a_list_a_count_or_nothing():
    assert gpu_assign.parse_request(None, 1) == (None, None)
    assert gpu_assign.parse_request("0,2", 2) == ((0, 2), 2)
    assert gpu_assign.parse_request(0, 1) == (None, 0)
    for bad in ("a,b", "0,0", [-1], "0", True):
        with pytest.raises(UsageError, match="bad"):
            gpu_assign.parse_request(bad, 2)


def test_choose_skips_held_busy_and_lost_gpus():
    snap = GpuSnapshot([GpuInfo(0, mem_used_mib=100), GpuInfo(1, mem_used_mib=30000),
                        GpuInfo(2, lost=True), GpuInfo(3, mem_used_mib=None), GpuInfo(4, mem_used_mib=0)])
    assert gpu_assign.choose(2, snap, held={0}, threshold_mib=2048) == [3, 4]
    assert gpu_assign.choose(3, snap, held={0}, threshold_mib=2048) is None
    assert gpu_assign.choose([1], snap, held=set(), threshold_mib=2048) is None
    assert gpu_assign.choose([1], snap, held=set(), threshold_mib=2048, check_usage=False) == [1]
    assert gpu_assign.choose([2], snap, held=set(), threshold_mib=2048, check_usage=False) is None


def test_an_impossible_request_is_refused_before_anything_is_written(layout):
    sampler = FakeSampler(fake_gpus(2))
    spec = fake_train_spec(layout).with_changes(gpu_count=3)
    with pytest.raises(UsageError, match="3 asked, 2 usable"):
        control.launch(layout, spec, sampler)
    with pytest.raises(UsageError, match="GPU 5 is not usable"):
        control.launch(layout, spec.with_changes(gpus=(5,), gpu_count=1), sampler)
    assert control.list_jobs(layout) == []


def test_on_a_machine_without_gpus_a_job_runs_on_the_cpu(layout):
    spec = fake_train_spec(layout, steps=1).with_changes(gpu_count=None)
    job = control.launch(layout, spec, FakeSampler())
    assert wait_final(layout, job.id).state is JobState.SUCCEEDED
    assert "CUDA_VISIBLE_DEVICES=\n" in control.read_log(layout, job.id)


def test_jobs_get_free_gpus_and_wait_queued_until_one_frees_up(layout):
    sampler = FakeSampler(fake_gpus(2, used_mib=[0, 40000]))  # GPU 1 busy with someone else's work
    long = fake_train_spec(layout, steps=400, env={"FAKE_STEP_SLEEP": "0.05"}).with_changes(gpu_count=None)
    first = control.launch(layout, long, sampler)
    assert first.state.gpus == [0]
    wait_until(lambda: "CUDA_VISIBLE_DEVICES=0\n" in control.read_log(layout, first.id), what="GPU 0 in the log")

    second = control.launch(layout, fake_train_spec(layout, steps=1).with_changes(gpu_count=1), sampler)
    assert second.phase is JobState.QUEUED
    assert control.start_queued(layout, sampler) == []  # GPU 0 held by the first job, GPU 1 busy

    control.stop(layout, first.id)
    wait_final(layout, first.id)
    assert control.start_queued(layout, sampler) == [second.id]
    assert read_state(layout, second.id).gpus == [0]
    assert wait_final(layout, second.id).state is JobState.SUCCEEDED
    assert "CUDA_VISIBLE_DEVICES=0\n" in control.read_log(layout, second.id)


def test_a_queued_job_can_be_stopped_before_it_starts(layout):
    sampler = FakeSampler(fake_gpus(1, used_mib=50000))
    job = control.launch(layout, fake_train_spec(layout).with_changes(gpus=(0,), gpu_count=1), sampler)
    assert job.phase is JobState.QUEUED
    assert control.stop(layout, job.id).phase is JobState.STOPPED
    sampler.set(fake_gpus(1))
    assert control.start_queued(layout, sampler) == []


def _ended_keeper(layout, spec, gpus):
    """Run `spec` under an in-process keeper whose fake child exits 0 at once, then its after_end."""
    from rltui.jobs.records import StateFile, write_spec, write_state
    from rltui.jobs.keeper import Keeper, after_end

    class Done:
        pid = 4_000_000  # never a real pid: signal_group below is a no-op

        def poll(self):
            return 0

        def signal_group(self, sig):
            pass

    write_spec(layout, spec)
    write_state(layout, spec.id, StateFile(JobState.STARTING, gpus=gpus, run=spec.run))
    keeper = Keeper(layout, spec.id, spawner=lambda *a: Done(), sampler=FakeSampler(),
                    sleep=lambda dt: None, on_end=after_end)
    assert keeper.run() is JobState.SUCCEEDED
    return keeper


def test_a_job_that_ends_starts_the_queued_job_waiting_for_its_gpu(layout, monkeypatch):
    from rltui import gpu

    sampler = FakeSampler(fake_gpus(1))
    monkeypatch.setattr(gpu, "_default", sampler)  # the sampler after_end's start_queued uses
    holder = fake_train_spec(layout, steps=1).with_changes(gpus=(0,), gpu_count=1)
    waiting = control.launch(layout, fake_train_spec(layout, steps=1).with_changes(gpus=(0,), gpu_count=1),
                          FakeSampler(fake_gpus(1, used_mib=60000)))
    assert waiting.phase is JobState.QUEUED
    keeper = _ended_keeper(layout, holder, [0])
    assert read_state(layout, waiting.id).gpus == [0]
    assert f"started queued job {waiting.id}" in control.read_log(layout, holder.id)
    assert wait_final(layout, waiting.id).state is JobState.SUCCEEDED
    assert keeper.state.state is JobState.SUCCEEDED


def test_a_follow_up_eval_runs_on_the_first_gpu_the_training_held(layout, monkeypatch):
    from rltui import gpu
    from rltui.jobs.records import FollowUp, JobKind

    monkeypatch.setattr(gpu, "_default", FakeSampler(fake_gpus(3, used_mib=[0, 30000, 30000])))
    spec = fake_train_spec(layout).with_changes(followups=(FollowUp(JobKind.EVAL, "arith"),))
    _ended_keeper(layout, spec, [2, 1])
    (follow_id,) = read_state(layout, spec.id).followup_jobs
    follow = control.read_job(layout, follow_id)
    assert follow.spec.gpus == (2,) and follow.state.gpus == [2]  # NVML still shows its memory
    control.kill(layout, follow_id)
    wait_final(layout, follow_id)
