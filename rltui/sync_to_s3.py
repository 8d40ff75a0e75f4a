"""Back up, list, restore and verify training runs in S3-compatible storage.

Usage:
    python -m rltui.sync_to_s3 --action backup --training-run RUN [--cleanup [--keep-latest]] [--dry-run]
    python -m rltui.sync_to_s3 --action backup-all [--cleanup [--keep-latest]] [--dry-run]
    python -m rltui.sync_to_s3 --action list-backups [--json]
    python -m rltui.sync_to_s3 --action restore --training-run RUN [--force]
    python -m rltui.sync_to_s3 --action verify --training-run RUN
    (the same flags as `rltui --batch sync ...`; `--root DIR` picks the localfs root)

Settings come from ~/.lambda_s3.env (or the file named by $RLTUI_S3_ENV) and the environment:
RLTUI_S3_BUCKET (required), RLTUI_S3_PREFIX, AWS_* credentials, region and endpoint,
RLTUI_S3_CHECKSUMS=when_required for stores that refuse boto3's default checksums.
Exit codes: 0 done (verify: in sync); 1 the work failed (verify: not in sync); 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from rltui.errors import UsageError

ACTIONS = ("backup", "backup-all", "list-backups", "restore", "verify")
EPILOG = (
    "settings: ~/.lambda_s3.env or $RLTUI_S3_ENV (KEY=VALUE), the environment overriding it: "
    "RLTUI_S3_BUCKET (required), RLTUI_S3_PREFIX, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
    "AWS_REGION, AWS_ENDPOINT_URL_S3, RLTUI_S3_CHECKSUMS=when_required (R2 and other "
    "S3-compatible stores). Exit: 0 done, 1 failed (verify: not in sync), 2 bad input."
)
_NEEDS_RUN = ("backup", "restore", "verify")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--action", required=True, choices=ACTIONS, help="what to do")
    p.add_argument("--training-run", metavar="RUN", help="the run (backup, restore, verify)")
    p.add_argument("--cleanup", action="store_true",
                   help="after the backup, delete local files confirmed in the bucket")
    p.add_argument("--keep-latest", action="store_true",
                   help="with --cleanup: keep the latest checkpoint, config.yaml, status.json and logs")
    p.add_argument("--dry-run", action="store_true", help="say what would be uploaded and deleted; change nothing")
    p.add_argument("--force", action="store_true", help="restore: overwrite local files that differ from the backup")
    p.add_argument("--json", action="store_true", help="list-backups: print JSON")


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "sync", parents=parents, help="back up, list, restore and verify runs in S3",
        description="Back up, list, restore and verify runs in S3-compatible storage.",
        epilog=EPILOG,
    )
    add_arguments(p)
    p.set_defaults(func=handle)


def check_flags(args: argparse.Namespace) -> None:
    action = args.action
    if action in _NEEDS_RUN and not args.training_run:
        raise UsageError(f"--action {action} needs --training-run RUN")
    if action not in _NEEDS_RUN and args.training_run:
        raise UsageError(f"--training-run does not apply to --action {action}")
    if args.cleanup and action not in ("backup", "backup-all"):
        raise UsageError(f"--cleanup does not apply to --action {action}")
    if args.keep_latest and not args.cleanup:
        raise UsageError("--keep-latest needs --cleanup")
    if args.dry_run and action not in ("backup", "backup-all"):
        raise UsageError(f"--dry-run does not apply to --action {action}")
    if args.force and action != "restore":
        raise UsageError(f"--force does not apply to --action {action}")
    if args.json and action != "list-backups":
        raise UsageError(f"--json does not apply to --action {action}")


def handle(args: argparse.Namespace) -> int:
    from rltui.archive import backup, report, restore
    from rltui.archive.settings import load_settings, make_client
    from rltui.archive.store import RemoteStore, translate
    from rltui.runs.localfs import Layout, validate_run_name

    check_flags(args)
    if args.training_run:
        validate_run_name(args.training_run)
    settings = load_settings()
    for warning in settings.warnings:
        sys.stderr.write(warning + "\n")
    layout = Layout(args.root)
    try:
        store = RemoteStore(make_client(settings), settings)
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


def main(argv: Sequence[str] | None = None) -> int:
    from rltui.cli.main import OneLineParser
    from rltui.errors import run_reporting
    from rltui.runs.localfs import resolve_root

    parser = OneLineParser(prog="python -m rltui.sync_to_s3", description=__doc__.split("\n")[0],
                           epilog=EPILOG)
    parser.add_argument("--root", default=None, help="localfs root (default: $LOCALFS_ROOT, else ~/localfs)")
    add_arguments(parser)
    args = parser.parse_args(argv)

    def work() -> int:
        args.root = resolve_root(args.root)
        return handle(args)

    return run_reporting("sync_to_s3", work)

if __name__ == "__main__":
    sys.exit(main())
