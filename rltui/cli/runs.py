"""`rltui --batch runs`: list runs from the metrics store, filtered and sorted by expressions.

Usage:
    rltui --batch runs [--where EXPR] [--sort KEY[,KEY...]] [--columns COL,COL...] [--json|--csv]

    rltui --batch runs --where "dataset = 'gsm8k' and best(eval_accuracy) > 0.6 and lora.r in (16, 32)" \\
        --sort=-best(eval_accuracy) --columns status,lora.r,best(eval_accuracy),last(reward_mean)

The language is described in rltui/runs/query.py and README.md ("Compare runs"). A bad
expression exits 2 with one line that names the column of the bad token. The store is brought
up to date with the files first (an incremental pass).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

DEFAULT_COLUMNS = ["status", "step", "data.dataset", "best(eval_accuracy)", "best(reward_mean)"]


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    from rltui.cli.store_common import add_format_flags

    p = subparsers.add_parser(
        "runs", parents=parents, help="list runs, filtered and sorted by config and metrics",
        description="List runs from the metrics store: --where filters, --sort orders "
                    "(-KEY or 'KEY desc' for descending), --columns picks.",
    )
    p.add_argument("--where", metavar="EXPR", help="e.g. \"status = 'completed' and best(eval_accuracy) > 0.5\"")
    p.add_argument("--sort", metavar="KEY", help="e.g. -best(eval_accuracy) or 'lora.r, last(loss) desc'")
    p.add_argument("--columns", metavar="COLS",
                   help=f"comma-separated names or FUNC(metric) (default: {','.join(DEFAULT_COLUMNS)})")
    p.add_argument("--limit", type=int, metavar="N", help="at most N runs")
    add_format_flags(p)
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from rltui.cli.store_common import current_store, write_rows
    from rltui.errors import UsageError
    from rltui.runs.query import QueryError, Vocabulary, _split_top, compile_ref, select_runs

    if args.limit is not None and args.limit < 0:
        raise UsageError(f"--limit must be 0 or more, not {args.limit}")
    with current_store(args.root) as store:
        if args.columns:
            columns = [c.strip() for c in _split_top(args.columns)]
        else:  # the defaults that this store can answer (a key or metric no run has is left out)
            vocab = Vocabulary.of(store)
            columns = [c for c in DEFAULT_COLUMNS if _answerable(c, vocab, compile_ref, QueryError)]
        try:
            headers, rows = select_runs(store, args.where, args.sort, columns)
        except QueryError as e:
            what = ("--where" if args.where and e.text == args.where else
                    "--sort" if args.sort and e.text == args.sort else "--columns")
            raise UsageError(e.one_line(what)) from None
    if args.limit is not None:
        rows = rows[: args.limit]
    write_rows(headers, rows, args.format, sys.stdout)
    return 0


def _answerable(column: str, vocab: Any, compile_ref: Any, error: type) -> bool:
    try:
        compile_ref(column, vocab)
    except error:
        return False
    return True
