"""A full disk (issue 13): a real trainer on the tiny model, through `rltui --batch train`, on a
small tmpfs that is filled after its first checkpoint. Needs root (mount); skipped otherwise.

Wanted: one line naming the disk and the space needed (no traceback) from the trainer and from
the waiting command; status.json failed with that reason; step_latest still on the last complete
checkpoint and no staging left; the job ended truthfully as failed, not restarted although
auto-resume is on; a second `train` on the full disk leaves no run folder and no job folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from jobs_helpers import wait_until
from rltui.jobs import control
from rltui.jobs.records import JobState
from rltui.runs import checkpoints, localfs

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
SPARE = 96 * 1024  # room left after the filler: the logs of two steps, not a checkpoint (~0.5 MB)
CONFIG = {  # tests/trainer's small config: 6 steps, a checkpoint at 0, 3 and 6
    "model": {"base": "tiny", "init_adapter": "warmstart"},
    "data": {"dataset": "arith_r1_template"},
    "rewards": [{"function": "correctness", "weight": 1.0}],
    "grpo": {"num_generations": 4, "per_device_prompts": 2, "max_completion_length": 16,
             "num_iterations": 1, "beta": 0.0, "forward_batch_size": 4},
    "training": {"total_steps": 6, "save_every": 3, "keep_last": 10, "cpu_threads": 1},
}


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(mnt: Path, name: str, leave: int) -> Path:
    """A file that takes all free space of `mnt` but `leave` bytes."""
    path = mnt / name
    free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
    with open(path, "wb") as f:
        try:
            f.write(b"\0" * max(0, free - leave))
        except OSError:
            pass
    return path


def rltui(root: Path, *args: str, env: dict | None = None, timeout: float = 300):
    return subprocess.run([sys.executable, "-m", "rltui.cli", "--batch", *args, "--root", str(root)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_a_save_into_a_full_disk_ends_in_one_line_and_is_not_restarted(small_disk, tiny_cache, tmp_path):
    import shutil

    root = small_disk / "localfs"
    shutil.copytree(tiny_cache / "models" / "tiny", root / "models" / "tiny")
    layout = localfs.Layout(root)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    env = {"RLTUI_TEST_STEP_SLEEP": "1.0"}
    cli = subprocess.Popen([sys.executable, "-m", "rltui.cli", "--batch", "train", "--cfg", str(cfg),
                            "--auto-resume", "--root", str(root)], cwd=REPO, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    run = wait_until(lambda: next(iter(os.listdir(layout.training_runs)), None)
                     if layout.training_runs.is_dir() else None, 120, "the run folder")

    def past_step_0() -> bool:
        try:
            st = localfs.read_json(layout.run_status(run))
        except (OSError, localfs.DamagedFile):
            return False
        return st.get("latest_checkpoint") == 0 and st.get("phase") != "saving"

    wait_until(past_step_0, 180, "checkpoint 0")
    filler = fill(small_disk, "filler", SPARE)
    out, err = cli.communicate(timeout=300)
    assert "Traceback" not in out + err, (out + err)[-3000:]
    assert cli.returncode == 1, err

    lines = [x for x in out.splitlines() if x.startswith("rl_runner: ")]  # the trainer's own words
    assert len(lines) == 1 and lines[0].startswith("rl_runner: error: disk full: "), out[-3000:]
    assert f"{small_disk} (for {layout.training_state(run)})" in lines[0]
    assert "checkpoint step 3 needs about" in lines[0] and " free" in lines[0]
    status = localfs.read_json(layout.run_status(run))
    assert status["phase"] == "failed" and status["error"].startswith("disk full: ")
    state = layout.training_state(run)
    assert checkpoints.read_step_latest(state) == 0 and checkpoints.is_complete(state / "step_0")
    assert checkpoints.list_staging_dirs(state) == []
    [job] = control.list_jobs(layout)
    assert job.state.state is JobState.FAILED and job.state.restarts == 0  # auto-resume did not loop
    assert "exit code 28 (disk full); a restart would fail the same way" in job.state.last_reason
    assert f"job {job.id} failed" in err

    # a second train on the disk now full: one line, no run folder, no job folder. First the
    # first job's keeper has to be gone: a state.json it replaced after the fill would free the
    # old file's pages, and the second job's record would fit (seen once in CI)
    keeper = job.state.keeper_pid
    wait_until(lambda: keeper is None or not os.path.exists(f"/proc/{keeper}"), 60, "the first job's keeper to exit")
    fill(small_disk, "filler2", 0)
    runs_before, jobs_before = sorted(os.listdir(layout.training_runs)), sorted(os.listdir(layout.jobs))
    second = rltui(root, "train", "--cfg", str(cfg))
    assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr
    assert second.stderr.strip().splitlines() == [
        second.stderr.strip()] and "disk full: " in second.stderr and str(small_disk) in second.stderr
    assert sorted(os.listdir(layout.training_runs)) == runs_before
    assert sorted(os.listdir(layout.jobs)) == jobs_before
    filler.unlink()
    (small_disk / "filler2").unlink()


def test_the_keeper_records_the_jobs_end_once_space_returns(small_disk, tmp_path):
    """A job that ends while even state.json cannot be written: the keeper keeps trying, and
    the job reads failed once space returns (not `running (keeper gone)`)."""
    layout = localfs.Layout(small_disk / "localfs").ensure()
    from jobs_helpers import fake_train_spec

    marker = tmp_path / "go"
    script = f"import os, time\nwhile not os.path.exists({str(marker)!r}): time.sleep(0.05)\nraise SystemExit(1)"
    spec = fake_train_spec(layout).with_changes(argv=(sys.executable, "-c", script), resume_argv=None)
    control.launch(layout, spec)
    wait_until(lambda: control.read_job(layout, spec.id).phase is JobState.RUNNING, 60, "running")
    filler = fill(small_disk, "filler", 0)
    marker.touch()
    time.sleep(3)  # the keeper meets a full disk and waits
    job = control.read_job(layout, spec.id)
    assert job.phase is JobState.RUNNING and control.keeper_gone(job.state, job_id=spec.id) is None
    filler.unlink()
    final = wait_until(lambda: (j := control.read_job(layout, spec.id)).phase.final and j, 60, "the end")
    assert final.state.state is JobState.FAILED and final.state.exit_code == 1
    assert json.loads(layout.job_state(spec.id).read_text())["state"] == "failed"
