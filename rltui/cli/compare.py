"""`rltui --batch compare`: runs side by side: best and last values, series by step, config diff.

Usage:
    rltui --batch compare RUN RUN... [--metric M[,M...]] [--json|--csv]

Text: per metric, each run's best (and its step), last, min, max and point count, then the config
keys whose values differ. --csv: the series aligned by step, one column per run and metric
(`RUN:METRIC`). --json: all of it (summaries, aligned series, differing keys).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    from rltui.cli.store_common import add_format_flags

    p = subparsers.add_parser(
        "compare", parents=parents, help="compare runs: best/last values, series, config diff",
        description="Compare runs from the metrics store: series aligned by step, best and last "
                    "values, and the config keys whose values differ.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--metric", metavar="M[,M...]", help="metrics (default: reward_mean,eval_accuracy)")
    add_format_flags(p)
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from rltui.cli.store_common import check_runs, current_store, metric_list
    from rltui.errors import UsageError
    from rltui.runs.compare import compare

    runs = list(dict.fromkeys(args.runs))
    with current_store(args.root) as store:
        check_runs(store, runs)
        metrics = metric_list(store, args.metric)
        c = compare(store, runs, metrics)
    if not c.metrics:
        raise UsageError("these runs have logged no metrics yet")
    {"json": _json, "csv": _csv}.get(args.format, _text)(c, sys.stdout)
    return 0


def _summary_rows(c: Any, metric: str) -> list[list[object]]:
    rows = []
    for run in c.runs:
        s = c.summaries[metric].get(run)
        rows.append([run, *((s.best, s.best_step, s.last, s.last_step, s.min, s.max, s.n)
                            if s else (None,) * 7)])
    return rows


def _text(c: Any, out: Any) -> None:
    from rltui.cli.store_common import cell, write_text_table

    for metric in c.metrics:
        out.write(f"{cell(metric)}\n")
        rows = [[cell(v) for v in r] for r in _summary_rows(c, metric)]
        write_text_table(["  run", "best", "@step", "last", "@step", "min", "max", "points"],
                         [["  " + r[0], *r[1:]] for r in rows], out)
        out.write("\n")
    if c.differing:
        out.write("config keys that differ\n")
        write_text_table(["  key", *c.runs], [["  " + cell(k), *(cell(v.get(r)) for r in c.runs)]
                                              for k, v in c.differing.items()], out)
    else:
        out.write("config: the same in every run\n")


def _csv(c: Any, out: Any) -> None:
    steps = sorted({s for m in c.metrics for s in c.steps[m]})
    columns = [(run, m) for m in c.metrics for run in c.runs]
    lookup = {(run, m): dict(zip(c.steps[m], c.aligned[m].get(run, []))) for run, m in columns}
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["step", *(f"{run}:{m}" for run, m in columns)])
    for s in steps:
        row = [lookup[col].get(s) for col in columns]
        w.writerow([s, *("" if v is None else v for v in row)])


def _json(c: Any, out: Any) -> None:
    from rltui.cli.store_common import json_value

    doc = {
        "runs": c.runs,
        "metrics": {
            m: {
                "steps": c.steps[m],
                "series": {run: [json_value(v) for v in c.aligned[m].get(run, [])] for run in c.runs},
                "summary": {run: (vars(s) if (s := c.summaries[m].get(run)) else None) for run in c.runs},
            } for m in c.metrics
        },
        "differing_config": c.differing,
    }
    json.dump(doc, out, indent=2)
    out.write("\n")
