"""`rltui --batch status`: runs, checkpoints, eval results, jobs and GPUs, as text or JSON.

Usage:
    rltui --batch status [--root DIR] [--run RUN] [--json]

Plain text is for people (no escape codes unless stdout is a terminal; NO_COLOR turns colour
off there too). `--json` prints one document for scripts; its fields are listed in README.md
("status") and versioned by `"schema"`: a field is never renamed or removed without raising it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from rltui.runs import localfs, machine, writer_lock
from rltui.errors import UsageError
from rltui.text import clean, clean_lines
from rltui.runs.records import target_note
from rltui.runs.index import EvalRecord, Index, JobRecord, RunRecord, RunStatus, Snapshot

SCHEMA_VERSION = 1
STORE_BUDGET_S = 0.5  # status spends at most this long (after its output) updating the metrics store
RECENT_ENDED_JOBS = 20  # the plain text lists these many ended jobs; --json lists all

_COLOURS = {
    RunStatus.RUNNING: "\x1b[36m",
    RunStatus.COMPLETED: "\x1b[32m",
    RunStatus.STOPPED: "\x1b[33m",
    RunStatus.CRASHED: "\x1b[31m",
    RunStatus.UNKNOWN: "\x1b[2m",
}
_RESET = "\x1b[0m"


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "status", parents=parents, help="runs, checkpoints, eval results, jobs, GPUs",
        description="Show runs, checkpoints, eval results, jobs and GPUs of the localfs.",
    )
    p.add_argument("--json", action="store_true", help="one JSON document (schema in README.md)")
    p.add_argument("--run", metavar="RUN", help="only this run (and its jobs)")
    p.add_argument("--remote", action="store_true",
                   help="list the S3 bucket now (else the cached listing) for runs only it holds")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    root: Path = args.root
    if args.run is not None:
        localfs.validate_run_name(args.run)
    localfs.existing_root(root)
    snap = Index(localfs.Layout(root)).scan()
    if args.run is not None:
        if snap.run(args.run) is None:
            raise UsageError(f"no run named {args.run!r} under {root}")
        snap = _only_run(snap, args.run)
    gpus = sample_gpus(snap)
    from rltui.archive import view as archive

    live = archive.archive_view(localfs.Layout(root), set(snap.runs) | set(snap.legacy_runs),
                                refresh=args.remote)
    if args.run is not None:
        live.lags = {k: v for k, v in live.lags.items() if k == args.run}
        live.bucket_only = []
    try:
        if args.json:
            # built whole, then written once: json.dump writes token by token (~281,000 writes
            # at 1,000 runs), and indent= forces the pure-Python encoder, so scripts get it compact
            indent = 2 if sys.stdout.isatty() else None
            doc = snapshot_to_json(snap, gpus) | live.to_json()
            sys.stdout.write(json.dumps(doc, indent=indent) + "\n")
        else:
            colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
            out = CleanWriter(sys.stdout)  # text from files: no escape sequences reach the terminal
            write_text(snap, gpus, out, colour=colour)
            archive.write_text(live, {n: r.latest_complete for n, r in snap.runs.items()}, out)
        sys.stdout.flush()
    except BrokenPipeError:
        # `rltui --batch status | head`: the reader left; that is not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    update_store(root, snap, args.run)
    return 0


def update_store(root: Path, snap: Snapshot, run: str | None) -> None:
    """Keep the metrics store (rltui.runs.store) current on the side, after the output, with the
    index's statuses: at most STORE_BUDGET_S here; the next reader of the localfs goes on."""
    from rltui.runs.ingest import ingest_quietly

    statuses = {name: r.status.value for name, r in snap.runs.items()}
    ingest_quietly(root, runs=[run] if run else None, statuses=statuses, budget_s=STORE_BUDGET_S)


def _only_run(snap: Snapshot, name: str) -> Snapshot:
    return dataclasses.replace(
        snap,
        runs={k: v for k, v in snap.runs.items() if k == name},
        legacy_runs={k: v for k, v in snap.legacy_runs.items() if k == name},
        jobs={k: j for k, j in snap.jobs.items() if j.run == name},
        orphan_evals={},
    )


# ---------------------------------------------------------------- GPUs


@dataclasses.dataclass
class GpuReport:
    available: bool
    reason: str | None  # why there is no GPU list (no driver, no GPU, a failed sample)
    devices: list[Any]  # rltui.gpu.GpuInfo


