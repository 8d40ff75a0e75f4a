"""`rltui --batch sync --action ACTION ...`: back up, list, restore and verify runs in S3.

The same flags and work as `python -m rltui.sync_to_s3` (rltui/sync_to_s3.py, the standalone
entry point, which calls `run` here). The flags and their rules are the archive's
(rltui.archive.flags); the archive itself (boto3) is imported only when a command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from typing import Any, Iterator

from rltui.archive.flags import EPILOG, add_arguments, check_args
from rltui.archive.sizes import parse_size


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "sync", parents=parents, help="back up, list, restore and verify runs in S3",
        description="Back up, list, restore and verify runs in S3-compatible storage.",
        epilog=EPILOG,
    )
    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Do the archive action the parsed flags ask for; the exit status."""
    from rltui.archive.settings import load_settings, redacted_output
    from rltui.runs.localfs import Layout, validate_run_name

    check_args(args)
    if args.training_run:
        validate_run_name(args.training_run)
    settings = load_settings()
    for warning in settings.warnings:
        sys.stderr.write(warning + "\n")
    layout = Layout(args.root)
    with redacted_output(settings), _term_interrupts(args.action):
        return _run(args, layout, settings)


@contextlib.contextmanager
def _term_interrupts(action: str) -> Iterator[None]:
    """SIGTERM (a job's stop, a plain `kill`) ends a transfer as Ctrl-C does: uploads in flight
    are cancelled and their multipart uploads aborted, not left in the bucket. (`follow` keeps
    its own handler: a stop there is one last pass.)"""
    if action == "follow":
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        before = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _run(args: argparse.Namespace, layout: Any, settings: Any) -> int:
    from rltui.archive import backup, report, restore
    from rltui.archive.settings import make_client
    from rltui.archive.store import RemoteStore, translate

    try:
        store = RemoteStore(make_client(settings), settings)
        if args.bandwidth:
            store.max_bandwidth = parse_size(args.bandwidth, "--bandwidth")
        if args.action == "backup":
            backup.backup_run(layout, store, args.training_run, cleanup=args.cleanup,
                              keep_latest=args.keep_latest, dry_run=args.dry_run)
        elif args.action == "backup-all":
            backup.backup_all(layout, store, cleanup=args.cleanup, keep_latest=args.keep_latest,
                              dry_run=args.dry_run)
        elif args.action == "list-backups":
            infos = report.list_backups(store)
            if args.json:
                print(json.dumps([b.to_json() for b in infos], indent=2))
            else:
                sys.stdout.write(report.format_backups(infos, store.url(settings.prefix)))
                sys.stdout.write(report.format_unfinished(
                    store.unfinished_uploads(), f"{settings.prefix}runs/", time.time()))
        elif args.action == "follow":
            _follow(layout, store, args)
        elif args.action == "restore":
            restore.restore_run(layout, store, args.training_run, force=args.force)
        else:
            res = report.verify_run(layout, store, args.training_run)
            sys.stdout.write(report.format_verify(res))
            return 0 if res.in_sync else 1
    except KeyboardInterrupt:
        raise
    except Exception as e:
        raise translate(e, settings, args.action) from None
    return 0


def _follow(layout: Any, store: Any, args: argparse.Namespace) -> None:
    """The live archive of one run until its training job ends (rltui.archive.follow)."""
    from rltui.archive.follow import DEFAULT_INTERVAL_S, Follower, Retention

    budget = parse_size(args.local_budget, "--local-budget") if args.local_budget else None
    retention = Retention(keep_latest=args.keep_latest, keep_every=args.keep_every, local_budget=budget)
    sys.stdout.write(f"{args.training_run}: live archive to {store.url(store.run_prefix(args.training_run))}"
                     + (f", until job {args.follow_job} ends" if args.follow_job else "") + "\n")
    sys.stdout.flush()
    follower = Follower(layout, store, args.training_run, job=args.follow_job,
                        interval_s=args.interval or DEFAULT_INTERVAL_S, retention=retention)
    signal.signal(signal.SIGTERM, follower.request_stop)  # a stop: one last pass, then exit 0
    _yield_to_training()
    follower.run_until_job_ends()


def _yield_to_training() -> None:
    """The live archive is background work: it runs at a lower CPU and I/O priority than the
    trainer beside it (nice 10; the idle-ish best-effort I/O class 7 where Linux allows it)."""
    try:
        os.nice(10)
    except OSError:
        pass
    try:  # ioprio_set(IOPRIO_WHO_PROCESS, self, best-effort class 2, level 7): no stdlib wrapper
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        nr = {"x86_64": 251, "aarch64": 30}.get(os.uname().machine)
        if nr is not None:
            libc.syscall(nr, 1, 0, (2 << 13) | 7)
    except (OSError, AttributeError):
        pass
