"""--cleanup: local files go only once the bucket holds them; --keep-latest keeps a resumable run."""

from __future__ import annotations

import io
import subprocess
import sys

from rltui.runs import checkpoints, localfs
from rltui.archive.backup import backup_run
from rltui.archive.restore import restore_run
from rltui.runs.localfs import Layout


def _rel(layout: Layout, p) -> str:
    return p.relative_to(layout.root).as_posix()


def test_cleanup_without_keep_latest_removes_every_backed_up_file_and_restore_brings_them_back(s3, make_run):
    run = make_run(steps=(1, 2))
    before = run.files()
    layout, store = Layout(s3.root), s3.store()
    result = backup_run(layout, store, run.name, cleanup=True, out=io.StringIO(), err=io.StringIO())

    assert sorted(result.cleanup.deleted) == sorted(before)
    assert not layout.run_dir(run.name).exists()
    assert not layout.eval_dir(run.name, "gsm8k").exists()
    # every deleted file was confirmed first: a HEAD per distinct content
    assert s3.log.ops["HeadObject"] == len(set(before.values()))

    restore_run(layout, store, run.name, out=io.StringIO(), err=io.StringIO())
    assert run.files() == before
    assert checkpoints.resolve_step(layout.training_state(run.name), "latest") == 2


def test_cleanup_with_keep_latest_keeps_latest_checkpoint_config_status_and_logs(s3, make_run):
    run = make_run(steps=(1, 2, 3))
    before = run.files()
    layout, store = Layout(s3.root), s3.store()
    backup_run(layout, store, run.name, cleanup=True, keep_latest=True, out=io.StringIO(), err=io.StringIO())

    left = run.files()
    kept_step = _rel(layout, layout.step_dir(run.name, 3)) + "/"
    assert {p for p in left if p.startswith(kept_step)} == {p for p in before if p.startswith(kept_step)}
    assert _rel(layout, layout.run_config(run.name)) in left
    assert _rel(layout, layout.run_status(run.name)) in left
    assert _rel(layout, layout.train_log(run.name)) in left
    assert not layout.step_dir(run.name, 1).exists() and not layout.step_dir(run.name, 2).exists()
    assert not layout.tensorboard_dir(run.name).exists()
    assert all(left[p] == before[p] for p in left)
    # still resumable: step_latest resolves to a complete checkpoint
    assert checkpoints.resolve_step(layout.training_state(run.name), "latest") == 3
    assert not checkpoints.checkpoint_problems(layout.step_dir(run.name, 3), verify_hash=True)


def test_run_still_lists_in_the_index_after_keep_latest_cleanup(s3, make_run):
    from rltui.runs.index import Index  # engineer A's index: how the TUI and `status` see runs

    run = make_run(steps=(1, 2))
    layout = Layout(s3.root)
    backup_run(layout, s3.store(), run.name, cleanup=True, keep_latest=True, out=io.StringIO(), err=io.StringIO())
    record = Index(layout).scan().run(run.name)
    assert record is not None
    assert [c.step for c in record.checkpoints if c.complete] == [2]
    assert record.latest_complete == 2


def test_running_run_is_never_cleaned_up_exit_2(s3, make_run):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = make_run(steps=(1,), pid=sleeper.pid, phase="training")
        before = run.files()
        proc = s3.cli("--action", "backup", "--training-run", run.name, "--cleanup", "--root", str(s3.root))
        assert proc.returncode == 2, proc.stderr
        assert "running" in proc.stderr and run.name in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert run.files() == before
        listed = s3.raw_client().list_objects_v2(Bucket=s3.bucket)
        assert listed.get("KeyCount", 0) == 0  # refused before any work

        plain = s3.cli("--action", "backup", "--training-run", run.name, "--root", str(s3.root))
        assert plain.returncode == 0, plain.stderr  # a backup without cleanup is allowed
    finally:
        sleeper.kill()
        sleeper.wait()


def test_cleanup_keeps_a_file_that_changed_after_the_backup(s3, make_run):
    run = make_run(steps=(1,))
    layout, store = Layout(s3.root), s3.store()
    result = backup_run(layout, store, run.name, out=io.StringIO(), err=io.StringIO())
    from rltui.archive.backup import cleanup_run

    localfs.append_jsonl(layout.train_log(run.name), {"step": 2})
    res = cleanup_run(layout, store, result.manifest, keep_latest=False, dry_run=False, out=io.StringIO())
    assert (_rel(layout, layout.train_log(run.name)), "changed since the backup") in res.refused
    assert layout.train_log(run.name).exists()


def test_cleanup_keeps_a_file_whose_object_is_gone_from_the_bucket(s3, make_run):
    run = make_run(steps=(1,))
    layout, store = Layout(s3.root), s3.store()
    result = backup_run(layout, store, run.name, out=io.StringIO(), err=io.StringIO())
    from rltui.archive.backup import cleanup_run

    cfg = _rel(layout, layout.run_config(run.name))
    sha = result.manifest.files[cfg].sha256
    s3.raw_client().delete_object(Bucket=s3.bucket, Key=store.object_key(run.name, sha))
    res = cleanup_run(layout, store, result.manifest, keep_latest=False, dry_run=False, out=io.StringIO())
    assert (cfg, "not confirmed in the bucket") in res.refused
    assert layout.run_config(run.name).exists()
    assert cfg not in res.deleted and len(res.deleted) > 0