def sample_gpus(snap: Snapshot | None = None) -> GpuReport:
    """One NVML sample through rltui.gpu, its processes named by run where a trainer pid
    matches; never fails the command (the reason is shown instead)."""
    try:
        from rltui import gpu  # imported here: NVML is loaded only when a command needs it
    except ImportError as e:
        return GpuReport(False, f"rltui.gpu could not be imported: {e}", [])
    try:
        sample = gpu.sample()
    except Exception as e:  # a driver error must not hide the runs
        return GpuReport(False, f"NVML sampling failed: {type(e).__name__}: {e}", [])
    if snap is not None:
        from rltui.jobs.usage import job_owners

        owners: dict[int, tuple[str | None, str | None]] = dict(job_owners(snap.active_jobs))
        for r in snap.runs.values():  # a trainer started by hand, outside any job
            if r.pid is not None and r.status is RunStatus.RUNNING:
                owners.setdefault(r.pid, (None, r.name))
        sample = gpu.attribute(sample, owners)
    if not sample.gpus:
        return GpuReport(False, sample.reason or "no GPU found", [])
    return GpuReport(True, None, list(sample.gpus))


# ---------------------------------------------------------------- JSON


def snapshot_to_json(snap: Snapshot, gpus: GpuReport | None = None) -> dict[str, Any]:
    """The `--json` document, schema 1 (README.md, section status)."""
    return {
        "schema": SCHEMA_VERSION,
        "root": str(snap.root),
        "generated_at": time.time(),
        "host": machine.this_host(),
        "runs": [run_to_json(r) for r in snap.runs.values()],
        "legacy_runs": [run_to_json(r) for r in snap.legacy_runs.values()],
        "jobs": [job_to_json(j) for j in snap.jobs.values()],
        "orphan_evals": [eval_to_json(e) for e in snap.orphan_evals.values()],
        "gpus": None if gpus is None else {
            "available": gpus.available,
            "reason": gpus.reason,
            "devices": [_device_json(d) for d in gpus.devices],
        },
        "errors": [{"path": str(e.path), "reason": e.reason} for e in snap.errors],
    }


def run_to_json(r: RunRecord) -> dict[str, Any]:
    return {
        "name": r.name,
        "path": str(r.path),
        "legacy": r.legacy,
        "status": r.status.value,
        "status_reason": r.status_reason,
        "stalled": r.stalled,
        "step": r.step,
        "target_step": r.target_step,
        "target_history": r.target_history,
        "phase": r.phase,
        "latest_complete_step": r.latest_complete,
        "pid": r.pid,
        "host": r.host,
        "started": r.started,
        "updated": r.updated,
        "error": r.error,
        "parent": r.parent,
        "provenance": _provenance_json(r),
        "config": _flat(r.config_summary),
        "last_metrics": r.last_metrics,
        "checkpoints": [
            {
                "step": c.step, "path": str(c.path), "complete": c.complete,
                "problems": c.problems, "size_bytes": c.size_bytes, "is_latest": c.is_latest,
                "created": c.created,
            }
            for c in r.checkpoints
        ],
        "evals": {d: eval_to_json(e) for d, e in r.evals.items()},
        "job_ids": r.job_ids,
        "restarts": r.restarts,
        "gpu_seconds": r.gpu_seconds,
        "cost": r.cost,
        "writer": _writer_json(r),
    }


def eval_to_json(e: EvalRecord) -> dict[str, Any]:
    return {
        "run": e.run,
        "dataset": e.dataset,
        "path": str(e.path),
        "best_accuracy": e.best_accuracy,
        "best_step": e.best_step,
        "last_accuracy": e.last_accuracy,
        "last_step": e.last_step,
        "error": e.error,
        "in_progress": e.progress if _under_way(e.progress) else None,
        "steps": [_flat(s) for s in e.steps],
    }


def _under_way(progress: dict[str, Any] | None) -> bool:
    """eval_status.json of an evaluation not yet ended (a finished one keeps its last file)."""
    return progress is not None and progress.get("phase") not in ("completed", "failed")


def job_to_json(j: JobRecord) -> dict[str, Any]:
    return {
        "id": j.id, "kind": j.kind, "run": j.run, "state": j.state.value, "orphaned": j.orphaned,
        "argv": j.argv, "gpus": j.gpus, "restarts": j.restarts, "last_reason": j.last_reason, "cause": j.cause,
        "created": j.created, "started_at": j.started_at, "updated_at": j.updated_at,
        "ended_at": j.ended_at, "exit_code": j.exit_code, "keeper_pid": j.keeper_pid,
        "usage": j.usage, "error": j.error,
    }


def _flat(record: Any) -> dict[str, Any]:
    """A flat dataclass as a dict: dataclasses.asdict without its deep copy of every value (at
    1,000 runs the eval steps alone are 10,000 records)."""
    return dict(vars(record))


def _device_json(d: Any) -> dict[str, Any]:
    return d.to_json() if hasattr(d, "to_json") else dataclasses.asdict(d)


# ---------------------------------------------------------------- text


