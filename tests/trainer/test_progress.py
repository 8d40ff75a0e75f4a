"""The trainer's progress output: plain lines off a terminal, a tqdm bar on one."""

from __future__ import annotations

import io

from trainer.progress import Progress, format_duration

RECORD = {"step": 3, "reward_mean": 0.4125, "loss": 0.02134, "kl": 0.0012, "learning_rate": 1e-5,
          "grad_norm": 0.5}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_each_logged_step_is_one_line_with_the_numbers_read_first():
    out, clock = io.StringIO(), Clock()
    progress = Progress(start=1, target=11, stream=out, clock=clock)
    clock.now += 90.0  # step 2, the session's first: the warm-up
    progress.finished(2)
    clock.now += 2.5  # step 3
    progress.finished(3)
    progress.step(RECORD)
    assert out.getvalue() == ("step 3/11  reward 0.412  loss 0.02134  kl 0.0012  lr 1.00e-05  "
                              "2.50 s/step  ETA 20s\n")


def test_the_first_steps_warm_up_is_left_out_of_the_rate_and_its_line_gives_its_own_time():
    out, clock = io.StringIO(), Clock()
    progress = Progress(start=0, target=100, stream=out, clock=clock)
    clock.now += 96.2  # compiles, timings and graph captures
    progress.step(dict(RECORD, step=1))  # a caller that logs without saying `finished` first
    for step in range(2, 11):
        clock.now += 1.4
        progress.finished(step)
    progress.step(dict(RECORD, step=10))  # log_every 10: the rate is over steps 2-10 alone
    first, tenth = out.getvalue().splitlines()
    assert first.endswith("lr 1.00e-05  first step 96.2 s (warm-up), ETA from the next")
    assert tenth.endswith("1.40 s/step  ETA 2m06s")  # 90 steps x 1.4 s; with step 1 counted in, 17m


def test_a_run_logged_every_ten_steps_rates_from_its_first_step_not_its_first_line():
    out, clock = io.StringIO(), Clock()
    progress = Progress(start=40, target=60, stream=out, clock=clock)
    clock.now += 30.0
    progress.finished(41)
    for step in range(42, 51):
        clock.now += 2.0
        progress.finished(step)
    progress.step(dict(RECORD, step=50))
    assert out.getvalue().endswith("2.00 s/step  ETA 20s\n")


def test_a_gpu_sessions_first_step_is_announced_as_the_warm_up_and_a_cpus_is_not():
    out = io.StringIO()
    Progress(start=40, target=60, stream=out).warming_up(on_gpu=True)
    assert out.getvalue().startswith("step 41/60 under way: a session's first step on a GPU compiles")
    quiet = io.StringIO()
    Progress(start=0, target=10, stream=quiet).warming_up(on_gpu=False)  # a CPU's first step is no wait
    Progress(start=10, target=10, stream=quiet).warming_up(on_gpu=True)  # no step left to take
    Progress(start=0, target=10, stream=quiet, enabled=False).warming_up(on_gpu=True)  # not rank 0
    assert quiet.getvalue() == ""


def test_a_disabled_progress_prints_nothing():
    out = io.StringIO()
    Progress(start=0, target=5, stream=out, enabled=False).step(RECORD)
    assert out.getvalue() == ""


def test_on_a_terminal_a_tqdm_bar_shows_the_step_and_numbers():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    progress = Progress(start=0, target=10, stream=out)
    progress.step(RECORD)
    progress.close()
    text = out.getvalue()
    assert "3/10" in text and "reward=0.412" in text and "loss=0.02134" in text
    assert "\n" not in text.rstrip("\n")  # one redrawn line, not a line per step


def test_durations_read_as_hours_minutes_seconds():
    assert [format_duration(s) for s in (0, 59, 61, 3600 * 2 + 65)] == ["0s", "59s", "1m01s", "2h01m"]
