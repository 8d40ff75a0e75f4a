"""Backup and restore through a real HTTP S3 endpoint (moto's server on 127.0.0.1)."""

from __future__ import annotations

import io
import json
import os
import shutil

from rltui.runs import checkpoints, localfs
from rltui.archive.backup import backup_run
from rltui.archive.restore import restore_run
from rltui.runs.localfs import Layout


def test_round_trip_restores_every_file_byte_for_byte_and_step_latest(s3, make_run):
    run = make_run(steps=(1, 2, 3))
    before = run.files()
    layout = Layout(s3.root)
    store = s3.store()
    result = backup_run(layout, store, run.name, out=io.StringIO(), err=io.StringIO())
    assert result.manifest_uploaded
    assert set(result.manifest.files) == set(before)
    assert result.manifest.step_latest == 3
    assert s3.log.ops["CreateMultipartUpload"] >= 3  # each 6 MB optimizer.pt is multipart at 5 MB parts

    shutil.rmtree(layout.run_dir(run.name))
    shutil.rmtree(layout.eval_dir(run.name, "gsm8k"))
    restore_run(layout, store, run.name, out=io.StringIO(), err=io.StringIO())

    assert run.files() == before
    assert checkpoints.read_step_latest(layout.training_state(run.name)) == 3
    assert checkpoints.resolve_step(layout.training_state(run.name), "latest") == 3
    assert not checkpoints.checkpoint_problems(layout.step_dir(run.name, 3), verify_hash=True)
    leftovers = [p for p in s3.root.rglob("*") if p.name.startswith(".tmp_")]
    assert leftovers == []


def test_second_backup_of_an_unchanged_run_makes_no_upload(s3, make_run):
    run = make_run()
    layout, store = Layout(s3.root), s3.store()
    backup_run(layout, store, run.name, out=io.StringIO(), err=io.StringIO())
    assert s3.log.uploads > 0
    s3.log.reset()

    out = io.StringIO()
    result = backup_run(layout, store, run.name, out=out, err=io.StringIO())
    assert s3.log.uploads == 0, s3.log.ops
    assert not result.manifest_uploaded
    assert "up to date" in out.getvalue()


def test_unchanged_backup_does_not_rehash_files_thanks_to_the_cache(s3, make_run, monkeypatch):
    run = make_run()
    layout, store = Layout(s3.root), s3.store()
    backup_run(layout, store, run.name, out=io.StringIO(), err=io.StringIO())
    hashed: list[str] = []
    real = checkpoints.sha256_file
    monkeypatch.setattr(checkpoints, "sha256_file", lambda p, *a, **k: hashed.append(str(p)) or real(p, *a, **k))
    backup_run(layout, store, run.name, out=io.StringIO(), err=io.StringIO())
    assert hashed == []


def test_a_file_changed_between_backups_is_uploaded_again_and_only_it(s3, make_run):
    run = make_run()
    layout, store = Layout(s3.root), s3.store()
    backup_run(layout, store, run.name, out=io.StringIO(), err=io.StringIO())
    s3.log.reset()

    localfs.append_jsonl(layout.train_log(run.name), {"step": 3, "reward": 0.9})
    result = backup_run(layout, store, run.name, out=io.StringIO(), err=io.StringIO())
    log_path = layout.train_log(run.name).relative_to(s3.root).as_posix()
    assert result.uploaded == [log_path]
    assert s3.log.ops["PutObject"] == 2  # the log's new content, then the manifest
    assert result.manifest.files[log_path].sha256 == checkpoints.sha256_file(layout.train_log(run.name))

    shutil.rmtree(layout.run_dir(run.name))
    restore_run(layout, store, run.name, out=io.StringIO(), err=io.StringIO())
    assert layout.train_log(run.name).read_text().count("\n") == 3


def test_staging_folders_and_incomplete_checkpoints_are_not_backed_up(s3, make_run):
    run = make_run(steps=(1,))
    layout = Layout(s3.root)
    stage = checkpoints.staging_dir(layout.training_state(run.name), 2)
    (stage / "optimizer.pt").write_bytes(b"half written")
    broken = layout.step_dir(run.name, 5)
    broken.mkdir()
    (broken / "optimizer.pt").write_bytes(b"no training_info.json: the save did not finish")

    out = io.StringIO()
    result = backup_run(layout, s3.store(), run.name, out=out, err=io.StringIO())
    paths = set(result.manifest.files)
    assert not any(".tmp_" in p for p in paths)
    assert not any("/step_5/" in p for p in paths)
    assert any("/step_1/optimizer.pt" in p for p in paths)
    assert "incomplete checkpoint" in out.getvalue()
    assert result.manifest.step_latest == 1


def test_dry_run_uploads_nothing_and_deletes_nothing(s3, make_run):
    run = make_run()
    before = run.files()
    layout, store = Layout(s3.root), s3.store()
    out = io.StringIO()
    result = backup_run(layout, store, run.name, cleanup=True, dry_run=True, out=out, err=io.StringIO())
    assert s3.log.uploads == 0
    assert run.files() == before
    assert len(result.uploaded) == len(set(before.values()))  # identical contents count once
    assert "dry run" in out.getvalue()
    assert len(result.cleanup.refused) == 0 and "would delete" in out.getvalue()
    listed = s3.raw_client().list_objects_v2(Bucket=s3.bucket)
    assert listed.get("KeyCount", 0) == 0


