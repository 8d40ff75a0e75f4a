"""Fixtures that build example localfs trees with localfs's own writers.

Fixtures:
    lfs          a `LocalfsBuilder` on an empty localfs root (a tmp folder)
    dead_pid     the pid of a process that has exited (reaped)
    live_pid     the pid of a sleeping child process, killed at teardown
    every_kind   a localfs holding every kind of run (see `build_every_kind`), with its builder
    tree_state   a function: (size, mtime) of everything under a root

Checkpoints are written the way the trainer writes them (staging folder, files, then
`finalize_checkpoint` and `update_step_latest`), so the completeness rule meets real folders.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from rltui.runs import checkpoints as ckpt
from rltui.runs import localfs, machine
from rltui.runs.localfs import Layout

ADAPTER_FILES = {
    "model/adapter_config.json": b'{"peft_type": "LORA", "r": 8}',
    "model/adapter_model.safetensors": b"\x00" * 300,
    "optimizer.pt": b"\x01" * 200,
    "scheduler.pt": b"\x02" * 20,
    "rng/rank_0.pt": b"\x03" * 40,
}


@dataclass
class LocalfsBuilder:
    root: Path
    layout: Layout = field(init=False)

    def __post_init__(self) -> None:
        self.layout = Layout(self.root).ensure()

    # ------------------------------------------------------------ training runs

    def run(
        self,
        name: str,
        *,
        phase: str | None = "completed",
        step: int = 2,
        target: int = 2,
        checkpoints: tuple[int, ...] = (1, 2),
        pid: int | None = None,
        host: str | None = None,
        progress_time: float | None = None,
        error: str | None = None,
        parent: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        train_log: list[dict[str, Any]] | None = None,
    ) -> str:
        """A run folder; `phase=None` writes no status.json."""
        self.layout.run_dir(name).mkdir(parents=True)
        localfs.write_yaml_atomic(self.layout.run_config(name), config or {
            "model": {"base": "models/tiny"},
            "dataset": {"name": "arith"},
            "lora": {"r": 8, "alpha": 16},
            "training": {"learning_rate": 5e-5, "num_generations": 4, "max_steps": target},
        })
        for s in checkpoints:
            self.checkpoint(name, s)
        if phase is not None:
            now = time.time()
            localfs.write_json_atomic(self.layout.run_status(name), {
                "run": name, "step": step, "target_step": target, "phase": phase,
                "pid": pid if pid is not None else os.getpid(),
                "host": host or machine.this_host(),
                "time": progress_time if progress_time is not None else now,
                "started": now - 100, "world_size": 1,
                "latest_checkpoint": max(checkpoints) if checkpoints else None,
                "error": error, "parent": parent,
            })
        for line in train_log if train_log is not None else [
            {"step": s, "reward_mean": 0.1 * s, "loss": 1.0 / s} for s in range(1, step + 1)
        ]:
            localfs.append_jsonl(self.layout.train_log(name), line)
        return name

    def checkpoint(self, run: str, step: int, *, latest: bool = True) -> Path:
        ts = self.layout.training_state(run)
        staging = ckpt.staging_dir(ts, step)
        for rel, data in ADAPTER_FILES.items():
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            (staging / rel).write_bytes(data)
        final = self.layout.step_dir(run, step)
        ckpt.finalize_checkpoint(staging, final, {"step": step, "metrics": {"reward": 0.5}})
        if latest:
            ckpt.update_step_latest(ts, step)
        return final

    def staging(self, run: str, step: int) -> Path:
        """A half-written checkpoint: a staging folder with some files and no info file."""
        staging = ckpt.staging_dir(self.layout.training_state(run), step)
        (staging / "optimizer.pt").write_bytes(b"\x01" * 50)
        return staging

    # ------------------------------------------------------------ evaluations

    def evaluation(
        self,
        run: str,
        dataset: str,
        accuracies: dict[int, float],
        *,
        failed: dict[int, str] | None = None,
        consolidated: bool = True,
    ) -> Path:
        folder = self.layout.eval_dir(run, dataset)
        localfs.write_yaml_atomic(self.layout.eval_config(run, dataset), {"run": run, "dataset": dataset})
        rows = []
        for step, acc in sorted(accuracies.items()):
            summary = {"step": step, "dataset": dataset, "accuracy": acc, "format_rate": 1.0,
                       "mean_reward": acc, "n": 10, "error": None}
            localfs.write_json_atomic(self.layout.eval_step_dir(run, dataset, step) / "summary.json", summary)
            rows.append({"step": step, "accuracy": acc, "format_rate": 1.0, "mean_reward": acc, "n": 10})
        for step, reason in (failed or {}).items():
            localfs.write_json_atomic(
                self.layout.eval_step_dir(run, dataset, step) / "summary.json",
                {"step": step, "dataset": dataset, "accuracy": None, "n": 0, "error": reason},
            )
        if consolidated:
            localfs.write_csv_atomic(
                self.layout.consolidated_metrics(run, dataset),
                ["step", "accuracy", "format_rate", "mean_reward", "n"], rows,
            )
        return folder

    # ------------------------------------------------------------ jobs and legacy runs

    def job(self, job_id: str, run: str | None, state: str, *, kind: str = "train",
            keeper_pid: int | None = None, restarts: int = 0, created: float | None = None,
            usage: dict[str, float] | None = None, exit_code: int | None = None) -> Path:
        now = time.time()
        localfs.write_json_atomic(self.layout.job_spec(job_id), {
            "id": job_id, "kind": kind, "run": run, "argv": ["python", "-m", "trainer.rl_runner"],
            "env": {}, "gpus": [0], "gpu_count": 1, "followups": [],
            "created": created if created is not None else now,
        })
        localfs.write_json_atomic(self.layout.job_state(job_id), {
            "state": state, "keeper_pid": keeper_pid, "child_pid": None, "exit_code": exit_code,
            "restarts": restarts, "reasons": [], "last_reason": None, "started_at": now,
            "updated_at": now, "ended_at": None, "boot_time": machine.boot_time(), "gpus": [0],
            "run": run, "usage": usage or {},
        })
        return self.layout.job_dir(job_id)

    def legacy(self, name: str, steps: tuple[int, ...], *, without_adapter: tuple[int, ...] = ()) -> Path:
        folder = self.layout.legacy_run_dir(name)
        for step in steps:
            d = folder / localfs.step_dir_name(step)
            d.mkdir(parents=True)
            if step not in without_adapter:
                (d / "adapter_config.json").write_text('{"peft_type": "LORA"}')
                (d / "adapter_model.safetensors").write_bytes(b"\x00" * 100)
        return folder


def build_every_kind(b: LocalfsBuilder, live_pid: int, dead_pid: int) -> None:
    """Every kind of run the index must tell apart (names say what each one is)."""
    now = time.time()
    b.run("run_2026-01-01_00-00-01", phase="completed", step=2, target=2)
    b.run("run_2026-01-01_00-00-02", phase="stopped", step=1, target=4, checkpoints=(1,))
    b.run("run_2026-01-01_00-00-03", phase="training", step=3, target=9, checkpoints=(1, 2),
          pid=dead_pid, progress_time=now - 3600)                       # crashed: stale, dead pid
    b.run("run_2026-01-01_00-00-04", phase="training", step=3, target=9, checkpoints=(1, 2),
          pid=live_pid, progress_time=now)                              # running
    b.run("run_2026-01-01_00-00-05", phase=None, checkpoints=())        # unknown: no status.json
    b.run("run_2026-01-01_00-00-06", phase="failed", step=1, target=4, checkpoints=(1,),
          pid=dead_pid, error="CUDA out of memory")
    # checkpoints that are not complete, one reason each
    b.run("run_2026-01-01_00-00-07", phase="stopped", step=5, target=9, checkpoints=(1, 2, 3, 4))
    ts = b.layout.training_state("run_2026-01-01_00-00-07")
    (ts / "step_1" / localfs.CHECKPOINT_INFO).write_text('{"step": 1, "files": {')  # damaged
    (ts / "step_2" / "optimizer.pt").unlink()                                        # missing file
    (ts / "step_3" / "scheduler.pt").write_bytes(b"\x02" * 7)                        # wrong size
    (ts / "step_4" / localfs.CHECKPOINT_INFO).unlink()                               # no info
    b.staging("run_2026-01-01_00-00-07", 5)                                          # unfinished save
    b.evaluation("run_2026-01-01_00-00-01", "gsm8k", {1: 0.25, 2: 0.5}, failed={3: "out of memory"})
    b.evaluation("run_2026-01-01_00-00-01", "arith", {2: 0.75})
    b.run("run_2026-01-01_00-00-08", phase=None, checkpoints=(1,))      # crashed: its job is lost
    b.job("job_lost", "run_2026-01-01_00-00-08", "lost")
    b.job("job_done", "run_2026-01-01_00-00-01", "succeeded", restarts=2,
          usage={"gpu_seconds": 120.0, "cost": 0.5})
    b.legacy("old_gsm8k_run", (100, 200, 300), without_adapter=(300,))
    b.evaluation("old_gsm8k_run", "gsm8k", {200: 0.4})


@pytest.fixture
def lfs(tmp_path: Path) -> LocalfsBuilder:
    return LocalfsBuilder(tmp_path / "localfs")


@pytest.fixture
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def live_pid() -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    time.sleep(0.05)  # the status written after this is newer than the process start
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture
def every_kind(lfs: LocalfsBuilder, live_pid: int, dead_pid: int) -> LocalfsBuilder:
    build_every_kind(lfs, live_pid, dead_pid)
    return lfs


def _tree_state(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def tree_state() -> Any:
    """tree_state(root): (size, mtime_ns) of every file, folder and link under root, to show
    that a reader wrote nothing."""
    return _tree_state
