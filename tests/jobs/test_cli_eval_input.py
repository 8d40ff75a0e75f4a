"""`--batch eval` and `--eval-after` check their flags before anything is written: a dataset by
its short name (`arith`), a dataset that is not there, a checkpoint step the run does not have;
`--detach` names the job and the run; `supervise --once` says it makes one pass."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rltui.jobs import builders
from rltui.runs.localfs import create_run_dir


def rltui(root, *args, timeout=120):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "rltui.cli", "--root", str(root), "--batch", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def run_with_steps(layout):
    run = create_run_dir(layout)
    for step in (0, 5):
        layout.step_dir(run, step).mkdir(parents=True)
    return run


def test_a_short_dataset_name_resolves_to_its_full_name(layout, run_with_steps):
    spec = builders.eval_job(layout, run_with_steps, dataset="arith")
    assert spec.argv[spec.argv.index("--eval-dataset") + 1] == "arith_r1_template"
    (followup,) = builders._eval_followups("arith", layout)
    assert followup.dataset == "arith_r1_template"


@pytest.mark.parametrize("args, names", [
    (["--eval-dataset", "nosuch"], "'nosuch_r1_template' has no test split"),
    (["--eval-dataset", "gsm8k_chat_template"], "gsm8k_chat_template"),
    (["--steps", "7"], "no checkpoint at step 7"),
    (["--subset-frac", "0"], "--subset-frac"),
])
def test_bad_eval_flags_are_one_line_exit_2_and_no_job(layout, run_with_steps, args, names):
    r = rltui(layout.root, "eval", "--training-run", run_with_steps, *args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and names in r.stderr and "Traceback" not in r.stderr
    assert list(layout.jobs.iterdir()) == []


def test_supervise_once_says_one_pass(layout):
    r = rltui(layout.root, "supervise", "--once")
    assert r.returncode == 0, r.stderr
    assert "one pass" in r.stdout and "every" not in r.stdout


def test_detach_prints_the_job_id_and_names_the_run_it_creates(layout, tmp_path):
    cfg = tmp_path / "cfg.yaml"  # the trainer refuses it at once (no such model): a short job
    cfg.write_text("model: {base: no-such-model}\ndata: {dataset: arith}\n")
    r = rltui(layout.root, "train", "--cfg", str(cfg), "--gpus", "none", "--detach")
    assert r.returncode == 0, r.stderr
    (job_id,) = r.stdout.split()  # the id alone on stdout, for JOB=$(...)
    (run,) = os.listdir(layout.training_runs)
    assert f"job {job_id}" in r.stderr and f"run {run}" in r.stderr
