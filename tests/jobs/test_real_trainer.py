"""Jobs running the real trainer on the tiny model (cached build): the waiting `train` command,
`--detach --json`, and a stalled trainer detected by the keeper and resumed from its checkpoint.
(The SIGKILL -> automatic resume -> completed promise with the real trainer is in test_demo.py.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rltui.jobs import builders, control
from rltui.jobs.records import JobState
from rltui.runs.localfs import Layout, read_json
from rltui.jobs.policy import RestartSettings

from jobs_helpers import wait_final

pytestmark = pytest.mark.slow
TINY_CFG = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"


def rltui(root, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "rltui.cli", "--root", str(root), "--batch", *args],
                          capture_output=True, text=True, timeout=timeout, env=dict(os.environ))


def test_train_waits_streams_the_trainers_output_and_exits_with_its_result(tiny_root):
    r = rltui(tiny_root, "train", "--cfg", str(TINY_CFG), "--steps", "2", "--gpus", "none")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "completed at step 2" in r.stdout and "succeeded: completed" in r.stdout
    assert "succeeded" in r.stderr.splitlines()[-1]
    (job,) = control.list_jobs(Layout(tiny_root))
    assert read_json(Layout(tiny_root).run_status(job.spec.run))["step"] == 2


def test_train_detach_json_returns_the_job_at_once(tiny_root):
    r = rltui(tiny_root, "train", "--cfg", str(TINY_CFG), "--steps", "1", "--gpus", "none",
              "--detach", "--json", "--eval-after", "arith_r1_template")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["spec"]["kind"] == "train" and doc["spec"]["followups"] == [
        {"kind": "eval", "dataset": "arith_r1_template"}]
    assert doc["state"]["state"] in ("starting", "running")
    final = wait_final(Layout(tiny_root), doc["id"], 300)
    assert final.state is JobState.SUCCEEDED


def test_a_stalled_real_trainer_is_detected_killed_and_resumed(tiny_root):
    layout = Layout(tiny_root)
    spec = builders.train_job(layout, TINY_CFG, steps=4, gpus=0, restart=RestartSettings(
        auto_resume=True, max_restarts=1, backoff_s=0.5, hang_timeout_s=20))
    spec = spec.with_changes(env={**spec.env, "RLTUI_TEST_STALL_AT_STEP": "2"})
    job = control.launch(layout, spec)
    final = wait_final(layout, job.id, 400)
    assert final.restarts == 1
    hung = [r for r in final.reasons if r.startswith("hung: no progress")]
    assert hung[0].endswith("restart 1 from checkpoint step 0 in 0.5s")  # tiny.yaml saves step 0, then every 50
    log = control.read_log(layout, job.id)
    assert "--from-step 0 --no-torchrun" in log  # "latest" resolved by the keeper, passed as a number
    status = read_json(layout.run_status(job.spec.run))
    if final.state is JobState.SUCCEEDED:  # a stall hook that fires in a fresh session only
        assert status["step"] == 4
    else:  # the hook stalls every session at step 2: hung again, and max_restarts is 1
        assert final.state is JobState.FAILED and final.last_reason.startswith("hung")
        assert "max_restarts" in final.last_reason


def test_a_two_process_torchrun_job_survives_a_killed_worker(tiny_root, tmp_path):
    import signal

    import psutil
    import yaml

    from rltui.jobs.records import read_state
    from rltui.runs.checkpoints import latest_complete_step

    from jobs_helpers import wait_until

    layout = Layout(tiny_root)
    cfg = yaml.safe_load(TINY_CFG.read_text())
    cfg["training"]["save_every"] = 2
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    spec = builders.train_job(layout, cfg_path, steps=8, nproc=2, gpus=0,
                          restart=RestartSettings(auto_resume=True, backoff_s=0.5))
    assert spec.env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1" and int(spec.env["RLTUI_NCCL_TIMEOUT_S"]) < 600
    job = control.launch(layout, spec)
    wait_until(lambda: (latest_complete_step(layout.training_state(job.spec.run)) or 0) >= 2, 300,
               "checkpoint 2")
    workers = psutil.Process(read_state(layout, job.id).child_pid).children(recursive=True)
    assert len(workers) == 2  # torchrun's two ranks, in the job's process group
    workers[-1].send_signal(signal.SIGKILL)
    final = wait_final(layout, job.id, 400)
    assert final.state is JobState.SUCCEEDED and final.restarts == 1
    status = read_json(layout.run_status(job.spec.run))
    assert (status["step"], status["world_size"], status["phase"]) == (8, 2, "completed")
    assert re.search(r"--from-step \d+ --root", control.read_log(layout, job.id))  # torchrun again, no --no-torchrun
