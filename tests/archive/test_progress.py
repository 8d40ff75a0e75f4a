"""The progress line: throttled, plain lines off a terminal, rate and ETA, retries tolerated."""

from __future__ import annotations

import io

from rltui.archive.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_plain_lines_are_throttled_and_show_bytes_rate_and_eta():
    clock, out = Clock(), io.StringIO()
    p = Progress("uploading", 100 * 1024 * 1024, stream=out, clock=clock, plain_interval=5.0)
    for _ in range(50):  # 50 MiB over 10 s, a call every 0.2 s
        clock.t += 0.2
        p.add(1024 * 1024)
    p.finish()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # at 5 s and 10 s, not 50
    assert "\r" not in out.getvalue()
    assert lines[-1] == "uploading 50.0 MiB / 100.0 MiB (50%), 5.0 MiB/s, ETA 10s"


def test_negative_counts_from_retried_parts_never_go_below_zero():
    clock, out = Clock(), io.StringIO()
    p = Progress("uploading", 10, stream=out, clock=clock)
    p.add(4)
    p.add(-8)
    assert p.done == 0


def test_on_a_terminal_the_line_is_rewritten_in_place():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    clock, out = Clock(), Tty()
    p = Progress("downloading", 1000, stream=out, clock=clock)
    clock.t += 1
    p.add(500)
    p.finish()
    assert out.getvalue().startswith("\r\x1b[K") and "\n" not in out.getvalue()
