"""`rltui --batch sync` is a job (kind sync, its record under ROOT/jobs/ID/) that the command
follows, and `--dry-run` works without a bucket. Real subprocesses, moto's server for S3."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rltui.cli.follow import wait_and_stream
from rltui.jobs import control
from rltui.jobs.records import Job, JobState
from rltui.runs.localfs import Layout
from tests.archive.conftest import REPO, S3Env


def _jobs(s3: S3Env) -> list[Job]:
    return control.list_jobs(Layout(s3.root))


def _only_job(s3: S3Env) -> Job:
    jobs = _jobs(s3)
    assert len(jobs) == 1, [j.id for j in jobs]
    return jobs[0]


def _no_bucket_env(s3: S3Env, tmp_path: Path) -> dict[str, str]:
    """s3's environment with a settings file that names no bucket (credentials only)."""
    settings = tmp_path / "no_bucket.env"
    settings.write_text("AWS_ACCESS_KEY_ID=AKIAUNUSED\nAWS_SECRET_ACCESS_KEY=unused-secret\n")
    settings.chmod(0o600)
    return {**s3.env, "RLTUI_S3_ENV": str(settings)}


def _would_upload(stdout: str) -> dict[str, str]:
    """path -> size as the dry run printed it."""
    out = {}
    for line in stdout.splitlines():
        if line.startswith("  would upload "):
            path, _, size = line[len("  would upload "):].rpartition(" (")
            out[path] = size.rstrip(")")
    return out


