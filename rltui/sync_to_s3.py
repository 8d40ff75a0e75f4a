"""Back up, list, restore and verify training runs in S3-compatible storage.

Usage:
    python -m rltui.sync_to_s3 --action backup --training-run RUN [--cleanup [--keep-latest]] [--dry-run]
    python -m rltui.sync_to_s3 --action backup-all [--cleanup [--keep-latest]] [--dry-run]
    python -m rltui.sync_to_s3 --action list-backups [--json]
    python -m rltui.sync_to_s3 --action restore --training-run RUN [--force]
    python -m rltui.sync_to_s3 --action verify --training-run RUN
    (the same flags as `rltui --batch sync ...`; `--root DIR` picks the localfs root)

Settings come from ~/.lambda_s3.env (or the file named by $RLTUI_S3_ENV) and the environment:
RLTUI_S3_BUCKET (required; a --dry-run without it compares with no bucket), RLTUI_S3_PREFIX,
AWS_* credentials, region and endpoint, RLTUI_S3_CHECKSUMS=when_required for stores that refuse
boto3's default checksums.
Exit codes: 0 done (verify: in sync); 1 the work failed (verify: not in sync); 2 bad input.

A thin entry point: the flags and their rules are rltui.archive.flags, the work is
rltui.cli.sync.run, in this process. `rltui --batch sync` runs this module as a job (kind sync,
under a keeper) and follows it.
"""

from __future__ import annotations

import sys
from typing import Sequence

from rltui.archive.flags import EPILOG, add_arguments
from rltui.cli.parser import OneLineParser


def main(argv: Sequence[str] | None = None) -> int:
    from rltui.cli.sync import run
    from rltui.errors import run_reporting
    from rltui.runs.localfs import resolve_root

    parser = OneLineParser(prog="python -m rltui.sync_to_s3", description=__doc__.split("\n")[0],
                           epilog=EPILOG)
    parser.add_argument("--root", default=None, help="localfs root (default: $LOCALFS_ROOT, else ~/localfs)")
    add_arguments(parser)
    args = parser.parse_args(argv)

    def work() -> int:
        args.root = resolve_root(args.root)
        return run(args)

    return run_reporting("sync_to_s3", work)


if __name__ == "__main__":
    sys.exit(main())
