"""Helpers for the TUI tests: a localfs with runs in every status, jobs in several states, evals and a legacy run, for the TUI.

Written with the real localfs writers (checkpoints sealed by finalize_checkpoint), so the index
reads it exactly as it reads a trainer's output. The clock is fixed and the process check is
injected, so snapshots do not depend on when or where they run.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rltui.runs import checkpoints, localfs, machine
from rltui.gpu import FakeSampler, GpuInfo, GpuProcess, GpuSnapshot
from rltui.runs.index import Index
from rltui.runs.localfs import Layout

NOW = 1_795_608_000.0  # 2026-11-25 12:00 UTC: a fixed "now" for ages and the status rule
HOST = "testhost"
RUNS = {
    "completed": "run_2026-11-20_10-00-00",
    "running": "run_2026-11-21_10-00-00",
    "crashed": "run_2026-11-22_10-00-00",
    "stopped": "run_2026-11-23_10-00-00",
    "unknown": "run_2026-11-24_10-00-00",
}
TRAINER_PID = 424242  # "alive" by the injected process check
SNAPSHOT_ROOT = Path("/tmp/rltui-tui-snapshot-root")  # fixed: the status bar shows the root


def write_checkpoint(layout: Layout, run: str, step: int, target: int) -> None:
    staging = checkpoints.staging_dir(layout.training_state(run), step)
    (staging / "model").mkdir()
    (staging / "model" / "adapter_config.json").write_text('{"r": 8}')
    (staging / "model" / "adapter_model.safetensors").write_bytes(b"\0" * (2048 + step))
    (staging / "optimizer.pt").write_bytes(b"\1" * 4096)
    checkpoints.finalize_checkpoint(staging, layout.step_dir(run, step),
                                {"step": step, "target_step": target, "world_size": 1})
    checkpoints.update_step_latest(layout.training_state(run), step)


def write_run(layout: Layout, run: str, *, status: dict[str, Any] | None, steps: int,
              target: int, ckpts: list[int], dataset: str = "arith") -> None:
    layout.run_dir(run).mkdir(parents=True, exist_ok=True)
    localfs.write_yaml_atomic(layout.run_config(run), {
        "model": {"base": "models/tiny"}, "dataset": {"name": dataset},
        "training": {"max_steps": target, "learning_rate": 1e-4}})
    for step in range(1, steps + 1):
        localfs.append_jsonl(layout.train_log(run), {
            "step": step, "reward_mean": round(0.1 + 0.8 * step / max(target, 1), 4),
            "loss": round(0.5 - 0.01 * step, 4), "kl": 0.001 * step})
    for step in ckpts:
        write_checkpoint(layout, run, step, target)
    if status is not None:
        localfs.write_json_atomic(layout.run_status(run), {
            "run": run, "target_step": target, "host": HOST, "world_size": 1,
            "started": NOW - 7200, **status})


def write_eval(layout: Layout, run: str, dataset: str, accuracy: dict[int, float]) -> None:
    rows = []
    for step, acc in accuracy.items():
        summary = {"step": step, "dataset": dataset, "accuracy": acc, "format_rate": 1.0,
                   "mean_reward": acc, "n": 50, "seconds": 3.0, "error": None}
        localfs.write_json_atomic(layout.eval_step_dir(run, dataset, step) / "summary.json", summary)
        rows.append({"step": step, "accuracy": acc, "format_rate": 1.0, "mean_reward": acc, "n": 50,
                     "seconds": 3.0})
    localfs.write_csv_atomic(layout.consolidated_metrics(run, dataset),
                             ["step", "accuracy", "format_rate", "mean_reward", "n", "seconds"], rows)


def write_job(layout: Layout, job_id: str, kind: str, run: str | None, state: str, *,
              argv: list[str] | None = None, keeper_pid: int | None = None, restarts: int = 0,
              reason: str | None = None, gpus: list[int] | None = None, created: float = NOW - 3600,
              log: str = "", cause: str | None = None) -> None:
    layout.job_dir(job_id).mkdir(parents=True, exist_ok=True)
    localfs.write_json_atomic(layout.job_spec(job_id), {
        "id": job_id, "kind": kind, "run": run, "argv": argv or ["python", "-m", "x"],
        "env": {}, "gpus": gpus, "created": created})
    ended = state in ("succeeded", "failed", "stopped", "lost")
    localfs.write_json_atomic(layout.job_state(job_id), {
        "state": state, "keeper_pid": keeper_pid, "restarts": restarts, "last_reason": reason,
        "reasons": [reason] if reason else [], "started_at": created + 5,
        "ended_at": created + 600 if ended else None,
        # a live job's last write is now: the index checks its keeper started before it
        "updated_at": created + 600 if ended else time.time(),
        "boot_time": machine.boot_time(), "gpus": gpus, "run": run, "cause": cause,
        "usage": {"gpu_seconds": 1800.0, "cost": 1.25}})
    layout.job_log(job_id).write_text(log or f"job {job_id} started\nstep 1 reward 0.2\n")


def build_localfs(root: Path) -> Layout:
    """Five runs (one per status), an incomplete checkpoint, evals, jobs, a legacy run."""
    layout = Layout(root).ensure()
    write_run(layout, RUNS["completed"], steps=30, target=30, ckpts=[10, 20, 30],
              status={"step": 30, "phase": "completed", "pid": 11, "time": NOW - 86400})
    write_run(layout, RUNS["running"], steps=12, target=40, ckpts=[10],
              status={"step": 12, "phase": "training", "pid": TRAINER_PID, "time": NOW - 5})
    write_run(layout, RUNS["crashed"], steps=7, target=40, ckpts=[5], dataset="gsm8k",
              status={"step": 7, "phase": "training", "pid": 12, "time": NOW - 4000})
    (layout.step_dir(RUNS["crashed"], 6) / "model").mkdir(parents=True)  # no training_info.json
    write_run(layout, RUNS["stopped"], steps=15, target=40, ckpts=[15],
              status={"step": 15, "phase": "stopped", "pid": 13, "time": NOW - 20000})
    write_run(layout, RUNS["unknown"], steps=0, target=40, ckpts=[], status=None)
    write_eval(layout, RUNS["completed"], "arith", {10: 0.42, 20: 0.61, 30: 0.74})
    write_job(layout, "20261121-100000-train-aaaa", "train", RUNS["running"], "running",
              keeper_pid=os.getpid(), restarts=1, reason="restarted after exit code 1", gpus=[0])
    write_job(layout, "20261122-100000-train-bbbb", "train", RUNS["crashed"], "failed",
              reason="exit code 1", created=NOW - 5000)
    write_job(layout, "20261120-120000-eval-cccc", "eval", RUNS["completed"], "succeeded",
              created=NOW - 80000)
    legacy = layout.legacy_run_dir("old_grpo_run") / "step_5"
    legacy.mkdir(parents=True)
    (legacy / "adapter_config.json").write_text("{}")
    (legacy / "adapter_model.safetensors").write_bytes(b"\0" * 100)
    return layout


def fixed_index(root: Path) -> Index:
    return Index(Layout(root), now=lambda: NOW, host=HOST, alive=lambda pid, t: pid == TRAINER_PID)


def gpus_busy() -> GpuSnapshot:
    return GpuSnapshot([
        GpuInfo(index=0, name="NVIDIA H100 80GB HBM3", util_pct=87.0, mem_used_mib=30000.0,
                mem_total_mib=81559.0, temp_c=64.0, power_w=512.0, power_limit_w=700.0,
                processes=(GpuProcess(pid=os.getpid(), used_mib=29000.0),)),
        GpuInfo(index=1, name="NVIDIA H100 80GB HBM3", util_pct=0.0, mem_used_mib=4.0,
                mem_total_mib=81559.0, temp_c=31.0, power_w=70.0, power_limit_w=700.0),
    ], time=NOW)


def no_gpus() -> GpuSnapshot:
    return GpuSnapshot([], reason="NVML not available: NVML Shared Library Not Found", time=NOW)


@dataclass
class Recorded:
    """What a record-only launcher was asked to launch."""

    specs: list[Any]


def record_only_launcher(recorded: Recorded):
    """Writes the job record (job.json) exactly as rltui.jobs.launch does, without starting it.

    Used where a test is about which record an action creates; the end-to-end test launches
    for real.
    """
    from rltui.jobs.records import write_spec

    def launch(layout: Layout, spec: Any) -> None:
        layout.job_dir(spec.id).mkdir(parents=True)
        write_spec(layout, spec)
        recorded.specs.append(spec)

    return launch


async def wait_until(pilot: Any, condition, timeout: float = 20.0) -> bool:
    """Let the app run until `condition()` holds (workers, watcher) or `timeout` passes."""
    for _ in range(int(timeout / 0.05)):
        if condition():
            return True
        await pilot.pause(0.05)
    return bool(condition())


def read_job_json(layout: Layout, job_id: str) -> dict[str, Any]:
    return json.loads(layout.job_spec(job_id).read_text())


def make_test_app(root: Path, *, gpus: GpuSnapshot | None = None, watch: bool = False,
                  launcher: Any = None, fixed: bool = True, **kwargs: Any) -> Any:
    """The app as the CLI builds it, with a fake GPU sampler and (by default) a fixed clock."""
    from rltui.tui.app import make_app

    kwargs.setdefault("store", False)  # the metrics store's column and worker: tests/tui/test_compare.py
    if fixed:
        kwargs.setdefault("index", fixed_index(root))
        kwargs.setdefault("clock", lambda: NOW)
    return make_app(root, sampler=FakeSampler(gpus if gpus is not None else gpus_busy()),
                    watch=watch, launcher=launcher, **kwargs)


async def started(pilot: Any) -> None:
    """Wait for the first scan to be on screen, the first GPU sample to arrive and the panes the
    first frame leaves out (the Jobs and GPUs tabs, the run detail's tabs) to be mounted."""
    app = pilot.app
    assert await wait_until(pilot, lambda: app.loaded and app.gpu_snapshot is not None
                            and app.hidden_mounted)
    await pilot.pause()


def pilot_test(fn: Any) -> Any:
    """Run an async test function with asyncio.run (no async pytest plugin needed)."""
    import asyncio
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(fn(*args, **kwargs))

    return wrapper
