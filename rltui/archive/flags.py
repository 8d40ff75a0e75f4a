"""The archive's flags and their rules: which flags each action takes.

Usage:
    add_arguments(parser)                     # --action, --training-run, --cleanup, ...
    check_flags("backup", training_run="run_...", cleanup=True)   # UsageError if they don't fit

Both entry points (`python -m rltui.sync_to_s3`, `rltui --batch sync`) and the sync job builder
(rltui.jobs.builders.sync_job) check through `check_flags`, so a job is never created that the
archive would refuse. Standard library only.
"""

from __future__ import annotations

import argparse

from rltui.errors import UsageError

ACTIONS = ("backup", "backup-all", "list-backups", "restore", "verify", "follow")
EPILOG = (
    "settings: ~/.lambda_s3.env or $RLTUI_S3_ENV (KEY=VALUE), the environment overriding it: "
    "RLTUI_S3_BUCKET (required, except by --dry-run), RLTUI_S3_PREFIX, AWS_ACCESS_KEY_ID, "
    "AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL_S3, RLTUI_S3_CHECKSUMS=when_required (R2 and other "
    "S3-compatible stores). Exit: 0 done, 1 failed (verify: not in sync), 2 bad input."
)
NEEDS_RUN = ("backup", "restore", "verify", "follow")
_TRANSFERS = ("backup", "backup-all", "follow")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--action", required=True, choices=ACTIONS, help="what to do")
    p.add_argument("--training-run", metavar="RUN", help="the run (backup, restore, verify)")
    p.add_argument("--cleanup", action="store_true",
                   help="after the backup, delete local files confirmed in the bucket")
    p.add_argument("--keep-latest", action="store_true",
                   help="with --cleanup: keep the latest checkpoint, config.yaml, status.json and logs")
    p.add_argument("--dry-run", action="store_true",
                   help="say what would be uploaded (each file, its size, the total) and deleted; change "
                        "nothing. Compares with the bucket when it answers; without bucket settings, "
                        "or with the endpoint out of reach, every file counts as not yet uploaded")
    p.add_argument("--force", action="store_true", help="restore: overwrite local files that differ from the backup")
    p.add_argument("--json", action="store_true", help="list-backups: print JSON")
    live = p.add_argument_group("live archive (--action follow: back a run up while it trains)")
    live.add_argument("--follow-job", metavar="JOB_ID",
                      help="follow: keep going until this training job ends, then a last pass")
    live.add_argument("--interval", type=float, default=None, metavar="S",
                      help="follow: seconds between looks at the run (default 10)")
    live.add_argument("--keep-every", type=int, default=None, metavar="N",
                      help="follow: never delete a local checkpoint whose step is a multiple of N")
    live.add_argument("--local-budget", default=None, metavar="SIZE",
                      help="follow: delete the oldest archived local checkpoints while the run's "
                           "checkpoints take more than SIZE (e.g. 50G)")
    live.add_argument("--bandwidth", default=None, metavar="RATE",
                      help="backup, backup-all, follow: cap uploads at RATE bytes/s (e.g. 20M)")


def check_flags(action: str, *, training_run: str | None = None, cleanup: bool = False,
                keep_latest: bool = False, dry_run: bool = False, force: bool = False,
                json: bool = False, follow_job: str | None = None, interval: float | None = None,
                keep_every: int | None = None, local_budget: str | None = None,
                bandwidth: str | None = None) -> None:
    """UsageError naming the first flag that does not apply to `action`."""
    if action not in ACTIONS:
        raise UsageError(f"bad --action: {action!r} (choose from {', '.join(ACTIONS)})")
    if action in NEEDS_RUN and not training_run:
        raise UsageError(f"--action {action} needs --training-run RUN")
    if action not in NEEDS_RUN and training_run:
        raise UsageError(f"--training-run does not apply to --action {action}")
    if cleanup and action not in ("backup", "backup-all"):
        raise UsageError(f"--cleanup does not apply to --action {action}")
    if keep_latest and not cleanup and action != "follow":
        raise UsageError("--keep-latest needs --cleanup (or --action follow)")
    for flag, value in (("--follow-job", follow_job), ("--interval", interval),
                        ("--keep-every", keep_every), ("--local-budget", local_budget)):
        if value is not None and action != "follow":
            raise UsageError(f"{flag} does not apply to --action {action}")
    if bandwidth is not None and action not in _TRANSFERS:
        raise UsageError(f"--bandwidth does not apply to --action {action}")
    if interval is not None and not interval > 0:
        raise UsageError(f"bad --interval: {interval!r} (seconds, more than 0)")
    if keep_every is not None and keep_every < 1:
        raise UsageError(f"bad --keep-every: {keep_every!r} (a step count, 1 or more)")
    from rltui.archive.sizes import parse_size

    if local_budget is not None:
        parse_size(local_budget, "--local-budget")
    if bandwidth is not None:
        parse_size(bandwidth, "--bandwidth")
    if dry_run and action not in ("backup", "backup-all"):
        raise UsageError(f"--dry-run does not apply to --action {action}")
    if force and action != "restore":
        raise UsageError(f"--force does not apply to --action {action}")
    if json and action != "list-backups":
        raise UsageError(f"--json does not apply to --action {action}")


def check_args(args: argparse.Namespace) -> None:
    """`check_flags` on parsed flags (add_arguments' names)."""
    check_flags(args.action, training_run=args.training_run, cleanup=args.cleanup,
                keep_latest=args.keep_latest, dry_run=args.dry_run, force=args.force, json=args.json,
                follow_job=args.follow_job, interval=args.interval, keep_every=args.keep_every,
                local_budget=args.local_budget, bandwidth=args.bandwidth)
