"""The Slurm backend's pure parts, without Slurm: settings and flags, the batch script, the state
map from Slurm's words and the script's attempt records."""

from __future__ import annotations

from pathlib import Path

import pytest

from rltui.errors import UsageError
from rltui.jobs.backends.slurm import SlurmRow, map_state, one_line
from rltui.jobs.backends.slurm_script import batch_script
from rltui.jobs.backends.slurm_spec import SlurmSpec, read_settings
from rltui.jobs.records import JobKind, JobSpec, JobState, StateFile
from rltui.runs.localfs import Layout


def test_flags_win_over_the_settings_file_and_sbatch_args_add_up(tmp_path: Path):
    (tmp_path / "settings").mkdir()
    (tmp_path / "settings" / "slurm.yaml").write_text(
        "partition: gpu\naccount: team\ntime: '4:00:00'\nsbatch_args: ['--qos=high']\n")
    spec = SlurmSpec.from_flags(read_settings(Layout(tmp_path)), partition="debug", nodes=2,
                                sbatch_args=["--exclusive"], time=None)
    assert (spec.partition, spec.account, spec.time, spec.nodes) == ("debug", "team", "4:00:00", 2)
    assert spec.sbatch_args == ("--qos=high", "--exclusive")
    assert SlurmSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize("text, named", [
    ("partitoin: gpu\n", "unknown Slurm setting 'partitoin'"),
    ("nodes: 0\n", "bad nodes: 0"),
    ("time: soon\n", "bad time: 'soon'"),
    ("sbatch_args: --qos=high\n", "bad sbatch-arg"),
    ("python: venv/bin/python\n", "bad python"),
])
def test_a_bad_setting_is_one_line_naming_it(tmp_path: Path, text: str, named: str):
    (tmp_path / "settings").mkdir()
    (tmp_path / "settings" / "slurm.yaml").write_text(text)
    with pytest.raises(UsageError, match=named.replace("(", r"\(")):
        read_settings(Layout(tmp_path))


def test_the_batch_script_asks_for_what_the_job_needs(tmp_path: Path):
    layout = Layout(tmp_path)
    spec = JobSpec(id="j1", kind=JobKind.TRAIN, argv=("py", "-m", "trainer.rl_runner", "--cfg", "c.yaml"),
                   run="run_x", slurm=SlurmSpec(nodes=4, gpus_per_node=8, partition="gpu", time="1:00:00",
                                                signal_before_s=120, sbatch_args=("--qos=high",)))
    text = batch_script(layout, spec, "/venv/bin/python")
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --requeue",
                 "#SBATCH --gpus-per-node=8", "#SBATCH --signal=B:TERM@120", "#SBATCH --partition=gpu",
                 "#SBATCH --time=1:00:00", "#SBATCH --qos=high", "#SBATCH --open-mode=append",
                 f"#SBATCH --output={layout.job_log('j1')}"):
        assert line in text.splitlines()
    assert "--nproc-per-node=8" in text and "--rdzv-backend=c10d" in text and '--rdzv-id="$SLURM_JOB_ID"' in text
    evaluation = spec.with_changes(kind=JobKind.EVAL, argv=("py", "-m", "evaluator.eval_batch"))
    text = batch_script(layout, evaluation, "/venv/bin/python")
    assert "#SBATCH --ntasks=1" in text and "torch.distributed.run" not in text and "--requeue\n" not in text


def _state(**kw) -> StateFile:
    return StateFile(JobState.QUEUED, run="run_x", slurm_job_id="7", **kw)


