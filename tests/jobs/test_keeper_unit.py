"""The keeper's state machine with an injected clock, sleep and spawner: no real child processes,
no sleeping. Files (job.json, state.json, status.json, checkpoints) are real, in a tmp root."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from rltui.jobs import control
from rltui.runs import checkpoints, localfs
from rltui.gpu import FakeSampler, fake_gpus
from rltui.jobs.records import JobKind, JobState, read_state, write_spec
from rltui.jobs.keeper import Keeper
from rltui.jobs.policy import RestartSettings

from jobs_helpers import fake_train_spec


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, dt: float) -> None:
        self.now += dt


class FakeChild:
    """Ends with `rc` after `polls` polls; SIGKILL ends it at once; SIGTERM too when `obeys_term`."""

    def __init__(self, pid: int, rc: int | None, polls: int, on_poll=None, obeys_term=True) -> None:
        self.pid, self.rc, self.polls, self.on_poll, self.obeys_term = pid, rc, polls, on_poll, obeys_term
        self.signals: list[int] = []
        self.ended: int | None = None

    def poll(self):
        if self.ended is not None:
            return self.ended
        if self.on_poll:
            self.on_poll()
        self.polls -= 1
        if self.rc is not None and self.polls <= 0:
            self.ended = self.rc
        return self.ended

    def signal_group(self, sig: int) -> None:
        self.signals.append(sig)
        if self.ended is None and (sig == signal.SIGKILL or (sig == signal.SIGTERM and self.obeys_term)):
            self.ended = -sig if sig == signal.SIGKILL else 0


class Spawner:
    def __init__(self, children: list[FakeChild]) -> None:
        self.children = children
        self.argvs: list[list[str]] = []

    def __call__(self, argv, env, cwd, log_path):
        self.argvs.append(list(argv))
        self.envs = getattr(self, "envs", []) + [env]
        return self.children[len(self.argvs) - 1]


def make_keeper(layout, spec, children, clock=None):
    write_spec(layout, spec)
    clock = clock or Clock()
    spawner = Spawner(children)
    keeper = Keeper(layout, spec.id, clock=clock, sleep=clock.sleep, spawner=spawner,
                    sampler=FakeSampler(), poll_s=0.5)
    return keeper, spawner, clock


def checkpoint(layout, run, step, target=10):
    ts = layout.training_state(run)
    st = checkpoints.staging_dir(ts, step)
    (st / "w.bin").write_bytes(b"x" * step)
    checkpoints.finalize_checkpoint(st, layout.step_dir(run, step), {"step": step, "target_step": target})
    checkpoints.update_step_latest(ts, step)


def status(layout, run, step, phase="training", target=10):
    localfs.write_json_atomic(layout.run_status(run), {
        "run": run, "step": step, "target_step": target, "phase": phase, "time": time.time()})


def test_a_clean_run_goes_starting_running_succeeded(layout):
    spec = fake_train_spec(layout)
    keeper, spawner, _ = make_keeper(layout, spec, [FakeChild(101, 0, 3)])
    assert keeper.run() is JobState.SUCCEEDED
    state = read_state(layout, spec.id)
    assert state.state is JobState.SUCCEEDED and state.exit_code == 0 and state.restarts == 0
    assert state.child_pid == 101 and spawner.argvs == [list(spec.argv)]


def test_a_crash_resumes_from_the_latest_checkpoint_after_the_backoff(layout):
    spec = fake_train_spec(layout, restart=RestartSettings(auto_resume=True, backoff_s=30))
    checkpoint(layout, spec.run, 4)
    keeper, spawner, clock = make_keeper(layout, spec, [FakeChild(1, -9, 2), FakeChild(2, 0, 2)])
    assert keeper.run() is JobState.SUCCEEDED
    assert spawner.argvs[1] == [*spec.resume_argv[:-1], "4"]  # --from-step latest, resolved once: 4
    assert clock.now >= 30  # the backoff was waited out, on the injected clock
    state = read_state(layout, spec.id)
    assert state.restarts == 1
    assert any("killed by SIGKILL; restart 1 from checkpoint step 4 in 30s" in r for r in state.reasons)


def test_a_training_crash_before_any_checkpoint_fails_with_the_reason(layout):
    spec = fake_train_spec(layout, restart=RestartSettings(auto_resume=True, backoff_s=0))
    keeper, spawner, _ = make_keeper(layout, spec, [FakeChild(1, 1, 1)])
    assert keeper.run() is JobState.FAILED
    assert len(spawner.argvs) == 1
    assert "no complete checkpoint to resume from" in read_state(layout, spec.id).last_reason


def test_a_job_without_a_resume_command_runs_its_command_again(layout):
    spec = fake_train_spec(layout, restart=RestartSettings(auto_resume=True, backoff_s=0))
    spec = spec.with_changes(kind=JobKind.SYNC, run=None, resume_argv=None)
    keeper, spawner, _ = make_keeper(layout, spec, [FakeChild(1, 1, 1), FakeChild(2, 0, 1)])
    assert keeper.run() is JobState.SUCCEEDED
    assert spawner.argvs == [list(spec.argv), list(spec.argv)]


def test_a_resume_past_the_checkpoints_target_gets_additional_steps(layout):
    spec = fake_train_spec(layout, restart=RestartSettings(auto_resume=True, backoff_s=0))
    checkpoint(layout, spec.run, 4, target=10)
    status(layout, spec.run, 5, target=15)  # the session was asked to go further than step 10
    keeper, spawner, _ = make_keeper(layout, spec, [FakeChild(1, -9, 1), FakeChild(2, 0, 1)])
    keeper.run()
    # resume_training ends at max(checkpoint's target 10, step 4) + K: K = 5 reaches 15
    assert spawner.argvs[1] == [*spec.resume_argv[:-1], "4", "--additional-steps", "5"]


def test_a_crash_after_the_final_checkpoint_counts_as_success(layout):
    spec = fake_train_spec(layout, restart=RestartSettings(auto_resume=True))
    checkpoint(layout, spec.run, 10, target=10)
    status(layout, spec.run, 10, target=10, phase="saving")
    keeper, spawner, _ = make_keeper(layout, spec, [FakeChild(1, -11, 1)])
    assert keeper.run() is JobState.SUCCEEDED
    assert len(spawner.argvs) == 1
    state = read_state(layout, spec.id)
    assert "after its final checkpoint (step 10)" in state.last_reason and state.restarts == 0


def test_no_progress_for_the_hang_timeout_kills_the_group_and_resumes(layout):
    spec = fake_train_spec(layout, restart=RestartSettings(auto_resume=True, backoff_s=0, hang_timeout_s=60))
    checkpoint(layout, spec.run, 2)
    status(layout, spec.run, 2)
    hung = FakeChild(1, None, 0)  # never ends by itself, never writes status.json
    keeper, spawner, clock = make_keeper(layout, spec, [hung, FakeChild(2, 0, 1)])
    assert keeper.run() is JobState.SUCCEEDED
    assert hung.signals[0] == signal.SIGKILL
    assert 60 < clock.now < 62
    state = read_state(layout, spec.id)
    assert state.restarts == 1 and any(r.startswith("hung") for r in state.reasons)


def test_progress_keeps_a_slow_trainer_alive_and_saving_gets_the_longer_allowance(layout):
    spec = fake_train_spec(layout, restart=RestartSettings(
        auto_resume=True, hang_timeout_s=10, save_hang_timeout_s=100))
    steps = iter(range(1, 1000))
    clock = Clock()

    def progress():  # a new step every 5 s for 50 s, then one long save of 90 s
        if clock.now < 50 and clock.now % 5 == 0:
            status(layout, spec.run, next(steps))
        elif 50 <= clock.now < 50.5:
            status(layout, spec.run, 99, phase="saving")

    child = FakeChild(1, 0, 280, on_poll=progress)  # 140 s of polls at 0.5 s
    keeper, spawner, _ = make_keeper(layout, spec, [child], clock)
    assert keeper.run() is JobState.SUCCEEDED
    assert child.signals == [signal.SIGKILL]  # only the cleanup of leftovers after its exit


def test_stop_asks_the_trainer_first_then_sigterm_then_sigkill(layout):
    spec = fake_train_spec(layout, restart=RestartSettings(auto_resume=True, stop_grace_s=100, kill_grace_s=20))
    stubborn = FakeChild(1, None, 0, obeys_term=False)
    keeper, _, clock = make_keeper(layout, spec, [stubborn])
    stubborn.on_poll = lambda: keeper.request_stop() if clock.now == 5 else None
    assert keeper.run() is JobState.STOPPED
    assert layout.stop_request(spec.run).exists()
    assert stubborn.signals[:2] == [signal.SIGTERM, signal.SIGKILL]
    assert 125 <= clock.now <= 127  # 5 s running + 100 s grace + 20 s after SIGTERM
    reasons = read_state(layout, spec.id).reasons
    assert any(r.startswith("stop requested: asked the trainer") for r in reasons)
    assert reasons[-1] == "stopped by the user"


def test_a_stop_during_the_backoff_ends_stopped_without_restarting(layout):
    spec = fake_train_spec(layout, restart=RestartSettings(auto_resume=True, backoff_s=100))
    checkpoint(layout, spec.run, 1)
    clock = Clock()
    keeper, spawner, _ = make_keeper(layout, spec, [FakeChild(1, -9, 1)], clock)
    original_sleep = clock.sleep

    def sleep(dt):
        original_sleep(dt)
        if clock.now > 10:
            keeper.request_stop()

    keeper.sleep = sleep
    assert keeper.run() is JobState.STOPPED
    assert len(spawner.argvs) == 1


def test_kill_sends_sigkill_at_once_and_ends_stopped(layout):
    spec = fake_train_spec(layout, restart=RestartSettings(auto_resume=True))
    child = FakeChild(1, None, 0)
    keeper, _, clock = make_keeper(layout, spec, [child])
    child.on_poll = lambda: keeper.request_kill() if clock.now == 1 else None
    assert keeper.run() is JobState.STOPPED
    assert child.signals[0] == signal.SIGKILL and clock.now < 2


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_a_stop_or_kill_signal_and_the_childs_exit_end_the_keepers_poll_at_once(layout, sig):
    # The keeper's own sleep and real signals: the user's (`rltui stop` or `kill`, sent from
    # another thread as it would be from another process), then the SIGCHLD the kernel sends when
    # the child ends. The poll is an hour: a keeper that slept it out would not end before this
    # test's timeout.
    spec = fake_train_spec(layout, restart=RestartSettings(auto_resume=True, stop_grace_s=3600))
    write_spec(layout, spec)
    child = FakeChild(1, None, 0)
    stop_file = layout.stop_request(spec.run)
    keeper = Keeper(layout, spec.id, spawner=Spawner([child]), sampler=FakeSampler(), poll_s=3600)
    asked = stop_file.exists if sig == signal.SIGTERM else lambda: signal.SIGKILL in child.signals

    def user_then_child():
        time.sleep(0.5)
        os.kill(os.getpid(), sig)
        while not asked():  # the keeper acted on the signal inside its hour-long sleep
            time.sleep(0.05)
        child.ended = 0 if sig == signal.SIGTERM else -signal.SIGKILL  # the trainer exits...
        os.kill(os.getpid(), signal.SIGCHLD)  # ...and the kernel tells its parent

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP, signal.SIGCHLD)
    saved = {s: signal.getsignal(s) for s in handled}
    saved_fd = signal.set_wakeup_fd(-1)
    keeper.install_signal_handlers()
    sender = threading.Thread(target=user_then_child, daemon=True)
    try:
        sender.start()
        assert keeper.run() is JobState.STOPPED
    finally:
        signal.set_wakeup_fd(saved_fd)
        for s, handler in saved.items():
            signal.signal(s, handler)
    sender.join(5)
    assert not sender.is_alive()
    reason = read_state(layout, spec.id).last_reason
    if sig == signal.SIGTERM:  # asked through the stop file: the trainer saved and exited
        assert stop_file.exists() and child.signals == [signal.SIGKILL]  # only the group's leftovers
        assert reason == "stopped by the user"
    else:
        assert child.signals[0] == signal.SIGKILL and not stop_file.exists()
        assert reason == "killed by the user (SIGKILL to the group)"


def test_the_job_gets_its_gpus_as_cuda_visible_devices_and_usage_is_accounted(layout):
    spec = fake_train_spec(layout)
    write_spec(layout, spec)
    from rltui.jobs.records import StateFile, write_state

    write_state(layout, spec.id, StateFile(JobState.STARTING, gpus=[1]))
    clock = Clock()
    spawner = Spawner([FakeChild(1, 0, 20)])
    keeper = Keeper(layout, spec.id, clock=clock, sleep=clock.sleep, spawner=spawner,
                    sampler=FakeSampler(fake_gpus(2, used_mib=[100, 5000], util_pct=50, power_w=200)),
                    poll_s=0.5)
    keeper.run()
    assert spawner.envs[0]["CUDA_VISIBLE_DEVICES"] == "1"
    usage = read_state(layout, spec.id).usage
    assert 9 <= usage.gpu_seconds <= 11  # one GPU for the 10 s the fake child ran
    assert usage.peak_gpu_mem_mib == 5000 and usage.mean_gpu_util == 50
    assert 1800 <= usage.energy_j <= 2200 and usage.cost is None


def test_auto_resume_turned_on_after_launch_takes_effect_at_the_next_crash(layout):

    spec = fake_train_spec(layout, restart=RestartSettings(auto_resume=False, backoff_s=0))
    checkpoint(layout, spec.run, 3)
    keeper, spawner, _ = make_keeper(layout, spec, [FakeChild(1, -9, 1), FakeChild(2, 0, 1)])
    from rltui.jobs.records import StateFile, write_state

    write_state(layout, spec.id, StateFile(JobState.RUNNING, run=spec.run))
    assert control.toggle_auto_resume(layout, spec.id) is True
    assert keeper.run() is JobState.SUCCEEDED and len(spawner.argvs) == 2
    assert read_spec_auto_resume(layout, spec.id) is False  # job.json itself is never rewritten


def read_spec_auto_resume(layout, job_id):
    from rltui.jobs.records import read_spec

    return read_spec(layout, job_id).restart.auto_resume


def test_auto_resume_cannot_be_toggled_on_an_ended_or_non_training_job(layout):
    import pytest

    from rltui.errors import UsageError
    from rltui.jobs.records import StateFile, write_state

    spec = fake_train_spec(layout)
    write_spec(layout, spec)
    write_state(layout, spec.id, StateFile(JobState.SUCCEEDED))
    with pytest.raises(UsageError, match="already ended"):
        control.toggle_auto_resume(layout, spec.id)
    sync = spec.with_changes(id="sync-job", kind=JobKind.SYNC)
    write_spec(layout, sync)
    with pytest.raises(UsageError, match="not a training job"):
        control.toggle_auto_resume(layout, "sync-job")


def eval_status(layout, run, dataset, pid, phase="evaluating", done=0):
    localfs.write_json_atomic(layout.eval_status(run, dataset), {
        "run": run, "dataset": dataset, "phase": phase, "pid": pid, "time": time.time(),
        "current_step": 1, "completions_done": done})


def eval_spec(layout, hang=10.0):
    spec = fake_train_spec(layout)
    return spec.with_changes(kind=JobKind.EVAL, resume_argv=None, restart=RestartSettings(
        hang_timeout_s=hang, save_hang_timeout_s=3 * hang))


def test_an_eval_that_stops_making_progress_is_killed_and_fails_as_hung(layout):
    spec = eval_spec(layout)
    clock = Clock()
    batches = iter(range(1, 1000))

    def progress():  # its own status: loading for 25 s, then a batch every 5 s until t=60
        if clock.now < 25:
            eval_status(layout, spec.run, "arith", 7, phase="loading")
        elif clock.now < 60 and clock.now % 5 == 0:
            eval_status(layout, spec.run, "arith", 7, done=next(batches))

    child = FakeChild(7, None, 0, on_poll=progress)  # never ends by itself
    keeper, _, clock = make_keeper(layout, spec, [child], clock)
    assert keeper.run() is JobState.FAILED
    assert child.signals[0] == signal.SIGKILL
    assert 65 < clock.now < 72  # last progress at 55 s, then 10 s of nothing; loading got 30 s
    state = read_state(layout, spec.id)
    assert state.last_reason.startswith("hung") and state.restarts == 0
    assert "no progress in eval_status.json" in (layout.job_dir(spec.id) / "output.log").read_text()


def test_another_evaluations_progress_does_not_count_for_this_job(layout):
    spec = eval_spec(layout)
    eval_status(layout, spec.run, "arith", 7)  # this job's process, stuck from the start
    clock = Clock()
    others = iter(range(1, 1000))

    def other():  # an evaluation of the same run on another dataset, by another process
        eval_status(layout, spec.run, "gsm8k", 99, done=next(others))

    child = FakeChild(7, None, 0, on_poll=other)
    keeper, _, clock = make_keeper(layout, spec, [child], clock)
    assert keeper.run() is JobState.FAILED
    assert 10 < clock.now < 12
    assert read_state(layout, spec.id).last_reason.startswith("hung")


def test_before_its_first_status_a_job_gets_the_longer_allowance(layout):
    spec = eval_spec(layout)  # 10 s, 30 s for start-up and loading
    child = FakeChild(7, None, 0)  # never writes eval_status.json
    keeper, _, clock = make_keeper(layout, spec, [child])
    assert keeper.run() is JobState.FAILED
    assert 30 < clock.now < 32
