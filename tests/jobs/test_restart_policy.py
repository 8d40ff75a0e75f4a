"""The restart policy as pure logic with an injected clock: no processes, no sleeping."""

from __future__ import annotations

import signal

from rltui.jobs.policy import Action, Ending, RestartPolicy, RestartSettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def policy(**settings) -> tuple[RestartPolicy, Clock]:
    clock = Clock()
    return RestartPolicy(RestartSettings(**{"auto_resume": True, **settings}), clock=clock), clock


KILLED = Ending(signal=signal.SIGKILL)


def test_clean_exit_succeeds_and_phase_stopped_means_stopped():
    p, _ = policy()
    assert p.decide(Ending(exit_code=0, phase="completed"), 5).action is Action.SUCCEED
    assert p.decide(Ending(exit_code=0, phase="stopped"), 5).action is Action.STOP


def test_user_stop_is_never_restarted_whatever_the_exit():
    p, _ = policy()
    d = p.decide(Ending(signal=signal.SIGKILL, user_stop=True), 3)
    assert d.action is Action.STOP and p.restarts == 0


def test_death_by_signal_restarts_with_doubling_capped_backoff():
    p, clock = policy(backoff_s=5, backoff_factor=2, backoff_max_s=15, max_restarts=10)
    delays = []
    for step in range(1, 5):
        d = p.decide(KILLED, step)  # a new checkpoint each time: progress
        assert d.action is Action.RESTART
        delays.append(d.delay_s)
    assert delays == [5, 10, 15, 15]
    assert p.restarts == 4


def test_remaining_wait_follows_the_injected_clock():
    p, clock = policy(backoff_s=5)
    p.decide(KILLED, 1)
    assert p.remaining_wait() == 5
    clock.now += 3
    assert p.remaining_wait() == 2
    clock.now += 10
    assert p.remaining_wait() == 0


def test_max_restarts_exhausted_fails_with_the_reason():
    p, _ = policy(max_restarts=2)
    assert p.decide(KILLED, 1).action is Action.RESTART
    assert p.decide(KILLED, 2).action is Action.RESTART
    d = p.decide(KILLED, 3)
    assert d.action is Action.FAIL
    assert "killed by SIGKILL" in d.reason and "max_restarts" in d.reason


def test_two_restarts_without_a_new_checkpoint_give_up():
    p, _ = policy(max_restarts=10)
    assert p.decide(KILLED, 4).action is Action.RESTART  # the first crash: no restart judged yet
    assert p.decide(KILLED, 4).action is Action.RESTART  # restart 1 made no checkpoint
    d = p.decide(KILLED, 4)  # restart 2 made none either
    assert d.action is Action.FAIL and "no new checkpoint" in d.reason
    assert p.restarts == 2


def test_a_new_checkpoint_resets_the_no_progress_count():
    p, _ = policy(max_restarts=10)
    for latest in (4, 4, 5, 5, 6):
        assert p.decide(KILLED, latest).action is Action.RESTART


def test_no_checkpoint_at_all_counts_as_no_progress():
    p, _ = policy(max_restarts=10)
    assert p.decide(KILLED, None).action is Action.RESTART
    assert p.decide(KILLED, None).action is Action.RESTART
    assert p.decide(KILLED, None).action is Action.FAIL


def test_bad_input_exit_code_is_not_recovered_unless_listed():
    p, _ = policy()
    d = p.decide(Ending(exit_code=2), 3)
    assert d.action is Action.FAIL and "bad input" in d.reason
    p, _ = policy(recover_exit_codes=(2,))
    assert p.decide(Ending(exit_code=2), 3).action is Action.RESTART


def test_recover_exit_codes_do_not_count_against_max_restarts():
    p, _ = policy(max_restarts=1, recover_exit_codes=(75,))
    for step in (1, 2, 3):
        assert p.decide(Ending(exit_code=75), step).action is Action.RESTART
    assert p.counted_restarts == 0 and p.restarts == 3
    assert p.decide(Ending(exit_code=1), 4).action is Action.RESTART
    assert p.decide(Ending(exit_code=1), 5).action is Action.FAIL


def test_hang_is_a_crash():
    p, _ = policy()
    d = p.decide(Ending(signal=signal.SIGKILL, hung=True), 2)
    assert d.action is Action.RESTART and d.reason.startswith("hung")


def test_without_auto_resume_an_abnormal_end_fails_with_what_happened():
    p = RestartPolicy(RestartSettings(auto_resume=False), clock=Clock())
    d = p.decide(Ending(exit_code=1), 3, needs_checkpoint=True)
    assert d.action is Action.FAIL and d.reason.startswith("exit code 1") and "auto-resume is off" in d.reason


def test_a_job_that_cannot_resume_fails_with_the_cause_alone():
    p = RestartPolicy(RestartSettings(auto_resume=False), clock=Clock())
    d = p.decide(Ending(exit_code=1), None, needs_checkpoint=False)  # an eval: nothing to resume
    assert d.action is Action.FAIL and "auto-resume" not in d.reason and d.reason.startswith("exit code 1")
    d = p.decide(Ending(exit_code=2), 3, needs_checkpoint=True)  # bad input: a restart would not help
    assert "auto-resume" not in d.reason


def test_exit_zero_with_phase_failed_is_abnormal():
    p, _ = policy()
    d = p.decide(Ending(exit_code=0, phase="failed"), 2)
    assert d.action is Action.RESTART and "phase failed" in d.reason


def test_settings_round_trip_through_json_and_refuse_negatives():
    s = RestartSettings(auto_resume=True, max_restarts=5, recover_exit_codes=(75, 76))
    assert RestartSettings.from_json(s.to_json()) == s
    try:
        RestartSettings(max_restarts=-1)
    except ValueError as e:
        assert "max_restarts" in str(e)
    else:
        raise AssertionError("negative max_restarts accepted")


def test_a_job_without_checkpoints_retries_up_to_max_restarts_not_the_no_checkpoint_rule():
    p, _ = policy(max_restarts=3, backoff_s=30, backoff_factor=2, backoff_max_s=120)
    failed = Ending(exit_code=1)
    decisions = [p.decide(failed, None, checkpoints=False) for _ in range(4)]
    assert [d.action for d in decisions] == [Action.RESTART] * 3 + [Action.FAIL]
    assert [d.delay_s for d in decisions[:3]] == [30, 60, 120]
    assert decisions[0].reason == "exit code 1; restart 1 of the same command in 30s"
    assert "max_restarts" in decisions[3].reason and "checkpoint" not in decisions[3].reason
    assert p.decide(Ending(exit_code=2), None, checkpoints=False).action is Action.FAIL  # bad input
