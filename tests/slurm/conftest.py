"""Fixtures for the Slurm backend's tests: a real Slurm on this machine and a localfs for it.

    slurm_cluster   (module) a running SlurmCluster with two "nodes" on this host; skips with the
                    reason when Slurm is not installed or we are not root (.ci/run installs it)
    slurm_root      (function) a fresh localfs root holding the cached tiny model
    slurm_cfg       a tiny training config (CPU, one thread) -> Path; takes "section.key" overrides
    run_cli(...)    `python -m rltui.cli --root ROOT --batch ...` with the cluster's SLURM_CONF
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from cluster import SlurmCluster, SlurmUnavailable, missing_reason  # noqa: E402

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


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    why = missing_reason()
    if why:
        pytest.skip(why)
    folder = tmp_path_factory.mktemp("slurm")
    try:
        with SlurmCluster(folder, nodes=2) as cluster:
            yield cluster
    except SlurmUnavailable as e:
        pytest.skip(f"Slurm could not start here: {e}")


@pytest.fixture
def slurm_root(tiny_cache: Path, tmp_path: Path) -> Path:
    root = tmp_path / "localfs"
    (root / "models").mkdir(parents=True)
    shutil.copytree(tiny_cache / "models" / "tiny", root / "models" / "tiny")
    return root


@pytest.fixture
def slurm_cfg(tmp_path: Path) -> Callable[..., Path]:
    def make(**overrides: Any) -> Path:
        cfg = json.loads(json.dumps(CONFIG))
        for dotted, value in overrides.items():
            section, key = dotted.split("__")
            cfg[section][key] = value
        path = tmp_path / f"cfg_{len(list(tmp_path.glob('cfg_*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    return make


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
