"""`rltui --batch supervise [--interval S] [--once]`: keep jobs going (rltui.jobs.supervise).

Each pass marks jobs whose keeper died as lost, resumes lost training jobs whose policy asks for
it (after a reboot too) and starts queued jobs when GPUs free up. Put it under systemd or tmux.
"""

from __future__ import annotations

import argparse
from typing import Any

from rltui.errors import UsageError
from rltui.runs.localfs import Layout


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "supervise", parents=parents, help="keep jobs going: reconcile, auto-resume, start queued",
        description="Run until stopped: mark jobs whose keeper died as lost, resume lost training "
                    "jobs whose policy asks for it (after a reboot too), start queued jobs when "
                    "GPUs free up. Put it under systemd or tmux.")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between passes (default 10)")
    p.add_argument("--once", action="store_true", help="one pass, then exit")
    p.set_defaults(func=cmd_supervise)


def cmd_supervise(args: argparse.Namespace) -> int:
    from rltui.jobs.supervise import supervise

    if args.interval <= 0:
        raise UsageError(f"bad --interval: {args.interval!r} (must be > 0)")
    return supervise(Layout(args.root), interval_s=args.interval, once=args.once)
