"""`rltui --batch demo` end to end on the tiny model (cached build), as CI runs it: real trainer,
real evaluator, real keeper, a real SIGKILL of the trainer and its automatic resume."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest

from rltui.jobs import control
from rltui.jobs.records import JobKind, JobState
from rltui.runs.localfs import Layout, read_json

pytestmark = pytest.mark.slow


def test_the_demo_runs_every_stage_and_survives_the_sigkill(tiny_root):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RLTUI_S3", "AWS_"))}
    env["RLTUI_S3_ENV"] = str(tiny_root / "no-s3-settings.env")
    r = subprocess.run([sys.executable, "-m", "rltui.cli", "--root", str(tiny_root), "--batch", "demo",
                        "--steps", "20", "--eval-subset", "0.05"],
                       capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    for stage in ("1. build the tiny model", "2. train from the warm-start", "3. evaluate",
                  "4. resume, then kill the trainer with SIGKILL", "5. evaluate", "6. consolidated metrics",
                  "7. back up to S3"):
        assert f"== {stage}" in out
    assert "skipped: no S3 settings" in out and f"rltui --root {tiny_root}" in out
    assert "\x1b" not in out

    layout = Layout(tiny_root)
    by_kind = {}
    for job in control.list_jobs(layout):
        by_kind.setdefault(job.spec.kind, []).append(job)
    (train,), (resume,) = by_kind[JobKind.TRAIN], by_kind[JobKind.RESUME]
    assert train.phase is JobState.STOPPED and train.state.restarts == 0
    assert resume.phase is JobState.SUCCEEDED and resume.state.restarts == 1
    assert any("killed by SIGKILL; restart 1 from checkpoint" in x for x in resume.state.reasons)
    assert [j.phase for j in by_kind[JobKind.EVAL]] == [JobState.SUCCEEDED] * 2
    assert all(not j.state.gpus for js in by_kind.values() for j in js)  # --gpus none: the CPU

    run = train.spec.run
    status = read_json(layout.run_status(run))
    assert (status["phase"], status["step"]) == ("completed", 20)
    (metrics,) = layout.eval_runs.glob(f"{run}_*/consolidated_metrics.csv")
    steps = [int(row["step"]) for row in csv.DictReader(open(metrics))]
    assert steps[0] == 0 and steps[-1] == 20 and steps == sorted(set(steps))
