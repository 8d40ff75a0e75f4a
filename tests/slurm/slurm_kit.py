"""Helpers for the Slurm backend's tests (fixtures are in conftest.py).

    CONFIG                       a tiny training config (CPU, one thread)
    run_cli(cluster, root, ...)  `python -m rltui.cli --root ROOT --batch ...` with the cluster's SLURM_CONF
    wait_for(predicate, timeout, what)
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from cluster import SlurmCluster  # noqa: F401 (the type of run_cli's first argument)

REPO = Path(__file__).resolve().parents[2]

CONFIG: dict[str, Any] = {
    "model": {"base": "tiny", "init_adapter": "warmstart"},
    "data": {"dataset": "arith_r1_template"},
    "rewards": [{"function": "correctness", "weight": 1.0}],
    "grpo": {"num_generations": 4, "per_device_prompts": 2, "max_completion_length": 12,
             "num_iterations": 1, "beta": 0.0, "forward_batch_size": 8},
    "optim": {"learning_rate": 1e-3, "lr_scheduler_type": "cosine", "warmup_steps": 1},
    "training": {"total_steps": 4, "save_every": 1, "keep_last": 10, "log_rollouts_every": 100,
                 "cpu_threads": 1},
}


def run_cli(cluster: SlurmCluster, root: Path, *args: str, timeout: float = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**cluster.env, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "rltui.cli", "--root", str(root), "--batch", *args],
                          capture_output=True, text=True, timeout=timeout, env=full_env, cwd=REPO)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