def test_dry_run_without_bucket_settings_lists_every_file_and_succeeds(s3, make_run, tmp_path):
    run = make_run(steps=(1,))
    proc = s3.cli("--action", "backup", "--training-run", run.name, "--dry-run", module=False,
                  env=_no_bucket_env(s3, tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    notes = [line for line in proc.stdout.splitlines() if "nothing was compared with a bucket" in line]
    assert len(notes) == 1 and "RLTUI_S3_BUCKET is not set" in notes[0]
    listed = _would_upload(proc.stdout)
    assert set(listed) == set(run.files())  # every file of the run and its evaluations
    assert listed[f"training_runs/{run.name}/config.yaml"].endswith(" B")
    distinct = len(set(run.files().values()))  # identical contents count once
    assert f"{run.name}: dry run: would upload {distinct} file(s)" in proc.stdout
    job = _only_job(s3)
    assert job.spec.kind.value == "sync" and "--dry-run" in job.spec.argv
    assert job.phase is JobState.SUCCEEDED and job.state.exit_code == 0


def test_dry_run_of_every_run_without_a_bucket_gives_the_total(s3, make_run, tmp_path):
    make_run(run="run_2026-01-01_00-00-01", steps=(1,))
    make_run(run="run_2026-01-01_00-00-02", steps=(1,))
    proc = s3.cli("--action", "backup-all", "--dry-run", "--cleanup", module=False,
                  env=_no_bucket_env(s3, tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "from 2 run(s)" in proc.stdout.splitlines()[-1] and "in all" in proc.stdout
    assert "would delete" in proc.stdout  # what the cleanup would do after such a backup
    assert all(Layout(s3.root).run_dir(n).is_dir() for n in ("run_2026-01-01_00-00-01",
                                                             "run_2026-01-01_00-00-02"))


class _Hangup:
    """A loopback port that accepts each connection and closes it at once; counts them."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()


def test_dry_run_with_an_unreachable_endpoint_says_so_after_one_attempt(s3, make_run):
    run = make_run(steps=(1,))
    gone = _Hangup()
    try:
        proc = s3.cli("--action", "backup", "--training-run", run.name, "--dry-run", module=False,
                      env={**s3.env, "AWS_ENDPOINT_URL_S3": gone.url})
    finally:
        gone.sock.close()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    note = next(line for line in proc.stdout.splitlines() if "nothing was compared" in line)
    assert f"{gone.url} is unreachable" in note
    assert gone.accepted == 1  # one attempt, no retries
    assert set(_would_upload(proc.stdout)) == set(run.files())


def test_dry_run_with_the_bucket_compares_with_it(s3, make_run):
    run = make_run(steps=(1,))
    assert s3.cli("--action", "backup", "--training-run", run.name, module=False).returncode == 0
    layout = Layout(s3.root)
    layout.train_log(run.name).write_text('{"step": 1, "reward": 0.5}\n')
    proc = s3.cli("--action", "backup", "--training-run", run.name, "--dry-run", module=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "nothing was compared" not in proc.stdout
    assert list(_would_upload(proc.stdout)) == [f"training_runs/{run.name}/logs/train_log.jsonl"]


def test_batch_sync_leaves_a_succeeded_job_that_jobs_lists(s3, make_run):
    run = make_run(steps=(1,))
    proc = s3.cli("--action", "backup", "--training-run", run.name, module=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{run.name}: backed up" in proc.stdout
    assert "[rltui keeper" not in proc.stdout and "[rltui keeper" in proc.stderr
    job = _only_job(s3)
    assert job.spec.kind.value == "sync" and job.spec.run == run.name
    assert job.spec.argv[1:4] == ("-m", "rltui.sync_to_s3", "--action")
    assert job.phase is JobState.SUCCEEDED and job.state.exit_code == 0 and job.state.last_reason
    assert f"{run.name}: backed up" in Layout(s3.root).job_log(job.id).read_text()
    assert f"job {job.id} succeeded" in proc.stderr
    listed = subprocess.run([sys.executable, "-m", "rltui.cli", "--batch", "jobs", "--json"],
                            cwd=REPO, env=s3.env, capture_output=True, text=True, timeout=60, check=True)
    assert [j["id"] for j in json.loads(listed.stdout)] == [job.id]


def test_list_backups_json_through_the_job_is_json_alone(s3, make_run):
    run = make_run(steps=(1,))
    assert s3.cli("--action", "backup", "--training-run", run.name, module=False).returncode == 0
    proc = s3.cli("--action", "list-backups", "--json", module=False)
    assert proc.returncode == 0, proc.stderr
    assert [b["run"] for b in json.loads(proc.stdout)] == [run.name]
    assert len(_jobs(s3)) == 2


def test_batch_sync_failure_is_a_failed_job_with_the_exit_code(s3, make_run):
    run = make_run(steps=(1,))
    proc = s3.cli("--action", "backup", "--training-run", run.name, module=False,
                  env={**s3.env, "RLTUI_S3_BUCKET": "no-such-bucket-here"})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no-such-bucket-here" in proc.stdout  # the archive's one line, from the job's output
    job = _only_job(s3)
    assert job.phase is JobState.FAILED and job.state.exit_code == 2
    assert "exit code 2" in job.state.last_reason


def test_verify_not_in_sync_is_a_failed_job_exit_1(s3, make_run):
    run = make_run(steps=(1,))
    proc = s3.cli("--action", "verify", "--training-run", run.name, module=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    job = _only_job(s3)
    assert job.phase is JobState.FAILED and job.state.exit_code == 1


BAD = [
    (["--action", "backup", "--training-run", "run_2026-01-01_00-00-00"], "run_2026-01-01_00-00-00", True),
    (["--action", "restore", "--training-run", "run_x", "--dry-run"], "--dry-run", True),
    (["--action", "backup-all", "--bandwidth", "fast"], "fast", True),
    (["--action", "list-backups"], "RLTUI_S3_BUCKET", False),  # without a bucket only a dry run goes on
]


@pytest.mark.parametrize("argv,named,bucket", BAD, ids=range(len(BAD)))
def test_bad_input_is_one_line_exit_2_and_no_job(s3, tmp_path, argv, named, bucket):
    proc = s3.cli(*argv, module=False, env=s3.env if bucket else _no_bucket_env(s3, tmp_path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert named in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stdout == "" and _jobs(s3) == []


def test_cleanup_of_a_running_run_is_refused_before_any_job(s3, make_run):
    run = make_run(steps=(1,), pid=os.getpid(), phase="training")  # this process: alive
    before = sorted(p.relative_to(s3.root) for p in s3.root.rglob("*"))
    proc = s3.cli("--action", "backup", "--training-run", run.name, "--cleanup", module=False)
    assert proc.returncode == 2 and "is running" in proc.stderr and proc.stderr.count("\n") == 1
    assert sorted(p.relative_to(s3.root) for p in s3.root.rglob("*")) == before


def test_cleanup_of_a_run_being_evaluated_is_refused_and_backup_all_skips_it(s3, make_run):
    # an eval of a crashed run's checkpoints reads them: deleting them under it failed its steps
    layout = Layout(s3.root)
    run = make_run(steps=(1, 2), phase="training")  # crashed
    reader = evaluating_job(layout, run.name)
    before = sorted(p.relative_to(s3.root) for p in s3.root.rglob("*"))
    proc = s3.cli("--action", "backup", "--training-run", run.name, "--cleanup", module=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"run {run.name} is being evaluated (job {reader}): refusing to clean it up" in proc.stderr
    assert sorted(p.relative_to(s3.root) for p in s3.root.rglob("*")) == before
    from rltui.archive.backup import backup_all

    out = io.StringIO()
    backup_all(layout, s3.store(), cleanup=True, keep_latest=False, dry_run=False, out=out, err=io.StringIO())
    assert f"{run.name}: being evaluated (job {reader}); skipped" in out.getvalue()
    assert layout.step_dir(run.name, 1).exists()
    proc = s3.cli("--action", "backup", "--training-run", run.name, "--detach", module=False)
    assert proc.returncode == 0, proc.stderr  # a backup alone reads: not refused
    done = make_run(run="run_2026-01-02_03-04-06", steps=(1,), phase="completed")  # never "running"
    reader = evaluating_job(layout, done.name)
    proc = s3.cli("--action", "backup", "--training-run", done.name, "--cleanup", module=False)
    assert proc.returncode == 2 and f"being evaluated (job {reader})" in proc.stderr, proc.stderr


def evaluating_job(layout: Layout, run: str) -> str:
    """An eval job of `run` that a reader takes for running: its keeper is this test's process."""
    from rltui.jobs import builders
    from rltui.jobs.ownership import start_ticks
    from rltui.jobs.records import JobKind, JobSpec, StateFile, create_job
    from rltui.runs.machine import boot_time

    spec = JobSpec(id=builders.new_job_id(JobKind.EVAL), kind=JobKind.EVAL, run=run, title="eval", argv=("true",))
    create_job(layout, spec, StateFile(state=JobState.RUNNING, run=run, keeper_pid=os.getpid(),
                                       keeper_start=start_ticks(os.getpid()), started_at=time.time(),
                                       boot_time=boot_time()))
    return spec.id


def test_cleanup_of_a_crashed_run_is_not_refused_as_running_because_of_its_own_sync_job(s3, make_run):
    run = make_run(steps=(1, 2), phase="training")  # its trainer's pid is gone: crashed
    proc = s3.cli("--action", "backup", "--training-run", run.name, "--cleanup", "--keep-latest",
                  module=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "cleaned up" in proc.stdout
    assert not Layout(s3.root).step_dir(run.name, 1).exists()


def test_detach_prints_the_job_id_and_the_job_runs_on(s3, make_run):
    run = make_run(steps=(1,))
    proc = s3.cli("--action", "backup", "--training-run", run.name, "--detach", module=False)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    assert [j.id for j in _jobs(s3)] == [job_id]
    job = wait_and_stream(Layout(s3.root), job_id, io.StringIO())
    assert job.phase is JobState.SUCCEEDED


def _wait_for(what, timeout: float = 60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (found := what()):
            return found
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")


def test_ctrl_c_stops_the_sync_job_and_it_ends_stopped(s3, make_run):
    run = make_run(steps=(1, 2))  # ~18 MB at 1 MB/s: still uploading when Ctrl-C comes
    argv = [sys.executable, "-m", "rltui.cli", "--batch", "sync", "--action", "backup",
            "--training-run", run.name, "--bandwidth", "1M"]
    proc = subprocess.Popen(argv, cwd=REPO, env=s3.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        client = s3.raw_client()
        _wait_for(lambda: client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads"))
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out + err
    assert "stopping job" in err
    job = _only_job(s3)
    assert job.phase is JobState.STOPPED, job.state
    assert not client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads")  # aborted, not left
    assert "manifest.json" not in json.dumps(client.list_objects_v2(Bucket=s3.bucket).get("Contents", []),
                                             default=str)
    assert os.path.isfile(Layout(s3.root).job_log(job.id))
