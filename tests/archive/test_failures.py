"""Failures part-way: a connection cut by a loopback proxy after N bytes, a server that is gone.

Local data stays untouched, the previous manifest still describes a complete backup, and running
the same command again finishes the job. Errors are one line with the cause, exit 1.
"""

from __future__ import annotations

import io
import shutil
import socket

from rltui.runs import localfs
from rltui.archive.backup import backup_run
from rltui.runs.localfs import Layout


def _manifest_bytes(s3, run: str) -> bytes:
    key = f"team/archive/runs/{run}/manifest.json"
    return s3.raw_client().get_object(Bucket=s3.bucket, Key=key)["Body"].read()


def _one_line_error(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = [ln for ln in stderr.strip().splitlines() if not ln.startswith("uploading ")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_connection_cut_mid_upload_deletes_nothing_keeps_old_manifest_and_rerun_completes(
    s3, make_run, add_checkpoint, cutting_proxy
):
    run = make_run(steps=(1, 2))
    layout = Layout(s3.root)
    backup_run(layout, s3.store(), run.name, out=io.StringIO(), err=io.StringIO())
    first_manifest = _manifest_bytes(s3, run.name)
    add_checkpoint(run.name, 3, big=4_000_000)
    localfs.append_jsonl(layout.train_log(run.name), {"step": 3})
    before = run.files()

    proxy = cutting_proxy(5_000_000)  # dies inside step 3's 8 MB optimizer.pt (multipart)
    env = {**s3.env, "AWS_ENDPOINT_URL_S3": proxy.url}
    cut = s3.cli("--action", "backup", "--training-run", run.name, "--cleanup", "--root", str(s3.root), env=env)
    assert proxy.cut.is_set()
    assert cut.returncode == 1, cut.stderr
    line = _one_line_error(cut.stderr)
    assert "backup failed" in line and ("connect" in line.lower() or "closed" in line.lower()), line
    assert run.files() == before  # nothing deleted, nothing rewritten
    assert _manifest_bytes(s3, run.name) == first_manifest  # the previous complete backup

    again = s3.cli("--action", "backup", "--training-run", run.name, "--cleanup", "--root", str(s3.root))
    assert again.returncode == 0, again.stderr
    assert not layout.run_dir(run.name).exists()
    restore = s3.cli("--action", "restore", "--training-run", run.name, "--root", str(s3.root))
    assert restore.returncode == 0, restore.stderr
    assert run.files() == before


def test_connection_cut_mid_restore_leaves_no_partial_file_and_rerun_completes(s3, make_run, cutting_proxy):
    run = make_run(steps=(1, 2))
    layout = Layout(s3.root)
    backup_run(layout, s3.store(), run.name, out=io.StringIO(), err=io.StringIO())
    before = run.files()
    shutil.rmtree(layout.run_dir(run.name))
    shutil.rmtree(layout.eval_dir(run.name, "gsm8k"))

    proxy = cutting_proxy(20_000)  # requests only go upstream: cut after a few dozen of them
    env = {**s3.env, "AWS_ENDPOINT_URL_S3": proxy.url}
    cut = s3.cli("--action", "restore", "--training-run", run.name, "--root", str(s3.root), env=env)
    assert cut.returncode == 1, cut.stderr
    assert "restore failed" in _one_line_error(cut.stderr)
    after_cut = run.files()
    assert all(before[p] == sha for p, sha in after_cut.items())  # whatever is there is whole
    assert not [p for p in s3.root.rglob(".tmp_*")]

    again = s3.cli("--action", "restore", "--training-run", run.name, "--root", str(s3.root))
    assert again.returncode == 0, again.stderr
    assert run.files() == before


def test_server_gone_is_one_line_exit_1(s3):
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**s3.env, "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "RLTUI_S3_MAX_CONCURRENCY": "1"}
    proc = s3.cli("--action", "list-backups", env=env)
    assert proc.returncode == 1
    line = _one_line_error(proc.stderr)
    assert "list-backups failed" in line and f"127.0.0.1:{port}" in line


def test_disk_full_during_restore_leaves_no_partial_file_and_rerun_completes(s3, make_run):
    """RLIMIT_FSIZE makes every write past 1 MB fail (EFBIG), as a full disk would (ENOSPC)."""
    import resource
    import subprocess
    import sys

    run = make_run(steps=(1,))
    layout = Layout(s3.root)
    backup_run(layout, s3.store(), run.name, out=io.StringIO(), err=io.StringIO())
    before = run.files()
    shutil.rmtree(layout.run_dir(run.name))

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))

    argv = [sys.executable, "-m", "rltui.sync_to_s3", "--action", "restore", "--training-run", run.name,
            "--root", str(s3.root)]
    full = subprocess.run(argv, env=s3.env, capture_output=True, text=True, preexec_fn=limit, timeout=120)
    assert full.returncode == 1, full.stderr
    line = _one_line_error(full.stderr)
    assert "too large" in line.lower() and "run it again" in line
    assert not [p for p in s3.root.rglob(".tmp_*")]
    assert all(before[p] == sha for p, sha in run.files().items())  # only whole, verified files

    again = s3.cli("--action", "restore", "--training-run", run.name, "--root", str(s3.root))
    assert again.returncode == 0, again.stderr
    assert run.files() == before
