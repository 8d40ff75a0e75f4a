"""Training under a real Slurm: completes; requeued mid-run it resumes exactly; stop saves; a
crash's Python exception is the failed job's cause."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slurm_kit import run_cli, wait_for

pytestmark = pytest.mark.slow


def job_record(root: Path, job_id: str) -> tuple[dict, dict]:
    d = root / "jobs" / job_id
    return json.loads((d / "job.json").read_text()), json.loads((d / "state.json").read_text())


def test_a_training_job_on_slurm_completes(slurm_cluster, slurm_root, slurm_cfg):
    done = run_cli(slurm_cluster, slurm_root, "train", "--cfg", str(slurm_cfg(training__total_steps=2)),
                   "--backend", "slurm", "--gpus", "none")
    assert done.returncode == 0, done.stderr + done.stdout
    (job_id,) = [p.name for p in (slurm_root / "jobs").iterdir()]
    spec, state = job_record(slurm_root, job_id)
    assert spec["backend"] == "slurm" and spec["slurm"]["job_id"].isdigit()
    assert state["state"] == "succeeded" and state["slurm_state"].startswith("COMPLETED")
    script = (slurm_root / "jobs" / job_id / "slurm.sh").read_text()
    assert "--rdzv-backend=c10d" in script and "#SBATCH --requeue" in script
    status = json.loads((slurm_root / "training_runs" / spec["run"] / "status.json").read_text())
    assert status["phase"] == "completed" and status["step"] == 2

    # an evaluation is a one-task allocation, no torchrun
    done = run_cli(slurm_cluster, slurm_root, "eval", "--training-run", spec["run"], "--steps", "2",
                   "--subset-frac", "0.01", "--backend", "slurm", "--gpus", "none")
    assert done.returncode == 0, done.stderr + done.stdout
    (eval_dir,) = (slurm_root / "eval_runs").iterdir()
    (summary,) = eval_dir.glob("step_2_*/summary.json")
    assert json.loads(summary.read_text())["error"] is None


def adapter(step_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(step_dir / "model" / "adapter_model.safetensors"))


def submit(cluster, root: Path, *args: str, env: dict | None = None) -> tuple[str, str]:
    done = run_cli(cluster, root, *args, "--backend", "slurm", "--gpus", "none", "--detach", env=env)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    spec, _ = job_record(root, job_id)
    return job_id, spec["slurm"]["job_id"]


def run_status(root: Path, job_id: str) -> dict:
    spec, _ = job_record(root, job_id)
    try:
        return json.loads((root / "training_runs" / spec["run"] / "status.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def refreshed_state(cluster, root: Path, job_id: str) -> dict:
    """state.json after a `jobs` command has asked Slurm (what every reader sees)."""
    assert run_cli(cluster, root, "jobs").returncode == 0
    return job_record(root, job_id)[1]


def test_requeue_mid_run_resumes_from_step_latest_and_ends_bitwise_identical(
        slurm_cluster, slurm_root, slurm_cfg, tmp_path):
    import subprocess
    import sys

    import torch

    cfg = slurm_cfg(training__total_steps=4)
    # the same run, never interrupted, as a plain process
    ref_root = tmp_path / "ref"
    (ref_root / "training_runs" / "ref").mkdir(parents=True)
    (ref_root / "models").symlink_to(slurm_root / "models")
    subprocess.run([sys.executable, "-m", "trainer.rl_runner", "--cfg", str(cfg), "--root", str(ref_root),
                    "--run-name", "ref"], check=True, capture_output=True, cwd=Path(__file__).parents[2])

    job_id, slurm_id = submit(slurm_cluster, slurm_root, "train", "--cfg", str(cfg),
                              env={"RLTUI_TEST_STEP_SLEEP": "1.5"})
    wait_for(lambda: (run_status(slurm_root, job_id).get("step") or 0) >= 2, 240, "step 2 under Slurm")
    slurm_cluster.run(["scontrol", "requeue", slurm_id])
    # Slurm holds a requeued job for the credential lifetime (BeginTime; cred_expire=10 s here)
    wait_for(lambda: "PENDING" in slurm_cluster.run(["squeue", "-h", "-j", slurm_id, "-o", "%T"]).stdout,
             60, "the requeued job pending")
    assert refreshed_state(slurm_cluster, slurm_root, job_id)["state"] == "restarting"
    state = wait_for(lambda: (s := refreshed_state(slurm_cluster, slurm_root, job_id))["state"]
                     in ("succeeded", "failed", "stopped", "lost") and s, 300, "the job's end")
    assert state["state"] == "succeeded", state
    assert state["restarts"] == 1
    attempts = [json.loads(line) for line in (slurm_root / "jobs" / job_id / "attempts.jsonl").read_text().splitlines()]
    begins = [a for a in attempts if a["event"] == "begin"]
    assert [b["restart"] for b in begins] == [0, 1]
    assert begins[0]["resume_step"] is None and begins[1]["resume_step"] >= 2
    run = job_record(slurm_root, job_id)[0]["run"]
    got = adapter(slurm_root / "training_runs" / run / "training_state" / "step_4")
    want = adapter(ref_root / "training_runs" / "ref" / "training_state" / "step_4")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_stop_saves_at_a_step_boundary_and_the_job_ends_stopped(slurm_cluster, slurm_root, slurm_cfg):
    job_id, _ = submit(slurm_cluster, slurm_root, "train", "--cfg", str(slurm_cfg(training__total_steps=50)),
                       env={"RLTUI_TEST_STEP_SLEEP": "1"})
    wait_for(lambda: (run_status(slurm_root, job_id).get("step") or 0) >= 1, 240, "step 1 under Slurm")
    done = run_cli(slurm_cluster, slurm_root, "stop", job_id, "--wait")
    assert done.returncode == 0, done.stderr
    state = job_record(slurm_root, job_id)[1]
    assert state["state"] == "stopped", state
    status = run_status(slurm_root, job_id)
    assert status["phase"] == "stopped" and 1 <= status["step"] < 50
    run = job_record(slurm_root, job_id)[0]["run"]
    latest = slurm_root / "training_runs" / run / "training_state" / "step_latest"
    assert latest.resolve().name == f"step_{status['step']}"


def test_a_bad_partition_is_exit_2_with_slurms_reason_in_one_line(slurm_cluster, slurm_root, slurm_cfg):
    done = run_cli(slurm_cluster, slurm_root, "train", "--cfg", str(slurm_cfg()), "--backend", "slurm",
                   "--partition", "nosuch")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "invalid partition" in done.stderr.lower(), done.stderr
    assert "Traceback" not in done.stderr
    assert not any((slurm_root / "jobs").iterdir()) and not any((slurm_root / "training_runs").iterdir())


def test_kill_of_a_held_job_cancels_it_in_slurm(slurm_cluster, slurm_root, slurm_cfg):
    job_id, slurm_id = submit(slurm_cluster, slurm_root, "train", "--cfg", str(slurm_cfg()), "--sbatch-arg=--hold")
    done = run_cli(slurm_cluster, slurm_root, "kill", job_id, "--wait")
    assert done.returncode == 0, done.stderr
    state = job_record(slurm_root, job_id)[1]
    assert state["state"] == "stopped" and state["last_reason"] == "killed by the user", state
    assert "CANCELLED" in slurm_cluster.run(["squeue", "-h", "-t", "all", "-j", slurm_id, "-o", "%T"]).stdout


def test_a_crash_is_requeued_within_the_restart_budget_and_not_past_it(slurm_cluster, slurm_root, slurm_cfg):
    import os
    import signal

    job_id, slurm_id = submit(slurm_cluster, slurm_root, "train", "--cfg", str(slurm_cfg(training__total_steps=50)),
                              "--auto-resume", "--max-restarts", "1", env={"RLTUI_TEST_STEP_SLEEP": "1"})

    def crash_at(step: int) -> None:
        status = wait_for(lambda: (s := run_status(slurm_root, job_id)).get("step", 0) >= step
                          and s.get("phase") not in ("completed", "stopped") and s, 240, f"step {step}")
        os.kill(status["pid"], signal.SIGKILL)  # the trainer (rank 0) dies; torchrun and srun fail

    crash_at(1)
    # the script requeues its own job; Slurm holds it for the credential lifetime (cred_expire: 10 s
    # here, 120 s by default) and then starts it again by itself. (Releasing it sooner with
    # `scontrol update StartTime=now` gets it killed: "Job credential revoked".)
    wait_for(lambda: "BeginTime" in slurm_cluster.run(["squeue", "-h", "-j", slurm_id, "-o", "%r"]).stdout,
             120, "the requeued job pending")
    wait_for(lambda: refreshed_state(slurm_cluster, slurm_root, job_id)["state"] == "running"
             and len([a for a in attempts(slurm_root, job_id) if a["event"] == "begin"]) == 2, 300, "the restart")
    crash_at(run_status(slurm_root, job_id)["step"] + 1)
    state = wait_for(lambda: (s := refreshed_state(slurm_cluster, slurm_root, job_id))["state"]
                     in ("failed", "succeeded", "stopped", "lost") and s, 120, "the job's end")
    assert state["state"] == "failed" and state["restarts"] == 1, state
    ends = [a for a in attempts(slurm_root, job_id) if a["event"] == "end"]
    assert [e["outcome"] for e in ends] == ["requeued", "failed"]
    assert "requeued (restart 1/1)" in ends[0]["reason"]


def attempts(root: Path, job_id: str) -> list[dict]:
    path = root / "jobs" / job_id / "attempts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_an_exception_in_the_trainer_is_the_failed_jobs_cause_made_safe(slurm_cluster, slurm_root, slurm_cfg):
    import yaml

    from failing_reward import SHOWN
    from rltui.text import has_controls

    cfg = slurm_cfg(training__total_steps=2)
    config = yaml.safe_load(cfg.read_text())
    config["rewards"] = [{"function": "tests.slurm.failing_reward:unreachable", "weight": 1.0}]
    cfg.write_text(yaml.safe_dump(config))
    job_id, _ = submit(slurm_cluster, slurm_root, "train", "--cfg", str(cfg))  # no auto-resume
    state = wait_for(lambda: (s := refreshed_state(slurm_cluster, slurm_root, job_id))["state"]
                     in ("failed", "succeeded", "stopped", "lost") and s, 240, "the job's end")
    assert state["state"] == "failed" and state["restarts"] == 0, state
    (end,) = [a for a in attempts(slurm_root, job_id) if a["event"] == "end"]
    assert end["outcome"] == "failed", end
    assert "\x1b[31m" in (slurm_root / "jobs" / job_id / "output.log").read_text()  # the raw line is coloured
    listed = run_cli(slurm_cluster, slurm_root, "jobs", "--json")
    (job,) = [j for j in json.loads(listed.stdout) if j["id"] == job_id]
    shown = run_cli(slurm_cluster, slurm_root, "jobs")
    (line,) = [row for row in shown.stdout.splitlines() if row.startswith(job_id)]
    assert not has_controls(line), line

    # the trainer's own exception line, not a wrapper's (torchrun's ChildFailedError, srun's exit)
    assert state["cause"] == SHOWN, state
    assert end["cause"] == SHOWN, end
    assert job["state"]["cause"] == SHOWN, job["state"]
    assert SHOWN in line, line


def test_the_signal_before_the_time_limit_saves_and_the_job_ends_stopped(slurm_cluster, slurm_root, slurm_cfg):
    # a 1-minute limit, TERM 40 s before it (Slurm checks limits every ~30 s)
    done = run_cli(slurm_cluster, slurm_root, "train", "--cfg", str(slurm_cfg(training__total_steps=500)),
                   "--backend", "slurm", "--gpus", "none", "--time", "1", "--signal-before", "40",
                   env={"RLTUI_TEST_STEP_SLEEP": "1"})
    assert done.returncode == 130, done.stderr  # stopped
    (job_id,) = [p.name for p in (slurm_root / "jobs").iterdir()]
    state = job_record(slurm_root, job_id)[1]
    assert state["state"] == "stopped" and "on Slurm's TERM (time limit)" in state["last_reason"], state
    status = run_status(slurm_root, job_id)
    assert status["phase"] == "stopped" and status["step"] < 500
    assert "#SBATCH --signal=B:TERM@40" in (slurm_root / "jobs" / job_id / "slurm.sh").read_text()