def write_text(snap: Snapshot, gpus: GpuReport, out: TextIO, *, colour: bool = False) -> None:
    active = len(snap.active_jobs)
    out.write(
        f"localfs {clean(str(snap.root))}: {_n(len(snap.runs), 'run')}, "
        f"{_n(len(snap.legacy_runs), 'legacy run')}, {_n(len(snap.jobs), 'job')} ({active} active)\n"
    )
    out.write("\nRUNS\n")
    if snap.runs:
        _table(out, ["STATUS", "RUN", "STEP", "CHECKPOINT", "LAST EVAL", "MODEL", "DATASET"],
               [_run_row(r, colour) for r in snap.runs.values()],
               notes=[_with_start(r, _run_note(r)) for r in snap.runs.values()])
    else:
        out.write("  (none)\n")
    incomplete = [(r, c) for r in snap.runs.values() for c in r.incomplete_checkpoints]
    if incomplete:
        out.write("\nINCOMPLETE CHECKPOINTS (never loaded)\n")
        _table(out, ["RUN", "CHECKPOINT", "WHY"],
               [[r.name, c.path.name, c.reason] for r, c in incomplete])
    out.write("\nJOBS\n")
    shown = _jobs_to_show(list(snap.jobs.values()))
    if shown:
        _table(out, ["JOB", "KIND", "RUN", "STATE", "RESTARTS", "GPUS", "LAST REASON"],
               [_job_row(j) for j in shown])
        if len(shown) < len(snap.jobs):
            out.write(f"  ({len(snap.jobs) - len(shown)} older ended jobs not shown; --json lists all)\n")
    else:
        out.write("  (none)\n")
    out.write("\nGPUS\n")
    if gpus.available:
        for d in gpus.devices:
            out.write(f"  {clean(_gpu_line(d))}\n")
    else:
        out.write(f"  GPU: not available ({clean(gpus.reason or 'no reason given')})\n")
    if snap.legacy_runs:
        out.write("\nLEGACY RUNS (rl_runs/, read-only)\n")
        _table(out, ["RUN", "STEPS", "LAST EVAL"], [
            [r.name, _steps(r), _eval_cell(r)] for r in snap.legacy_runs.values()
        ])
    if snap.orphan_evals:
        out.write("\nEVALUATIONS WITHOUT A RUN HERE\n")
        _table(out, ["FOLDER", "BEST", "LAST"], [
            [e.path.name, _acc(e.best_accuracy, e.best_step), _acc(e.last_accuracy, e.last_step)]
            for e in snap.orphan_evals.values()
        ])
    if snap.errors:
        out.write("\nDAMAGED FILES (skipped)\n")
        for err in snap.errors:
            out.write(f"  {clean(str(err.path))}: {clean(err.reason)}\n")


def _run_row(r: RunRecord, colour: bool) -> list[str]:
    word = f"{r.status.symbol} {r.status.value}" + (" (stalled)" if r.stalled else "")
    if colour:
        word = _COLOURS[r.status] + word + _RESET
    step = "-" if r.step is None else str(r.step)
    if r.target_step is not None:
        step += f"/{r.target_step}" + target_note(r.target_history)
    ckpt = "-" if r.latest_complete is None else f"step_{r.latest_complete}"
    cfg = r.config_summary
    return [word, r.name, step, ckpt, _eval_cell(r), _short(cfg.model), cfg.dataset or "-"]


def _writer_json(r: RunRecord) -> dict[str, Any] | None:
    """Who holds the run's writer lock now (rltui.runs.writer_lock), or None."""
    held = writer_lock.holder(r.path)
    return None if held is None else {"pid": held.pid, "host": held.host, "since": held.since,
                                      "job": held.job}


def _run_note(r: RunRecord) -> str | None:
    held = writer_lock.holder(r.path)
    if held is not None:
        note = _run_problem(r)
        return f"written by {held.describe()}" + (f"; {note}" if note else "")
    return _run_problem(r)


def _run_problem(r: RunRecord) -> str | None:
    if r.status in (RunStatus.CRASHED, RunStatus.UNKNOWN) or r.stalled:
        problem = r.error or r.status_reason or None
        if r.status is RunStatus.CRASHED and r.latest_complete is not None:  # what to type next
            hint = f"resume: rltui --batch resume {r.name}"
            return f"{problem}; {hint}" if problem else hint
        return problem
    return None


def _eval_cell(r: RunRecord) -> str:
    e = r.last_eval
    if e is None:
        return "-"
    n = next((s.n for s in e.steps if s.step == e.last_step and s.n), None)
    return f"{e.dataset} {_acc(e.last_accuracy, e.last_step)}" + (f" (n={n})" if n else "")


