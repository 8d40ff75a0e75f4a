"""The two entry points (`python -m rltui.sync_to_s3`, `rltui --batch sync`), bad flags, secrets."""

from __future__ import annotations

import json

import pytest

from rltui.runs.localfs import Layout


def test_both_entry_points_take_the_same_flags_and_give_the_same_answer(s3, make_run):
    run = make_run(steps=(1,))
    first = s3.cli("--action", "backup", "--training-run", run.name, module=False)
    assert first.returncode == 0, first.stderr
    a = s3.cli("--action", "list-backups", "--json")
    b = s3.cli("--action", "list-backups", "--json", module=False)
    assert a.returncode == b.returncode == 0
    assert json.loads(a.stdout) == json.loads(b.stdout) and json.loads(a.stdout)[0]["complete"]
    again = s3.cli("--action", "backup", "--training-run", run.name)
    assert again.returncode == 0 and "up to date" in again.stdout


BAD_FLAGS = [
    (["--action", "backup"], "--training-run"),
    (["--action", "restore"], "--training-run"),
    (["--action", "verify"], "--training-run"),
    (["--action", "backup", "--training-run", "run_x", "--keep-latest"], "--keep-latest"),
    (["--action", "restore", "--training-run", "run_x", "--cleanup"], "--cleanup"),
    (["--action", "list-backups", "--training-run", "run_x"], "--training-run"),
    (["--action", "backup", "--training-run", "run_x", "--force"], "--force"),
    (["--action", "verify", "--training-run", "run_x", "--json"], "--json"),
    (["--action", "backup", "--training-run", "../../etc"], "../../etc"),
    (["--action", "backup", "--training-run", "run_2026-01-01_00-00-00/x"], "run_2026-01-01_00-00-00/x"),
    (["--action", "explode"], "explode"),
    (["--action", "backup", "--training-run", "run_2026-01-01_00-00-00"], "run_2026-01-01_00-00-00"),
]


@pytest.mark.parametrize("module", [True, False], ids=["module", "rltui-batch"])
@pytest.mark.parametrize("argv,named", BAD_FLAGS, ids=range(len(BAD_FLAGS)))
def test_bad_flags_are_one_line_exit_2_naming_the_value(s3, argv, named, module):
    proc = s3.cli(*argv, module=module)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert named in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr


def test_no_secret_reaches_any_output(s3, make_run, cutting_proxy):
    run = make_run(steps=(1,))
    root = ["--root", str(s3.root)]
    proxy = cutting_proxy(1_000)
    runs = [
        s3.cli("--action", "backup", "--training-run", run.name, "--dry-run", *root),
        s3.cli("--action", "backup", "--training-run", run.name, "--cleanup", "--keep-latest", *root),
        s3.cli("--action", "list-backups"),
        s3.cli("--action", "list-backups", "--json"),
        s3.cli("--action", "verify", "--training-run", run.name, *root),
        s3.cli("--action", "restore", "--training-run", run.name, *root),
        s3.cli("--action", "backup-all", *root, module=False),
        s3.cli("--action", "list-backups", env={**s3.env, "AWS_ENDPOINT_URL_S3": proxy.url}),
        s3.cli("--action", "list-backups", env={**s3.env, "RLTUI_S3_BUCKET": "no-such-bucket-here"}),
        s3.cli("--action", "list-backups", env={**s3.env, "AWS_REGION": "not a region!"}),
    ]
    assert [p.returncode for p in runs[:7]] == [0] * 7
    assert all(p.returncode in (1, 2) for p in runs[7:])
    for p in runs:
        for secret in s3.secrets:
            assert secret not in p.stdout and secret not in p.stderr
    jobs_log = "".join(p.read_text(errors="replace") for p in Layout(s3.root).root.rglob("*.log"))
    assert all(secret not in jobs_log for secret in s3.secrets)


def test_missing_bucket_at_the_endpoint_is_exit_2_naming_it(s3):
    proc = s3.cli("--action", "list-backups", env={**s3.env, "RLTUI_S3_BUCKET": "no-such-bucket-here"})
    assert proc.returncode == 2
    assert "RLTUI_S3_BUCKET" in proc.stderr and "no-such-bucket-here" in proc.stderr


def test_backup_all_backs_up_every_run_that_is_not_running(s3, make_run):
    import subprocess
    import sys

    a = make_run(run="run_2026-01-01_00-00-01", steps=(1,))
    b = make_run(run="run_2026-01-01_00-00-02", steps=(1,))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = make_run(run="run_2026-01-01_00-00-03", steps=(1,), pid=sleeper.pid, phase="training")
        proc = s3.cli("--action", "backup-all", "--root", str(s3.root))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert proc.returncode == 0, proc.stderr
    assert f"{busy.name}: running; skipped" in proc.stdout
    listed = json.loads(s3.cli("--action", "list-backups", "--json").stdout)
    assert {r["run"] for r in listed if r["complete"]} == {a.name, b.name}


def test_the_rltui_parser_does_not_import_boto3():
    import subprocess
    import sys

    code = ("import sys, rltui.cli.main; rltui.cli.main.build_parser(); "
            "print(sorted(m for m in ('boto3', 'botocore', 's3transfer') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_second_archive_command_on_the_same_run_is_refused_while_one_works(s3, make_run):
    from rltui.archive.lock import run_lock

    run = make_run(steps=(1,))
    with run_lock(Layout(s3.root), run.name):
        busy = s3.cli("--action", "backup", "--training-run", run.name, "--root", str(s3.root))
        other = s3.cli("--action", "restore", "--training-run", run.name, "--root", str(s3.root))
    assert busy.returncode == 2 and "another archive command" in busy.stderr
    assert other.returncode == 2 and "another archive command" in other.stderr
    free = s3.cli("--action", "backup", "--training-run", run.name, "--root", str(s3.root))
    assert free.returncode == 0, free.stderr


def test_backup_with_a_root_that_does_not_exist_is_exit_2_and_creates_nothing(s3, tmp_path):
    missing = tmp_path / "typo"
    proc = s3.cli("--action", "backup", "--training-run", "run_2026-01-01_00-00-00", "--root", str(missing))
    assert proc.returncode == 2 and "typo" in proc.stderr
    assert not missing.exists()
