"""Interrupted backups leave no multipart upload behind, and no configured secret is printed in
any form (issue 13). Real subprocesses against the moto server."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from rltui.runs.localfs import Layout

from tests.archive.conftest import REPO, write_run


def _unfinished(s3) -> list[dict]:
    return s3.raw_client().list_multipart_uploads(Bucket=s3.bucket).get("Uploads", [])


def test_a_backup_stopped_with_sigterm_mid_file_leaves_no_unfinished_upload(s3):
    write_run(Layout(s3.root), "run_a", steps=(1,), big=6_000_000)  # 12 MB optimizer: multipart
    proc = subprocess.Popen(
        [sys.executable, "-m", "rltui.sync_to_s3", "--action", "backup", "--training-run", "run_a",
         "--bandwidth", "2MB", "--root", str(s3.root)],
        cwd=REPO, env=s3.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not _unfinished(s3) and time.monotonic() < deadline:  # a multipart upload under way
        time.sleep(0.1)
    assert _unfinished(s3), "the backup never began a multipart upload"
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert _unfinished(s3) == []


def test_list_backups_names_leftovers_and_the_next_backup_of_the_run_aborts_them(s3, cutting_proxy):
    write_run(Layout(s3.root), "run_a", steps=(1,), big=4_000_000)
    proxy = cutting_proxy(5_000_000)  # the connection dies inside the 8 MB optimizer.pt
    cut = s3.cli("--action", "backup", "--training-run", "run_a", "--root", str(s3.root),
                 env={**s3.env, "AWS_ENDPOINT_URL_S3": proxy.url})
    assert cut.returncode == 1 and proxy.cut.is_set(), cut.stderr
    assert _unfinished(s3)  # the server could not be told: left behind

    listed = s3.cli("--action", "list-backups")
    assert listed.returncode == 0, listed.stderr
    assert "unfinished upload(s) left by interrupted backups of run_a" in listed.stdout

    again = s3.cli("--action", "backup", "--training-run", "run_a", "--root", str(s3.root),
                   env={**s3.env, "RLTUI_S3_STALE_UPLOAD_S": "0"})
    assert again.returncode == 0, again.stderr
    assert "aborted" in again.stdout
    assert _unfinished(s3) == []


def test_a_credential_holding_a_newline_never_appears_in_any_message(s3, make_run):
    make_run(steps=(1,), big=10_000)
    key = "AKIATESTKEY1\nSECRETPART123"
    secret = "Zq9-Other-Secret\n-Second-Line-77"
    env = {**s3.env, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}
    runs = [s3.cli("--action", "list-backups", env=env),
            s3.cli("--action", "backup-all", "--root", str(s3.root), env=env),
            s3.cli("--action", "list-backups", env={**env, "RLTUI_S3_BUCKET": "no-such-bucket-here"})]
    for proc in runs:
        text = proc.stdout + proc.stderr
        assert proc.returncode in (0, 1, 2)
        for piece in (*key.split(), *secret.split(), key.encode("unicode_escape").decode(),
                      secret.encode("unicode_escape").decode()):
            assert piece not in text, text


def test_archive_output_shows_no_escape_sequence_from_a_file_name(s3, make_run):
    import os

    run = make_run(steps=(1,), big=10_000)
    layout = Layout(s3.root)
    os.symlink("/nowhere", layout.run_dir(run.name) / "x\x1b]0;pwned\x07\x1b[2Jname")  # not backed up: named
    proc = s3.cli("--action", "backup", "--training-run", run.name, "--root", str(s3.root))
    assert proc.returncode == 0, proc.stderr
    assert "not backed up" in proc.stdout and "xname" in proc.stdout
    assert "\x1b" not in proc.stdout + proc.stderr and "\x07" not in proc.stdout + proc.stderr