def _acc(acc: float | None, step: int | None) -> str:
    return "-" if acc is None else f"{acc:.3f} @{step}"


def _jobs_to_show(jobs: list[JobRecord]) -> list[JobRecord]:
    """Every job not ended, and the most recent ended ones: a busy box has thousands."""
    ended = sorted((j for j in jobs if j.state.ended), key=lambda j: (j.created or 0.0, j.id))
    keep = {id(j) for j in ended[-RECENT_ENDED_JOBS:]}
    return [j for j in jobs if not j.state.ended or id(j) in keep]


def _job_row(j: JobRecord) -> list[str]:
    state = j.state.value + (" (keeper gone)" if j.orphaned else "")
    gpus = ",".join(str(g) for g in j.gpus) if j.gpus else "-"
    return [j.id, j.kind or "?", j.run or "-", state, str(j.restarts), gpus, j.reason]


def _steps(r: RunRecord) -> str:
    steps = [str(c.step) for c in r.checkpoints if c.complete]
    bad = len(r.checkpoints) - len(steps)
    text = ", ".join(steps) if steps else "-"
    return text + (f" ({bad} without an adapter)" if bad else "")


def _gpu_line(g: Any) -> str:
    """One rltui.gpu.GpuInfo: a failed query reads n/a."""
    from rltui.gpu import fmt

    if g.lost:
        return f"GPU {g.index}  {g.name or ''}  LOST (fallen off the bus; needs a reset)"
    parts = [
        f"GPU {g.index}", g.name or "?", f"util {fmt(g.util_pct, '%')}",
        f"mem {fmt(g.mem_used_mib)}/{fmt(g.mem_total_mib, ' MiB')}",
        f"power {fmt(g.power_w, ' W')}", f"temp {fmt(g.temp_c, ' C')}",
    ]
    procs = [f"{p.pid}" + (f" {p.run}" if p.run else "") + (f" ({fmt(p.used_mib, ' MiB')})")
             for p in g.processes]
    if procs:
        parts.append("processes: " + ", ".join(procs))
    return "  ".join(parts)


def _table(out: TextIO, header: list[str], rows: list[list[str]],
           notes: list[str | None] | None = None) -> None:
    rows = [[_cell(c) for c in row] for row in rows]
    widths = [max(len(_visible(x)) for x in col) for col in zip(header, *rows)]

    def line(cells: list[str]) -> str:
        padded = [c + " " * (w - len(_visible(c))) for c, w in zip(cells, widths)]
        return ("  " + "  ".join(padded)).rstrip() + "\n"

    out.write(line(header))
    for i, row in enumerate(rows):
        out.write(line(row))
        if notes and notes[i]:
            out.write(f"      ↳ {clean(notes[i])}\n")


def _cell(text: str) -> str:
    """A table cell as shown: one line, nothing from a file able to drive the terminal; a status
    word in our own colour stays coloured."""
    if text.endswith(_RESET) and text.startswith(tuple(_COLOURS.values())):
        return text[:text.index("m") + 1] + clean(_visible(text)) + _RESET
    return clean(text)


class CleanWriter:
    """A text stream that removes escape sequences and controls from what is written, except
    rltui's own status colours."""

    _OURS = re.compile("(" + "|".join(re.escape(c) for c in (*_COLOURS.values(), _RESET)) + ")")

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        parts = self._OURS.split(text)
        return self.stream.write("".join(p if i % 2 else clean_lines(p) for i, p in enumerate(parts)))

    def flush(self) -> None:
        self.stream.flush()


def _visible(text: str) -> str:
    for code in (*_COLOURS.values(), _RESET):
        text = text.replace(code, "")
    return text


def _short(model: str | None) -> str:
    """The model's last path part; a pinned Hub commit shortened: 'Qwen2.5-1.5B-Instruct@a09a354'."""
    if not model:
        return "-"
    name, at, revision = model.rstrip("/").partition("@")
    return name.rsplit("/", 1)[-1] + (f"@{revision[:7]}" if at else "")


def _provenance_json(r: RunRecord) -> dict[str, Any] | None:
    p = r.provenance
    if p is None:
        return None
    return {"base": p.base, "base_repo": p.base_repo, "base_commit": p.base_commit,
            "start_adapter": None if p.adapter_path is None else {
                "path": p.adapter_path, "label": p.adapter_label, "weights_sha256": p.adapter_sha256,
                "global_step": p.adapter_step}}


def _with_start(r: RunRecord, note: str | None) -> str | None:
    """The row's note led by where the run started ('from checkpoint-156'), when it says."""
    start = r.provenance.started_from if r.provenance else ""
    return "; ".join(x for x in (start, note) if x) or None


def _n(count: int, what: str) -> str:
    return f"{count} {what}{'' if count == 1 else 's'}"
