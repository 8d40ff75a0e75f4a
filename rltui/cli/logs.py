"""`rltui --batch logs JOB|RUN [-f] [--tail N] [--raw]`: print a job's output (stdout and stderr,
keeper notes).

The output is shown without escape sequences or control characters (rltui.text): a child
process cannot retitle or clear the terminal through it. `--raw` passes the bytes through as
written. `--tail N` reads the file backwards from its end (rltui.jobs.output), so a large log
costs no more than the lines shown. With -f it keeps printing until the job ends
(rltui.cli.follow), then prints the summary line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rltui.cli.follow import summary_line, wait_and_stream
from rltui.errors import UsageError
from rltui.jobs import control
from rltui.jobs.output import iter_chunks, open_output, shown, tail_bytes
from rltui.runs.localfs import Layout


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("logs", parents=parents, help="print a job's output",
                              description="Print a job's output (stdout and stderr, keeper notes).")
    p.add_argument("job", metavar="JOB|RUN",
                   help="a job id, or a run's name: its active job (of several, its training job), "
                        "else its newest")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    p.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
    p.add_argument("--raw", action="store_true",
                   help="the bytes as written, escape sequences included (default: made safe to show)")
    p.set_defaults(func=cmd_logs)


def cmd_logs(args: argparse.Namespace) -> int:
    layout = Layout(args.root)
    if args.tail is not None and args.tail < 0:
        raise UsageError(f"bad --tail: {args.tail!r} (must be >= 0)")
    job_id = control.job_for(layout, args.job)  # one line for an unknown job or run
    if job_id != args.job:
        sys.stderr.write(f"rltui: run {args.job}: job {job_id}\n")
        sys.stderr.flush()
    with open_output(layout, job_id) as f:
        if args.tail is not None:
            _write(tail_bytes(f, args.tail), args.raw)
            end = f.seek(0, 2)
        else:
            end = 0
            for piece in iter_chunks(f):
                _write(piece, args.raw)
                end += len(piece)
    sys.stdout.flush()
    if args.follow:
        job = wait_and_stream(layout, job_id, sys.stdout, follow_only=True, offset=end, raw=args.raw)
        sys.stderr.write(summary_line(job) + "\n")
    return 0


def _write(data: bytes, raw: bool) -> None:
    if raw:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
    else:
        sys.stdout.write(shown(data))
