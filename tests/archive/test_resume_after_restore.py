"""A run made by the real trainer on the tiny model survives cleanup and restore and trains on.

Real processes throughout: `python -m trainer.rl_runner`, `python -m rltui.sync_to_s3`,
`python -m trainer.resume_training --no-torchrun`, against moto's HTTP server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rltui.runs import checkpoints
from rltui.runs.localfs import Layout

REPO = Path(__file__).resolve().parents[2]
CONFIG = {
    "model": {"base": "tiny", "init_adapter": "warmstart"},
    "data": {"dataset": "arith_r1_template"},
    "rewards": [{"function": "correctness", "weight": 1.0}],
    "grpo": {"num_generations": 2, "per_device_prompts": 2, "max_completion_length": 8,
             "num_iterations": 1, "beta": 0.0},
    "training": {"total_steps": 2, "save_every": 1, "keep_last": 10, "cpu_threads": 1},
}


def _python(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


def _resume(s3, root: Path, run: str) -> None:
    proc = _python(s3.env, "trainer.resume_training", "--training-run", run, "--from-step", "latest",
                   "--additional-steps", "1", "--no-torchrun", "--root", str(root))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_real_run_resumes_after_keep_latest_cleanup_and_after_full_cleanup_and_restore(s3, tiny_root, tmp_path):
    root = tiny_root
    layout = Layout(root)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    trained = _python(s3.env, "trainer.rl_runner", "--cfg", str(cfg), "--root", str(root))
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    run = next(ln.split()[1] for ln in trained.stdout.splitlines() if ln.startswith("run: "))
    state = layout.training_state(run)
    assert checkpoints.resolve_step(state, "latest") == 2

    # 1. back up, keep only what resuming needs, resume in place
    keep = s3.cli("--action", "backup", "--training-run", run, "--cleanup", "--keep-latest",
                  "--root", str(root))
    assert keep.returncode == 0, keep.stderr
    assert [s for s, _ in checkpoints.list_step_dirs(state)] == [2]
    _resume(s3, root, run)
    assert checkpoints.resolve_step(state, "latest") == 3

    # 2. back up again, clean up everything, restore, resume
    full = s3.cli("--action", "backup", "--training-run", run, "--cleanup", "--root", str(root))
    assert full.returncode == 0, full.stderr
    assert not layout.run_dir(run).exists()
    restored = s3.cli("--action", "restore", "--training-run", run, "--root", str(root))
    assert restored.returncode == 0, restored.stderr
    steps = [s for s, _ in checkpoints.list_step_dirs(state)]
    assert steps[-3:] == [1, 2, 3]  # the steps cleaned up in 1. came back from the earlier backup
    assert all(not checkpoints.checkpoint_problems(p, verify_hash=True) for _, p in checkpoints.list_step_dirs(state))
    assert checkpoints.read_step_latest(state) == 3
    _resume(s3, root, run)

    assert checkpoints.resolve_step(state, "latest") == 4
    assert not checkpoints.checkpoint_problems(layout.step_dir(run, 4), verify_hash=True)
    logged = [json.loads(ln)["step"] for ln in layout.train_log(run).read_text().splitlines()]
    assert 4 in logged
    status = json.loads(layout.run_status(run).read_text())
    assert status["step"] == 4 and status["phase"] == "completed"
    assert os.path.exists(layout.run_dir(run) / "config.yaml")
