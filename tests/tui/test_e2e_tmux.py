"""End to end in a real terminal: tmux runs `rltui --root DIR` over a tiny run trained by the real
trainer; keys launch an evaluation; the job appears, runs and succeeds; quitting leaves its record.

Needs tmux (`make test` installs it). Takes about a minute on a CPU: two training steps of the
tiny model, then one evaluated checkpoint on 5% of the test split.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[2]
RLTUI = Path(sys.executable).with_name("rltui")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("tmux") is None,
                       reason="tmux not found: install it (make test does) to run the terminal test"),
]


class Tmux:
    """One tmux server of our own (its own socket), one window of a fixed size."""

    def __init__(self, width: int = 100, height: int = 30) -> None:
        self.socket = f"rltui-test-{uuid.uuid4().hex[:8]}"
        self.width, self.height = width, height

    def tmux(self, *args: str) -> str:
        out = subprocess.run(["tmux", "-L", self.socket, *args], check=True,
                             capture_output=True, text=True, timeout=30)
        return out.stdout

    def start(self, command: str, env: dict[str, str]) -> None:
        exports = " ".join(f"{k}={v}" for k, v in env.items())
        # the shell stays after rltui exits, so the pane can show what it printed on quitting
        self.tmux("new-session", "-d", "-s", "t", "-x", str(self.width), "-y", str(self.height),
                  f"cd {REPO} && env {exports} {command}; echo RLTUI_EXITED $?; sleep 600")

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "t")

    def keys(self, *keys: str, pause: float = 0.4) -> None:
        """Send keys one at a time, as a person types (Textual moves focus between keys)."""
        for key in keys:
            self.tmux("send-keys", "-t", "t", key)
            time.sleep(pause)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.screen()
            if predicate(text):
                return text
            time.sleep(0.25)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; screen:\n{self.screen()}")

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30)


def train_tiny_run(root: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "trainer.rl_runner", "--cfg", "configs/tiny.yaml",
                    "--root", str(root), "--steps", "2"], cwd=REPO, env=env, check=True,
                   capture_output=True, timeout=600)
    (run,) = [p.name for p in (root / "training_runs").iterdir()]
    return run


def eval_jobs(root: Path) -> list[Path]:
    jobs = root / "jobs"
    return [p for p in jobs.iterdir() if (p / "job.json").exists()
            and json.loads((p / "job.json").read_text())["kind"] == "eval"] if jobs.is_dir() else []


def job_state(job: Path) -> str:
    try:
        return json.loads((job / "state.json").read_text())["state"]
    except (OSError, ValueError, KeyError):
        return "?"


@pytest.fixture
def terminal():
    tmux = Tmux()
    yield tmux
    tmux.kill()


def test_keys_launch_an_evaluation_that_runs_and_succeeds_and_outlives_quitting(
    tiny_root: Path, terminal: Tmux
) -> None:
    run = train_tiny_run(tiny_root)
    terminal.start(f"{RLTUI} --root {tiny_root}", {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    terminal.wait_for(lambda s: run in s and "completed" in s, 60, "the trained run in the table")
    terminal.wait_for(lambda s: "watch: inotify" in s, 30, "the watcher to start")

    terminal.keys("e")
    terminal.wait_for(lambda s: f"Evaluate {run}" in s, 30, "the evaluate form")
    terminal.keys("Tab", "2", "Tab", "0.05", "Enter")
    terminal.wait_for(lambda s: "launched job" in s or "-eval-" in s, 30, "the launch notice")
    job = eval_jobs_wait(tiny_root)

    terminal.keys("2")
    terminal.wait_for(lambda s: job.name in s, 30, "the job in the jobs pane")
    terminal.wait_for(lambda s: "✓ succeeded" in s and job.name in s, 300, "the job to succeed on screen")
    assert job_state(job) == "succeeded"
    argv = json.loads((job / "job.json").read_text())["argv"]
    assert argv[1:] == ["-m", "evaluator.eval_batch", "--training-run", run, "--eval-dataset",
                        "arith_r1_template", "--steps", "2", "--subset-frac", "0.05",
                        "--root", str(tiny_root)]
    assert (tiny_root / "eval_runs" / f"{run}_arith_r1_template" / "consolidated_metrics.csv").is_file()

    terminal.keys("q")
    screen = terminal.wait_for(lambda s: "RLTUI_EXITED" in s, 30, "rltui to exit")
    assert "RLTUI_EXITED 0" in screen
    assert "rltui: no jobs running." in screen
    assert job_state(job) == "succeeded"  # the record remains after the TUI is gone
    assert (job / "output.log").read_text().count("succeeded") >= 1


def eval_jobs_wait(root: Path, timeout: float = 30.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = eval_jobs(root)
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no eval job record appeared under {root / 'jobs'}")