@pytest.mark.parametrize("row, attempts, want, reason", [
    (SlurmRow("7", "PENDING", "Resources"), [], JobState.QUEUED, "Slurm: PENDING (Resources)"),
    (SlurmRow("7", "PENDING", "BeginTime", restarts=1), [{"event": "begin"}], JobState.RESTARTING, "BeginTime"),
    (SlurmRow("7", "RUNNING", nodes="n[1-2]"), [], JobState.RUNNING, "running on n[1-2]"),
    (SlurmRow("7", "REQUEUED"), [], JobState.RESTARTING, "REQUEUED"),
    (SlurmRow("7", "PREEMPTED"), [], JobState.RESTARTING, "PREEMPTED"),
    (SlurmRow("7", "COMPLETED"), [{"event": "end", "outcome": "succeeded", "reason": "completed at step 4", "time": 1}],
     JobState.SUCCEEDED, "completed at step 4"),
    (SlurmRow("7", "COMPLETED"), [{"event": "end", "outcome": "stopped", "reason": "saved at step 3", "time": 1}],
     JobState.STOPPED, "saved at step 3"),
    (SlurmRow("7", "TIMEOUT"), [], JobState.FAILED, "time limit reached before a save"),
    (SlurmRow("7", "FAILED", "NonZeroExitCode"), [], JobState.FAILED, "FAILED (NonZeroExitCode)"),
    (SlurmRow("7", "NODE_FAIL"), [], JobState.FAILED, "NODE_FAIL"),
    (SlurmRow("7", "CANCELLED"), [], JobState.STOPPED, "cancelled in Slurm"),
    (None, [{"event": "end", "outcome": "failed", "reason": "exit 1", "time": 1}], JobState.FAILED, "exit 1"),
    (None, [{"event": "begin", "time": 1}], JobState.LOST, "Slurm no longer knows job 7"),
])
def test_slurms_states_map_onto_rltuis(tmp_path: Path, row, attempts, want, reason):
    new = map_state(_state(), row, attempts, tmp_path, now=100.0)
    assert new.state is want
    assert reason in (new.last_reason or "")
    if want.final:
        assert new.ended_at == 100.0


def test_a_time_limit_after_a_save_is_stopped(tmp_path: Path):
    (tmp_path / "training_runs" / "run_x").mkdir(parents=True)
    (tmp_path / "training_runs" / "run_x" / "status.json").write_text('{"phase": "stopped", "step": 3}')
    job_dir = tmp_path / "jobs" / "j1"
    job_dir.mkdir(parents=True)
    new = map_state(_state(), SlurmRow("7", "TIMEOUT"), [], job_dir)
    assert new.state is JobState.STOPPED


def test_restart_counts_come_from_slurm(tmp_path: Path):
    new = map_state(_state(), SlurmRow("7", "RUNNING", restarts=2), [], tmp_path)
    assert new.restarts == 2 and new.slurm_state == "RUNNING"


def test_slurms_errors_become_one_line():
    text = "sbatch: error: invalid partition specified: nosuch\nsbatch: error: Batch job submission failed: x\n"
    assert one_line(text) == "invalid partition specified: nosuch; Batch job submission failed: x"


def test_a_failed_start_keeps_its_own_line_on_why_and_a_later_start_drops_it(tmp_path: Path):
    from rltui.jobs.backends.slurm_attempt import Attempt, read_attempts

    layout = Layout(tmp_path).ensure()
    spec = JobSpec(id="j1", kind=JobKind.EVAL, argv=("py", "-m", "evaluator.eval_batch"), run="run_x")
    layout.job_dir("j1").mkdir(parents=True)
    (layout.job_dir("j1") / "job.json").write_text(__import__("json").dumps(spec.to_json()))
    log = layout.job_log("j1")
    log.write_text("eval_batch: error: an earlier start's line\n")
    attempt = Attempt(layout.job_dir("j1"))
    attempt._go(["-m", "evaluator.eval_batch"], None, None)
    assert attempt.end(1) == 1  # this start printed nothing of its own
    assert read_attempts(layout.job_dir("j1"))[-1]["cause"] is None
    Attempt(layout.job_dir("j1"))._go(["-m", "evaluator.eval_batch"], None, None)
    with open(log, "a") as f:
        f.write("Traceback (most recent call last):\n  File \"x\", line 1\ntorch.OutOfMemoryError: CUDA out of memory\n")
    assert Attempt(layout.job_dir("j1")).end(1) == 1
    events = read_attempts(layout.job_dir("j1"))
    assert events[-1]["cause"] == "torch.OutOfMemoryError: CUDA out of memory"

    failed = map_state(_state(), SlurmRow("7", "FAILED", "NonZeroExitCode"), events, layout.job_dir("j1"), now=9e9)
    assert failed.state is JobState.FAILED and failed.cause == "torch.OutOfMemoryError: CUDA out of memory"
    later = [*events, {"event": "begin", "time": events[-1]["time"] + 1}]
    running = map_state(_state(), SlurmRow("7", "RUNNING"), later, layout.job_dir("j1"))
    assert running.cause is None
