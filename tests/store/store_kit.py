"""Helpers for the store tests: runs with configs, train logs, evals and jobs, written as the
trainer, the evaluator and the keeper write them (atomic JSON/YAML, whole JSONL lines)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from rltui.runs import localfs
from rltui.runs.localfs import Layout

RUN_A = "run_2026-03-01_10-00-00"
RUN_B = "run_2026-03-02_10-00-00"
RUN_C = "run_2026-03-03_10-00-00"


def write_run(layout: Layout, name: str, *, steps: int, lora_r: int, dataset: str = "arith",
              reward_rate: float = 0.01, phase: str = "completed",
              evals: dict[str, dict[int, float]] | None = None) -> None:
    layout.run_dir(name).mkdir(parents=True, exist_ok=True)
    localfs.write_yaml_atomic(layout.run_dir(name) / "config_resolved.yaml", {
        "model": {"base": "tiny"}, "data": {"dataset": dataset},
        "lora": {"r": lora_r, "alpha": 2 * lora_r, "target_modules": ["q_proj", "v_proj"]},
        "optim": {"learning_rate": 1e-4}, "training": {"total_steps": steps, "bf16": False}})
    localfs.write_json_atomic(layout.run_dir(name) / "provenance.json",
                              {"base": {"id": "tiny", "revision": "abc123"}, "start_adapter": None})
    localfs.write_json_atomic(layout.run_status(name), {
        "run": name, "step": steps, "target_step": steps, "phase": phase, "pid": 1,
        "host": "elsewhere", "time": 1_700_000_000.0, "started": 1_699_990_000.0})
    for step in range(1, steps + 1):
        log_step(layout, name, step, reward_mean=round(reward_rate * step, 6), loss=round(1.0 / step, 6))
    for dataset_name, by_step in (evals or {}).items():
        folder = layout.eval_dir(name, dataset_name)
        folder.mkdir(parents=True, exist_ok=True)
        rows = ["step,accuracy,format_rate,mean_reward,mean_completion_length,n,seconds,tokens_per_s"]
        rows += [f"{s},{a},0.9,{a},10.0,20,1.0,100.0" for s, a in sorted(by_step.items())]
        localfs.write_text_atomic(folder / "consolidated_metrics.csv", "\n".join(rows) + "\n")


def log_step(layout: Layout, name: str, step: int, **metrics: Any) -> None:
    localfs.append_jsonl(layout.train_log(name), {"step": step, "session": 1, "time": 1.0, **metrics})


def write_job(layout: Layout, job_id: str, run: str, gpu_seconds: float, cost: float) -> None:
    layout.job_dir(job_id).mkdir(parents=True, exist_ok=True)
    localfs.write_json_atomic(layout.job_spec(job_id), {"id": job_id, "kind": "train", "run": run})
    localfs.write_json_atomic(layout.job_state(job_id), {
        "state": "succeeded", "run": run, "started_at": 1.0, "ended_at": 2.0,
        "usage": {"gpu_seconds": gpu_seconds, "energy_j": 10.0 * gpu_seconds, "cost": cost}})


def build_three_runs(root: Path) -> Path:
    """A: r=16, evals on two datasets; B: r=32, stopped, one eval; C: r=8, no evals, a gsm8k run."""
    layout = Layout(root).ensure()
    write_run(layout, RUN_A, steps=20, lora_r=16, evals={"arith": {10: 0.5, 20: 0.7},
                                                         "gsm8k": {10: 0.2, 20: 0.4}})
    write_run(layout, RUN_B, steps=10, lora_r=32, reward_rate=0.05, phase="stopped",
              evals={"arith": {10: 0.65}})
    write_run(layout, RUN_C, steps=5, lora_r=8, dataset="gsm8k_r1_template", reward_rate=0.1)
    write_job(layout, "job_a", RUN_A, 3600.0, 1.5)
    write_job(layout, "job_a2", RUN_A, 1800.0, 0.5)
    return root


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows (without the ingestion bookkeeping), for comparing two stores."""
    conn = sqlite3.connect(str(path))
    try:
        out = {}
        for table in ("runs", "config", "summary", "series", "evals", "usage"):
            rows = conn.execute(f"SELECT * FROM {table}").fetchall()
            if table != "runs":
                rows = [r for r in rows]
            out[table] = sorted(rows, key=repr)
        names = dict(conn.execute("SELECT id, name FROM runs").fetchall())
        # ids may differ between two stores: compare by run name
        for table in ("config", "summary", "series", "evals"):
            out[table] = sorted([(names[r[0]], *r[1:]) for r in out[table]], key=repr)
        out["runs"] = sorted([r[1:] for r in out["runs"]], key=repr)
        return out
    finally:
        conn.close()
