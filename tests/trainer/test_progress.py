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
    clock.now += 5.0  # two steps (2 and 3) in 5 s
    progress.step(RECORD)
    assert out.getvalue() == ("step 3/11  reward 0.412  loss 0.02134  kl 0.0012  lr 1.00e-05  "
                              "2.50 s/step  ETA 20s\n")


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