def test_manifest_records_sizes_hashes_and_step_latest(s3, make_run):
    run = make_run(steps=(1, 2))
    backup_run(Layout(s3.root), s3.store(), run.name, out=io.StringIO(), err=io.StringIO())
    body = s3.raw_client().get_object(Bucket=s3.bucket, Key=f"team/archive/runs/{run.name}/manifest.json")
    manifest = json.loads(body["Body"].read())
    assert manifest["step_latest"] == 2
    files = run.files()
    assert {p: m["sha256"] for p, m in manifest["files"].items()} == files
    for p, m in manifest["files"].items():
        assert m["size"] == os.path.getsize(s3.root / p)


def test_a_file_that_changes_while_it_is_uploaded_is_read_again(s3, make_run, monkeypatch):
    from rltui.archive import backup as backup_mod

    run = make_run(steps=(1,))
    layout = Layout(s3.root)
    real = backup_mod._hash_and_upload
    calls = []

    def upload_then_touch(*args, **kwargs):
        plan = real(*args, **kwargs)
        calls.append(len(args[2]))
        if len(calls) == 1:  # the trainer appends a line right after the first pass read the log
            localfs.append_jsonl(layout.train_log(run.name), {"step": 99})
        return plan

    monkeypatch.setattr(backup_mod, "_hash_and_upload", upload_then_touch)
    out = io.StringIO()
    result = backup_run(layout, s3.store(), run.name, out=out, err=io.StringIO())
    log_path = layout.train_log(run.name).relative_to(s3.root).as_posix()
    assert calls[1] == 1 and "changed while being read" in out.getvalue()
    assert result.manifest.files[log_path].sha256 == checkpoints.sha256_file(layout.train_log(run.name))

    shutil.rmtree(layout.run_dir(run.name))
    restore_run(layout, s3.store(), run.name, out=io.StringIO(), err=io.StringIO())
    assert '"step": 99' in layout.train_log(run.name).read_text()


def _hashed_during(monkeypatch, fn) -> list[str]:
    hashed: list[str] = []
    real = checkpoints.sha256_file
    monkeypatch.setattr(checkpoints, "sha256_file", lambda p, *a, **k: hashed.append(str(p)) or real(p, *a, **k))
    fn()
    monkeypatch.setattr(checkpoints, "sha256_file", real)
    return hashed


def test_first_backup_takes_checkpoint_hashes_from_training_info_instead_of_rereading(s3, make_run, monkeypatch):
    run = make_run(steps=(1, 2))
    layout = Layout(s3.root)
    hashed = _hashed_during(monkeypatch, lambda: backup_run(
        layout, s3.store(), run.name, out=io.StringIO(), err=io.StringIO()))
    in_checkpoints = [p for p in hashed if "/training_state/step_" in p]
    assert all(p.endswith("training_info.json") for p in in_checkpoints), in_checkpoints
    assert any(p.endswith("status.json") for p in hashed)  # files outside checkpoints are hashed


def test_a_checkpoint_file_changed_after_it_was_sealed_is_hashed_not_trusted(s3, make_run):
    run = make_run(steps=(1,))
    layout = Layout(s3.root)
    opt = layout.step_dir(run.name, 1) / "optimizer.pt"
    size = opt.stat().st_size
    opt.write_bytes(os.urandom(size))  # same size, newer than training_info.json
    result = backup_run(layout, s3.store(), run.name, out=io.StringIO(), err=io.StringIO())
    rel = opt.relative_to(s3.root).as_posix()
    assert result.manifest.files[rel].sha256 == checkpoints.sha256_file(opt)


def test_a_checkpoint_file_that_rotted_silently_is_caught_by_cleanup_and_restore(s3, make_run):
    """Same size, same mtime, other bytes: the backup trusts the checkpoint's record; cleanup
    (which hashes before deleting) keeps the file, and restore refuses the bytes."""
    run = make_run(steps=(1,))
    layout, store = Layout(s3.root), s3.store()
    opt = layout.step_dir(run.name, 1) / "optimizer.pt"
    st = opt.stat()
    with open(opt, "r+b") as f:
        f.write(b"\xff" * 64)
    os.utime(opt, ns=(st.st_atime_ns, st.st_mtime_ns))
    result = backup_run(layout, store, run.name, cleanup=True, out=io.StringIO(), err=io.StringIO())
    rel = opt.relative_to(s3.root).as_posix()
    assert (rel, "changed since the backup") in result.cleanup.refused and opt.exists()

    shutil.rmtree(layout.run_dir(run.name))
    proc = s3.cli("--action", "restore", "--training-run", run.name, "--root", str(s3.root))
    assert proc.returncode == 1 and "does not match the backup's sha256" in proc.stderr


def test_restore_puts_checkpoint_records_in_place_after_every_data_file(s3, make_run, monkeypatch):
    run = make_run(steps=(1, 2))
    layout = Layout(s3.root)
    backup_run(layout, s3.store(), run.name, out=io.StringIO(), err=io.StringIO())
    shutil.rmtree(layout.run_dir(run.name))
    renamed: list[str] = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: renamed.append(str(b)) or real(a, b))
    restore_run(layout, s3.store(), run.name, out=io.StringIO(), err=io.StringIO())
    first_record = min(i for i, p in enumerate(renamed) if p.endswith(localfs.CHECKPOINT_INFO))
    data = [i for i, p in enumerate(renamed) if "/training_state/step_" in p
            and not p.endswith((localfs.CHECKPOINT_INFO, localfs.STEP_LATEST))]
    assert data and max(data) < first_record
