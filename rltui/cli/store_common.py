"""What the store's commands (runs, compare, export) share: an up-to-date store, and tables out.

Usage:
    with current_store(root) as store: ...          # ingests what changed first
    write_rows(headers, rows, fmt="text"|"csv"|"json", out=sys.stdout)
"""

from __future__ import annotations

import csv
import json
import math
import re
import sqlite3
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence, TextIO

from rltui.errors import UsageError, WorkFailed
from rltui.runs import localfs

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def current_store(root: Path):  # noqa: ANN201 - a Store, imported lazily
    """The store, brought up to date with the files (an incremental pass)."""
    from rltui.runs.ingest import ingest
    from rltui.runs.store import Store

    localfs.existing_root(Path(root))
    try:
        store = Store.open(root)
        ingest(store, localfs.Layout(root))
    except (sqlite3.Error, OSError) as e:
        raise WorkFailed(f"metrics store {root}/.rltui/metrics.sqlite: {e}") from None
    return store


def check_runs(store: Any, runs: Sequence[str]) -> None:
    known = set(store.run_names())
    for run in runs:
        localfs.validate_run_name(run)
        if run not in known:
            raise UsageError(f"no run named {run!r} in {store.path.parent.parent}")


def metric_list(store: Any, text: str | None) -> list[str] | None:
    """--metric a,b: each must be a metric some run logged."""
    if not text:
        return None
    known = set(store.metrics())
    metrics = [m.strip() for m in text.split(",") if m.strip()]
    for m in metrics:
        if m not in known:
            close = ", ".join(sorted(k for k in known if m.lower() in k.lower())[:5])
            raise UsageError(f"unknown metric {m!r}" + (f" (did you mean {close}?)" if close else ""))
    return metrics


def cell(value: object) -> str:
    """A value for a person: numbers to 4 significant digits, no control characters."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.3e}"
    return _CONTROL.sub("?", str(value))


def json_value(value: object) -> object:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_rows(headers: Sequence[str], rows: Iterable[Sequence[object]], fmt: str,
               out: TextIO = sys.stdout) -> None:
    rows = list(rows)
    if fmt == "json":
        json.dump([{h: json_value(v) for h, v in zip(headers, row)} for row in rows], out, indent=2)
        out.write("\n")
    elif fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow(headers)
        w.writerows([["" if v is None else v for v in row] for row in rows])
    else:
        write_text_table(headers, [[cell(v) for v in row] for row in rows], out)


def write_text_table(headers: Sequence[str], rows: list[list[str]], out: TextIO) -> None:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    out.write("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip() + "\n")
    for r in rows:
        out.write("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() + "\n")


def add_format_flags(p: Any) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_const", const="json", dest="format", help="JSON")
    g.add_argument("--csv", action="store_const", const="csv", dest="format", help="CSV")
    p.set_defaults(format="text")
