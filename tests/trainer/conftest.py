"""Fixtures for the trainer's tests: a small training config and helpers to run and inspect runs.

    cfg_file(**overrides)        a YAML config (TEST_CONFIG with "section.key" overrides) -> Path
    kit.new_run(cache, dir, cfg) a fresh root with the tiny model and one finished run
    kit.run_inprocess(argv)      rl_runner.main(argv) in this process -> (exit code, run name, stderr)
    kit.spawn(module, args)      a real `python -m module ...` subprocess (Popen, output to a file)
    kit.adapter(step_dir)        the adapter's tensors {name: tensor}
    kit.log(root, run)           train_log.jsonl as {step: last line for that step}
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))  # for fake_hub (pytest runs in importlib mode)

# Small and quick, yet every piece is on: the warm-start adapter, beta (reference with the adapter
# disabled), num_iterations 2 (old log-probs, real ratios), a cosine schedule with warmup.
# (A loaded adapter keeps its own LoRA settings, so `lora:` would not apply here.)
TEST_CONFIG: dict[str, Any] = {
    "model": {"base": "tiny", "init_adapter": "warmstart"},
    "data": {"dataset": "arith_r1_template"},
    "rewards": [{"function": "correctness", "weight": 1.0},
                {"function": "format_strict", "weight": 0.2}],
    "grpo": {"num_generations": 4, "per_device_prompts": 2, "max_completion_length": 16,
             "num_iterations": 2, "beta": 0.04, "loss_type": "grpo", "forward_batch_size": 4},
    "optim": {"learning_rate": 1e-3, "lr_scheduler_type": "cosine", "warmup_steps": 2},
    "training": {"total_steps": 6, "save_every": 3, "keep_last": 10, "log_rollouts_every": 2,
                 "cpu_threads": 1},
}


@pytest.fixture
def cfg_file(tmp_path: Path) -> Callable[..., Path]:
    counter = iter(range(1000))

    def make(overrides: dict[str, Any] | None = None) -> Path:
        cfg = json.loads(json.dumps(TEST_CONFIG))
        for dotted, value in (overrides or {}).items():
            section, key = dotted.split(".")
            cfg.setdefault(section, {})[key] = value
        path = tmp_path / f"cfg_{next(counter)}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    return make


class Kit:
    last_stdout = ""  # what the last run_inprocess printed

    @staticmethod
    def new_run(tiny_cache: Path, folder: Path, config: dict[str, Any]) -> tuple[Path, str, Path]:
        """A fresh root in `folder` (tiny model copied from the cache) and one finished run."""
        root = folder / "localfs"
        shutil.copytree(tiny_cache / "models" / "tiny", root / "models" / "tiny")
        cfg = folder / "cfg.yaml"
        cfg.write_text(yaml.safe_dump(config))
        code, run, err = Kit.run_inprocess(["--cfg", str(cfg), "--root", str(root)])
        assert code == 0, err
        (folder / "trainer_stdout.txt").write_text(Kit.last_stdout)
        return root, run, cfg

    @staticmethod
    def run_inprocess(argv: list[str]) -> tuple[int, str | None, str]:
        from trainer import rl_runner

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = rl_runner.main(argv)
        Kit.last_stdout = out.getvalue()
        run = None
        for line in out.getvalue().splitlines():
            if line.startswith("run: "):
                run = line.split()[1]
        return code, run, err.getvalue()

    @staticmethod
    def spawn(module: str, args: list[str], log: Path, env: dict[str, str] | None = None,
              python: list[str] | None = None) -> subprocess.Popen:
        full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env or {}))
        for key in ("RLTUI_TEST_STALL_AT_STEP", "RLTUI_TEST_STEP_SLEEP", "RLTUI_TEST_SAVE_SLEEP"):
            if env is None or key not in env:
                full_env.pop(key, None)
        cmd = (python or [sys.executable, "-m", module]) + args
        handle = open(log, "ab")
        return subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)

    @staticmethod
    def run_name_from(log: Path, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("run: "):
                    return line.split()[1]
            time.sleep(0.1)
        raise AssertionError(f"no 'run:' line in {log}:\n{log.read_text()[-3000:]}")

    @staticmethod
    def wait_status(status: Path, pred: Callable[[dict], bool], timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                st = json.loads(status.read_text())
            except (OSError, ValueError):
                st = None
            if st is not None and pred(st):
                return st
            time.sleep(0.02)
        raise AssertionError(f"status {status} never matched; last: {status.read_text() if status.exists() else None}")

    @staticmethod
    def adapter(step_dir: Path) -> dict:
        from safetensors.torch import load_file

        return load_file(str(step_dir / "model" / "adapter_model.safetensors"))

    @staticmethod
    def assert_same_adapter(a: Path, b: Path) -> None:
        import torch

        ta, tb = Kit.adapter(a), Kit.adapter(b)
        assert ta.keys() == tb.keys()
        different = [k for k in ta if not torch.equal(ta[k], tb[k])]
        assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"

    @staticmethod
    def log(root: Path, run: str) -> dict[int, dict]:
        path = root / "training_runs" / run / "logs" / "train_log.jsonl"
        out: dict[int, dict] = {}
        for line in path.read_text().splitlines():
            row = json.loads(line)
            out[row["step"]] = row  # the last line of a step wins (a re-run step after a crash)
        return out


@pytest.fixture(scope="session")
def kit() -> Kit:
    return Kit()


@pytest.fixture(scope="session")
def test_config() -> dict[str, Any]:
    return json.loads(json.dumps(TEST_CONFIG))
