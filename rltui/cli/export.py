"""`rltui --batch export`: one run's logged series as a table file (pandas), one row per step.

Usage:
    rltui --batch export RUN --to csv|parquet [--out PATH] [--metric M[,M...]]

Columns: step, then every metric (or those named), eval metrics included (empty where a step
has no value). Default PATH: RUN.csv / RUN.parquet in the current folder; `--out -` writes CSV to
stdout. The file is written under a temporary name and renamed, so a reader never sees half of
it. Parquet needs pyarrow; without it the command says so in one line (exit 2).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "export", parents=parents, help="write one run's series as CSV or Parquet",
        description="Write a run's logged series (one row per step) as CSV or Parquet (pandas).",
    )
    p.add_argument("run", metavar="RUN")
    p.add_argument("--to", required=True, choices=["csv", "parquet"], help="file format")
    p.add_argument("--out", metavar="PATH", help="output file (default RUN.csv|RUN.parquet; '-' stdout, CSV only)")
    p.add_argument("--metric", metavar="M[,M...]", help="only these metrics")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from rltui.cli.store_common import check_runs, current_store, metric_list
    from rltui.errors import UsageError

    out = args.out or f"{args.run}.{args.to}"
    if out == "-" and args.to != "csv":
        raise UsageError("--out - (stdout) is for --to csv only")
    if args.to == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UsageError("--to parquet needs pyarrow, which is not installed "
                             "(pip install pyarrow, or use --to csv)") from None
    if out != "-" and not Path(out).resolve().parent.is_dir():
        raise UsageError(f"--out {out}: folder {Path(out).resolve().parent} does not exist")
    import pandas as pd

    with current_store(args.root) as store:
        check_runs(store, [args.run])
        metrics = metric_list(store, args.metric) or sorted(store.summary_metrics(args.run))
        columns = {}
        for m in metrics:
            steps, values = store.series([args.run], m).get(args.run, ([], []))
            columns[m] = pd.Series(values, index=pd.Index(steps, name="step"), dtype="float64")
    frame = pd.DataFrame(columns).sort_index().reset_index() if columns else pd.DataFrame({"step": []})
    if out == "-":
        frame.to_csv(sys.stdout, index=False)
        return 0
    tmp = f"{out}.tmp.{os.getpid()}"
    try:
        frame.to_csv(tmp, index=False) if args.to == "csv" else frame.to_parquet(tmp, index=False)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"wrote {len(frame)} steps x {len(frame.columns) - 1} metrics of {args.run} to {out}")
    return 0
