"""The evaluation's files: per-step results, consolidated metrics rebuilt from them, progress.

    eval_runs/RUN_D/eval_config.yaml
    eval_runs/RUN_D/step_N_D/completions.jsonl  metrics.csv  summary.json   (summary.json last)
    eval_runs/RUN_D/consolidated_metrics.csv   one row per step evaluated with the current settings
    eval_runs/RUN_D/eval_status.json           progress, for the manager

Every file is written atomically, summary.json last, so a step counts as done exactly when its
summary says so; consolidated_metrics.csv is always rebuilt from the summaries, never appended to.
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from rltui.runs import localfs, machine

COLUMNS = ["step", "accuracy", "format_rate", "mean_reward", "mean_completion_length", "n",
           "seconds", "tokens_per_s"]
PASS_AT_K = "pass_at_k"


@dataclass
class EvalFiles:
    layout: localfs.Layout
    run: str
    dataset: str

    @property
    def folder(self) -> Path:
        return self.layout.eval_dir(self.run, self.dataset)

    def step_dir(self, step: int) -> Path:
        return self.layout.eval_step_dir(self.run, self.dataset, step)

    def summary_path(self, step: int) -> Path:
        return self.step_dir(step) / "summary.json"

    def read_summary(self, step: int) -> dict[str, Any] | None:
        try:
            summary = localfs.read_json(self.summary_path(step))
        except (FileNotFoundError, localfs.DamagedFile):
            return None
        return summary if isinstance(summary, dict) else None

    def is_done(self, step: int, settings_hash: str, fingerprint: str) -> bool:
        """Evaluated before, without error, with these settings and this very checkpoint."""
        s = self.read_summary(step)
        return bool(s) and s.get("error") is None and s.get("settings_hash") == settings_hash \
            and (s.get("checkpoint") or {}).get("fingerprint") == fingerprint

    def write_config(self, config: dict[str, Any]) -> None:
        localfs.write_yaml_atomic(self.layout.eval_config(self.run, self.dataset), config)

    def write_step(self, step: int, records: list[dict[str, Any]], summary: dict[str, Any],
                   extra_metrics: dict[str, float]) -> None:
        folder = self.step_dir(step)
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        localfs.write_text_atomic(folder / "completions.jsonl", lines)
        row = {c: summary.get(c) for c in _columns(summary)}
        row.update({f"reward_{name}": value for name, value in extra_metrics.items()})
        localfs.write_text_atomic(folder / "metrics.csv", _csv([row], list(row)))
        localfs.write_json_atomic(folder / "summary.json", summary)

    def write_failure(self, step: int, summary: dict[str, Any]) -> None:
        """A failed step keeps only its summary (with the error); stale results are removed."""
        folder = self.step_dir(step)
        for name in ("completions.jsonl", "metrics.csv"):
            try:
                os.unlink(folder / name)
            except FileNotFoundError:
                pass
        localfs.write_json_atomic(folder / "summary.json", summary)

    def summaries(self) -> list[dict[str, Any]]:
        """Every readable step summary of this folder (damaged ones are skipped)."""
        out = []
        prefix, suffix = "step_", f"_{self.dataset}"
        try:
            names = sorted(os.listdir(self.folder))
        except FileNotFoundError:
            return []
        for name in names:
            if not (name.startswith(prefix) and name.endswith(suffix)):
                continue
            middle = name[len(prefix):-len(suffix)]
            if middle.isdigit():
                summary = self.read_summary(int(middle))
                if summary is not None:
                    out.append(summary)
        return out

    def rebuild_consolidated(self, settings_hash: str) -> Any:
        """consolidated_metrics.csv from the summaries of successful steps with these settings."""
        import pandas as pd

        rows = [s for s in self.summaries()
                if s.get("error") is None and s.get("settings_hash") == settings_hash]
        with_k = any(s.get(PASS_AT_K) is not None for s in rows)
        columns = COLUMNS + ([PASS_AT_K] if with_k else [])
        frame = pd.DataFrame([{c: s.get(c) for c in columns} for s in rows], columns=columns)
        frame = frame.sort_values("step", kind="stable").reset_index(drop=True)
        localfs.write_text_atomic(self.layout.consolidated_metrics(self.run, self.dataset),
                                  frame.to_csv(index=False))
        return frame


def _columns(summary: dict[str, Any]) -> list[str]:
    return COLUMNS + ([PASS_AT_K] if summary.get(PASS_AT_K) is not None else [])


def _csv(rows: Iterable[dict[str, Any]], columns: list[str]) -> str:
    import pandas as pd

    buf = io.StringIO()
    pd.DataFrame(list(rows), columns=columns).to_csv(buf, index=False)
    return buf.getvalue()


@dataclass
class StatusFile:
    """eval_status.json: what the evaluation is doing, for the manager (written atomically)."""

    path: Path
    run: str
    dataset: str
    total: int
    started: float = field(default_factory=time.time)
    done: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)

    def write(self, phase: str, current_step: int | None = None, eta_s: float | None = None,
              error: str | None = None, completions: tuple[int, int] | None = None) -> None:
        """`completions`: (done, total) of the current step, written after every batch."""
        localfs.write_json_atomic(self.path, {
            "run": self.run, "dataset": self.dataset, "phase": phase, "pid": os.getpid(),
            "host": machine.this_host(), "started": self.started, "time": time.time(),
            "total": self.total, "done": self.done, "skipped": self.skipped,
            "failed": self.failed, "current_step": current_step,
            "completions_done": completions[0] if completions else None,
            "completions_total": completions[1] if completions else None,
            "eta_s": None if eta_s is None else round(eta_s, 1), "error": error,
        }, durable=False)
