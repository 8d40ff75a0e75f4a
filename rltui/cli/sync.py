"""`rltui --batch sync --action ACTION ...`: back up, list, restore and verify runs in S3, as a job.

Usage:
    rltui --batch sync --action backup --training-run RUN [--cleanup [--keep-latest]] [--dry-run]
    rltui --batch sync --action backup-all|list-backups|restore|verify|follow ... [--detach]

Every `rltui --batch sync` is a job, as the TUI's archive form makes one: its flags and settings
are checked here first (bad input: one line, exit 2, nothing written), then a sync job
(rltui.jobs.builders.sync_job: `python -m rltui.sync_to_s3 ...` under a keeper) is launched and
followed as `--batch train` follows its job (rltui.cli.follow): its output streams to stdout
(the keeper's own lines to stderr), Ctrl-C stops the job (it ends `stopped`, exit 130), and the
exit status is the job's. `--detach` prints the job id and returns.

`run` is the work itself, in this process: what the job's `python -m rltui.sync_to_s3`
(rltui/sync_to_s3.py, the standalone entry point) calls. The flags and their rules are the
archive's (rltui.archive.flags); the archive itself (boto3) is imported only when `run` runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from typing import Any, Iterator, TextIO

from rltui.archive.flags import EPILOG, add_arguments, check_args
from rltui.archive.sizes import parse_size

KEEPER_LINE = "[rltui keeper "  # rltui.jobs.keeper's own lines in a job's output.log


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "sync", parents=parents, help="back up, list, restore and verify runs in S3 (a job)",
        description="Back up, list, restore and verify runs in S3-compatible storage, as a job "
                    "that this command follows.",
        epilog=EPILOG,
    )
    add_arguments(p)
    p.add_argument("--detach", action="store_true", help="print the job id and return at once")
    p.set_defaults(func=cmd_sync)


def cmd_sync(args: argparse.Namespace) -> int:
    """`rltui --batch sync`: check, launch a sync job, follow it; the job's exit status."""
    from rltui.jobs import control
    from rltui.runs.localfs import Layout

    layout = Layout(args.root)
    spec = _checked_job(layout, args)
    job = control.launch(layout, spec)
    if args.detach:
        print(job.id)  # alone on stdout, for JOB=$(rltui --batch sync ... --detach)
        sys.stderr.write(f"job {job.id} ({spec.title}); follow it with: rltui --batch logs {job.id} -f\n")
        return 0
    from rltui.cli.follow import summary_line, wait_and_stream

    sys.stderr.write(f"job {job.id} ({spec.title}): {job.phase.value if job.phase else 'unknown'}; "
                     f"output also in {layout.job_log(job.id)}\n")
    job = wait_and_stream(layout, job.id, _KeeperLinesApart(sys.stdout, sys.stderr))
    sys.stderr.write(summary_line(job) + "\n")
    return job.exit_status()


def _checked_job(layout: Any, args: argparse.Namespace) -> Any:
    """The sync job the flags ask for, after every check that needs neither the job nor the
    bucket: flags, run name, root, settings (a dry run needs none), a backup's run being here,
    a cleanup's run not running. UsageError (exit 2) before anything is written."""
    from rltui.archive.settings import load_settings
    from rltui.errors import UsageError
    from rltui.jobs import builders
    from rltui.jobs.records import ArchivePlan
    from rltui.runs.localfs import validate_run_name

    check_args(args)
    run = args.training_run
    if run:
        validate_run_name(run)
    if args.action not in ("restore", "list-backups") and not layout.root.is_dir():
        raise UsageError(f"bad --root: {str(layout.root)!r} (no such folder)")
    settings = load_settings(need_bucket=not args.dry_run)
    if args.json:  # the job's output is the JSON document: its warnings are said here
        for warning in settings.warnings:
            sys.stderr.write(warning + "\n")
    if args.action == "backup":
        from rltui.archive.manifest import run_eval_dirs

        if not layout.run_dir(run).is_dir() and not run_eval_dirs(layout, run):
            raise UsageError(f"bad --training-run: {run!r} (no such run in {layout.training_runs}: "
                             "nothing to back up)")
        if args.cleanup:
            from rltui.archive.running import cleanup_refusal

            why = cleanup_refusal(layout, run)
            if why:
                raise UsageError(f"{why}: refusing to clean it up (stop it, or back up without --cleanup)")
    plan = ArchivePlan(interval_s=args.interval, keep_every=args.keep_every,
                       local_budget=args.local_budget, bandwidth=args.bandwidth)
    return builders.sync_job(layout, args.action, run, cleanup=args.cleanup,
                             keep_latest=args.keep_latest, follow_job=args.follow_job, archive=plan,
                             dry_run=args.dry_run, force=args.force, json=args.json)


class _KeeperLinesApart:
    """The job's output for stdout, the keeper's own lines (starting, ended) for stderr: what a
    script reads from `rltui --batch sync` (a list, JSON) is the archive's output alone."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out, self.err = out, err

    def write(self, text: str) -> int:
        for line in text.splitlines(keepends=True):
            (self.err if line.startswith(KEEPER_LINE) else self.out).write(line)
        return len(text)

    def flush(self) -> None:
        self.out.flush()
        self.err.flush()


def run(args: argparse.Namespace) -> int:
    """Do the archive action the parsed flags ask for; the exit status."""
    from rltui.archive.settings import load_settings, redacted_output
    from rltui.jobs.ownership import JOB_ENV
    from rltui.runs.localfs import Layout, validate_run_name

    check_args(args)
    if args.training_run:
        validate_run_name(args.training_run)
    settings = load_settings(need_bucket=not args.dry_run)
    if not (args.json and os.environ.get(JOB_ENV)):  # `--batch sync --json` said them itself
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
        if args.dry_run:
            from rltui.archive.dry_run import dry_run_store

            store, note = dry_run_store(settings)
            if note:
                sys.stdout.write(note + "\n")
        else:
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
