"""Losing the box: a training job archived live is SIGKILLed with its archive at a random moment,
its localfs deleted; a fresh localfs restores from the bucket and resumes to the very same end.

Real processes throughout: `rltui --batch train --archive` (keeper, trainer, the `sync --action
follow` job the keeper starts), then `rltui --batch resume --restore` on a new root, against
moto's HTTP server.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rltui.runs import checkpoints
from rltui.runs.localfs import Layout

REPO = Path(__file__).resolve().parents[2]
SAVE_EVERY = 2
CONFIG = {
    "model": {"base": "tiny", "init_adapter": "warmstart"},
    "data": {"dataset": "arith_r1_template"},
    "rewards": [{"function": "correctness", "weight": 1.0}],
    "grpo": {"num_generations": 2, "per_device_prompts": 2, "max_completion_length": 8,
             "num_iterations": 1, "beta": 0.0},
    "training": {"total_steps": 8, "save_every": SAVE_EVERY, "keep_last": 10, "cpu_threads": 1},
}

pytestmark = pytest.mark.slow


def _rltui(env: dict[str, str], root: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "rltui.cli", "--root", str(root), "--batch", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _fresh_root(tiny_cache: Path, where: Path) -> Path:
    root = where / "localfs"
    shutil.copytree(tiny_cache / "models" / "tiny", root / "models" / "tiny")
    return root


def _wait(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _lose_the_box(layout: Layout) -> None:
    """SIGKILL every keeper and every process group our jobs started, as a lost machine would."""
    for state_file in layout.jobs.glob("*/state.json"):
        st = _read(state_file)
        for pid in (st.get("keeper_pid"), st.get("pgid")):
            if not pid:
                continue
            for kill in (lambda p: os.killpg(p, signal.SIGKILL), lambda p: os.kill(p, signal.SIGKILL)):
                try:
                    kill(pid)
                except (ProcessLookupError, PermissionError):
                    pass


def test_a_lost_box_restores_from_the_bucket_and_resumes_bitwise(s3, tiny_cache, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))

    ref_root = _fresh_root(tiny_cache, tmp_path / "reference")
    ref = subprocess.run([sys.executable, "-m", "trainer.rl_runner", "--cfg", str(cfg), "--root", str(ref_root)],
                         cwd=REPO, env={**s3.env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    ref_run = next(ln.split()[1] for ln in ref.stdout.splitlines() if ln.startswith("run: "))

    root = _fresh_root(tiny_cache, tmp_path / "lost")
    layout = Layout(root)
    env = {**s3.env, "RLTUI_TEST_STEP_SLEEP": "0.4"}
    started = _rltui(env, root, "train", "--cfg", str(cfg), "--gpus", "none", "--archive",
                     "--archive-interval", "0.2", "--detach", "--json")
    assert started.returncode == 0, started.stderr
    run = json.loads(started.stdout)["spec"]["run"]

    kill_at = random.Random().randint(SAVE_EVERY + 1, CONFIG["training"]["total_steps"] - 1)
    _wait(lambda: _read(layout.run_status(run)).get("step", 0) >= kill_at, 300, f"step {kill_at}")
    newest_local = checkpoints.latest_complete_step(layout.training_state(run))
    _lose_the_box(layout)
    archived = _read(layout.archive / "status" / f"{run}.json").get("newest_archived_step")
    shutil.rmtree(root)

    fresh = _fresh_root(tiny_cache, tmp_path / "fresh")
    resumed = _rltui(s3.env, fresh, "resume", "--training-run", run, "--restore", "--gpus", "none")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    state = Layout(fresh).training_state(run)
    restored_from = min(s for s, _ in checkpoints.list_step_dirs(state))
    assert archived is not None and archived <= restored_from < CONFIG["training"]["total_steps"]
    assert restored_from >= newest_local - SAVE_EVERY, (restored_from, newest_local)  # <= 1 interval lost
    final = CONFIG["training"]["total_steps"]
    a = checkpoints.read_checkpoint_info(ref_root / "training_runs" / ref_run / "training_state" / f"step_{final}")
    b = checkpoints.read_checkpoint_info(state / f"step_{final}")
    assert a["files"]["model/adapter_model.safetensors"]["sha256"] == \
           b["files"]["model/adapter_model.safetensors"]["sha256"]
