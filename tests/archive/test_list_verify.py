"""list-backups (complete and incomplete backups) and verify (compares, changes nothing)."""

from __future__ import annotations

import io
import json

from rltui.runs import localfs
from rltui.archive.backup import backup_run
from rltui.archive.report import verify_run
from rltui.runs.localfs import Layout


def test_list_backups_tells_complete_from_incomplete_backups(s3, make_run, cutting_proxy):
    layout = Layout(s3.root)
    done = make_run(run="run_2026-01-01_00-00-01", steps=(1, 2))
    cut = make_run(run="run_2026-01-01_00-00-02", steps=(1,))
    damaged = make_run(run="run_2026-01-01_00-00-03", steps=(1,))
    store = s3.store()
    backup_run(layout, store, done.name, out=io.StringIO(), err=io.StringIO())
    result = backup_run(layout, store, damaged.name, out=io.StringIO(), err=io.StringIO())
    sha = next(iter(result.manifest.files.values())).sha256
    s3.raw_client().delete_object(Bucket=s3.bucket, Key=store.object_key(damaged.name, sha))
    proxy = cutting_proxy(7_000_000)  # the first backup of this run dies before its manifest
    failed = s3.cli("--action", "backup", "--training-run", cut.name, "--root", str(s3.root),
                    env={**s3.env, "AWS_ENDPOINT_URL_S3": proxy.url})
    assert failed.returncode == 1

    proc = s3.cli("--action", "list-backups", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {b["run"]: b for b in json.loads(proc.stdout)}
    assert set(rows) == {done.name, cut.name, damaged.name}
    ok = rows[done.name]
    assert ok["complete"] and ok["state"] == "complete"
    assert ok["files"] == len(done.files())
    assert ok["size"] == sum((s3.root / p).stat().st_size for p in done.files())
    assert ok["backed_up_at"] > 0
    assert not rows[cut.name]["complete"] and "no manifest" in rows[cut.name]["state"]
    assert rows[cut.name]["files"] > 0  # some objects made it before the cut
    assert not rows[damaged.name]["complete"] and "missing" in rows[damaged.name]["state"]

    text = s3.cli("--action", "list-backups")
    assert text.returncode == 0
    lines = {ln.split()[0]: ln for ln in text.stdout.splitlines()[2:]}
    assert lines[done.name].rstrip().endswith("complete")
    assert "incomplete" in lines[cut.name] and "incomplete" in lines[damaged.name]


def test_list_backups_of_an_empty_bucket_says_so(s3):
    proc = s3.cli("--action", "list-backups")
    assert proc.returncode == 0
    assert "no backups in s3://" in proc.stdout


def test_verify_reports_in_sync_then_differences_and_changes_nothing(s3, make_run):
    run = make_run(steps=(1,))
    layout, store = Layout(s3.root), s3.store()
    backup_run(layout, store, run.name, out=io.StringIO(), err=io.StringIO())

    proc = s3.cli("--action", "verify", "--training-run", run.name, "--root", str(s3.root))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "in sync" in proc.stdout

    localfs.append_jsonl(layout.train_log(run.name), {"step": 2})
    (layout.run_dir(run.name) / "notes.txt").write_text("new\n")
    before_files = run.files()
    before_bucket = s3.raw_client().list_objects_v2(Bucket=s3.bucket)["Contents"]
    s3.log.reset()
    res = verify_run(layout, store, run.name)
    assert res.differs == [layout.train_log(run.name).relative_to(s3.root).as_posix()]
    assert res.not_backed_up == [f"training_runs/{run.name}/notes.txt"]
    assert not res.in_sync
    assert set(s3.log.ops) <= {"GetObject", "ListObjectsV2"}
    assert run.files() == before_files
    assert s3.raw_client().list_objects_v2(Bucket=s3.bucket)["Contents"] == before_bucket

    proc = s3.cli("--action", "verify", "--training-run", run.name, "--root", str(s3.root))
    assert proc.returncode == 1
    assert "NOT in sync" in proc.stdout and "notes.txt" in proc.stdout


def test_verify_after_keep_latest_cleanup_is_in_sync_with_files_only_in_the_backup(s3, make_run):
    run = make_run(steps=(1, 2))
    layout, store = Layout(s3.root), s3.store()
    backup_run(layout, store, run.name, cleanup=True, keep_latest=True, out=io.StringIO(), err=io.StringIO())
    res = verify_run(layout, store, run.name)
    assert res.in_sync
    assert any("/step_1/" in p for p in res.only_in_backup)
    assert res.missing_remote == []
