"""`rltui` (the TUI) and `rltui --batch COMMAND` (headless): one argument parser for both.

Usage:
    rltui [--root DIR]                         open the terminal UI
    rltui --batch COMMAND [options]            run COMMAND without a UI (see `rltui --batch -h`)

Exit codes: 0 done; 1 the work failed; 2 bad input (one line on stderr); 130 stopped by the user.
Each command lives in its own module, which registers its subparser; modules imported here must
stay light (no torch, no boto3 at import time) so that `rltui` starts instantly.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from rltui.cli.parser import OneLineParser

# Modules that register batch commands: each defines register(subparsers, parents). The order
# is the order of `rltui --batch -h`.
COMMAND_MODULES = [
    "rltui.cli.status",
    "rltui.cli.sync",
    "rltui.cli.launch",  # train, resume, eval
    "rltui.cli.control",  # stop, kill
    "rltui.cli.logs",
    "rltui.cli.jobs",
    "rltui.cli.supervise",
    "rltui.cli.demo",
    "rltui.cli.runs",  # runs, compare, export: the metrics store
    "rltui.cli.compare",
    "rltui.cli.export",
    "rltui.cli.fetch",  # fetch model|dataset, models
]


# Commands that only read or signal what is there: a --root that does not exist is a mistake.
# The TUI too. The others make it (train, fetch, demo, sync's restore on a fresh box), look
# beyond it (models: the Hugging Face cache) or wait for it (supervise).
READERS = frozenset({"status", "jobs", "logs", "stop", "kill", "runs", "compare", "export"})


def build_parser() -> argparse.ArgumentParser:
    common = OneLineParser(add_help=False)
    common.add_argument(
        "--root", default=argparse.SUPPRESS,
        help="localfs root (default: $LOCALFS_ROOT, else ~/localfs)",
    )
    parser = OneLineParser(
        prog="rltui",
        description="Run manager for GRPO + LoRA fine-tuning: TUI, or --batch COMMAND headless.",
    )
    parser.add_argument("--root", default=None, help="localfs root (default: $LOCALFS_ROOT, else ~/localfs)")
    parser.add_argument("--batch", action="store_true", help="run COMMAND headless instead of the TUI")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub, [common])
    return parser


# Flags whose value may start with "-": `--sort -best(eval_accuracy)` (descending). argparse takes
# such a value for an option and says "expected one argument"; glued (`--sort=-best(...)`) it is a value.
DASH_VALUE_FLAGS = ("--sort",)


def glue_dash_values(argv: Sequence[str]) -> list[str]:
    """`argv` with each DASH_VALUE_FLAGS flag glued to a next word that starts with one dash (not
    `-h`, not `--...`: those stay options)."""
    out: list[str] = []
    for word in argv:
        if out and out[-1] in DASH_VALUE_FLAGS and word[:1] == "-" and word[:2] != "--" and word != "-h":
            out[-1] = f"{out[-1]}={word}"
        else:
            out.append(word)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from rltui.errors import run_reporting
    from rltui.runs.localfs import existing_root, resolve_root

    parser = build_parser()
    args = parser.parse_args(glue_dash_values(sys.argv[1:] if argv is None else argv))
    if args.command and not args.batch:
        parser.error(f"command {args.command!r} needs --batch (rltui --batch {args.command} ...)")
    if args.batch and not args.command:
        parser.error("--batch needs a COMMAND (see rltui --batch -h)")

    def work() -> int:
        args.root = resolve_root(args.root)
        if not args.batch or args.command in READERS:
            existing_root(args.root)  # the TUI's watcher would make the folders of a mistyped --root
        from rltui.jobs.control import reconcile_at_start

        reconcile_at_start(args.root)
        if not args.batch:
            from rltui.tui.app import run_tui

            return run_tui(args.root)
        return int(args.func(args) or 0)

    return run_reporting("rltui", work)


if __name__ == "__main__":
    sys.exit(main())
