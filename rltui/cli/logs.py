"""`rltui --batch logs JOB [-f] [--tail N]`: print a job's output (stdout and stderr, keeper notes).

With -f it keeps printing until the job ends (rltui.cli.follow), then prints the summary line
on stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rltui.cli.follow import summary_line, wait_and_stream
from rltui.errors import UsageError
from rltui.jobs import control
from rltui.runs.localfs import Layout


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("logs", parents=parents, help="print a job's output",
                              description="Print a job's output (stdout and stderr, keeper notes).")
    p.add_argument("job", metavar="JOB")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    p.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
    p.set_defaults(func=cmd_logs)


def cmd_logs(args: argparse.Namespace) -> int:
    layout = Layout(args.root)
    if args.tail is not None and args.tail < 0:
        raise UsageError(f"bad --tail: {args.tail!r} (must be >= 0)")
    text = control.read_log(layout, args.job, tail_lines=args.tail)
    sys.stdout.write(text)
    sys.stdout.flush()
    if args.follow:
        job = wait_and_stream(layout, args.job, sys.stdout, follow_only=True,
                              offset=len(text.encode("utf-8")) if args.tail is None else _log_size(layout, args.job))
        sys.stderr.write(summary_line(job) + "\n")
    return 0


def _log_size(layout: Layout, job_id: str) -> int:
    try:
        return layout.job_log(job_id).stat().st_size
    except FileNotFoundError:
        return 0
