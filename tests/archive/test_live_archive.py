"""The live archive (follow), its retention, and the bucket catalog, against moto's real endpoint."""

from __future__ import annotations

import io

import pytest

from rltui.archive import catalog
from rltui.archive.backup import backup_run
from rltui.archive.follow import Follower, Retention, apply_retention, read_status
from rltui.archive.sizes import parse_size
from rltui.errors import UsageError
from rltui.runs import checkpoints
from rltui.runs.localfs import Layout


def _steps(layout: Layout, run: str) -> list[int]:
    return [s for s, p in checkpoints.list_step_dirs(layout.training_state(run))
            if not checkpoints.checkpoint_problems(p)]


def test_a_pass_uploads_complete_checkpoints_only_and_records_the_lag(s3, make_run):
    layout = Layout(s3.root)
    run = make_run(steps=(1, 2), big=50_000)
    staging = checkpoints.staging_dir(layout.training_state(run.name), 3)  # a save in progress
    (staging / "half.bin").write_bytes(b"x" * 100)
    store = s3.store()
    follower = Follower(layout, store, run.name, out=io.StringIO(), sleep=lambda s: None)

    assert follower.one_pass() is True
    manifest = store.get_manifest(run.name)
    assert not [p for p in manifest.files if ".tmp_" in p]
    status = read_status(layout, run.name)
    assert status["newest_archived_step"] == 2 and status["newest_local_step"] == 2
    assert status["pending_files"] == 0 and status["last_error"] is None

    s3.log.reset()
    assert follower.one_pass() is False  # nothing changed: no request at all
    assert sum(s3.log.ops.values()) == 0


def test_a_new_checkpoint_is_uploaded_on_the_next_pass(s3, make_run, add_checkpoint):
    layout = Layout(s3.root)
    run = make_run(steps=(1,), big=50_000)
    store = s3.store()
    follower = Follower(layout, store, run.name, out=io.StringIO(), sleep=lambda s: None)
    follower.one_pass()
    add_checkpoint(run.name, 2, big=200_000)
    checkpoints.update_step_latest(layout.training_state(run.name), 2)
    assert follower.one_pass() is True
    assert read_status(layout, run.name)["newest_archived_step"] == 2


def test_a_log_written_every_step_does_not_fail_the_pass_it_is_left_for_the_next(s3, make_run, monkeypatch):
    from rltui.archive import backup
    from rltui.errors import WorkFailed

    layout = Layout(s3.root)
    run = make_run(steps=(1, 2), big=50_000)
    log = layout.run_dir(run.name) / "logs" / "train_log.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text('{"step": 1}\n')
    real_stat = backup.stat_local

    def trainer_writes_meanwhile(root, path):  # the trainer appends a line before every re-read
        with log.open("a") as f:
            f.write('{"step": 2}\n')
        return real_stat(root, path)

    monkeypatch.setattr(backup, "stat_local", trainer_writes_meanwhile)
    store = s3.store()
    with pytest.raises(WorkFailed, match="keep changing"):  # a plain backup of a running run
        backup_run(layout, store, run.name, out=io.StringIO(), err=io.StringIO())
    out = io.StringIO()
    follower = Follower(layout, store, run.name, out=out, sleep=lambda s: None)
    assert follower.one_pass() is True
    manifest = store.get_manifest(run.name)
    assert "file(s) still being written: left for the next pass" in out.getvalue()
    assert not [p for p in manifest.files if p.endswith("train_log.jsonl")]
    assert read_status(layout, run.name)["newest_archived_step"] == 2

    monkeypatch.setattr(backup, "stat_local", real_stat)  # the trainer ended: the last pass has it
    assert follower.one_pass() is True
    entry = [e for p, e in store.get_manifest(run.name).files.items() if p.endswith("train_log.jsonl")]
    assert entry and entry[0].size == log.stat().st_size


def test_a_file_replaced_between_its_hash_and_its_upload_is_sent_as_it_is_now(s3, make_run, monkeypatch):
    # status.json is replaced (atomically, smaller) after it was hashed: uploading by name would
    # send other bytes than its key says, or fewer than the Content-Length (a hung upload)
    import hashlib

    from rltui.archive import manifest as manifest_module
    from rltui.runs import localfs

    layout = Layout(s3.root)
    run = make_run(steps=(1,), big=50_000)
    status = layout.run_status(run.name)
    localfs.write_json_atomic(status, {"step": 1, "padding": "x" * 5000})
    real_sha = manifest_module.HashCache.sha256
    replaced = []

    def hash_then_replace(cache, f):
        digest = real_sha(cache, f)
        if f.full == status and not replaced:
            localfs.write_json_atomic(status, {"step": 2})
            replaced.append(f.path)
        return digest

    monkeypatch.setattr(manifest_module.HashCache, "sha256", hash_then_replace)
    out = io.StringIO()
    store = s3.store()
    backup_run(layout, store, run.name, out=out, err=io.StringIO())
    assert replaced and "changed while being read" in out.getvalue()
    entry = store.get_manifest(run.name).files[replaced[0]]
    body = store.client.get_object(Bucket=s3.bucket, Key=store.object_key(run.name, entry.sha256))["Body"].read()
    assert body == status.read_bytes() and hashlib.sha256(body).hexdigest() == entry.sha256


def test_the_loop_ends_with_a_final_pass_after_the_watched_job_ends(s3, make_run, add_checkpoint, monkeypatch):
    layout = Layout(s3.root)
    run = make_run(steps=(1,), big=50_000)
    follower = Follower(layout, s3.store(), run.name, job="job_x", out=io.StringIO(), interval_s=0.1,
                        sleep=lambda s: add_checkpoint(run.name, 2, big=1000))
    ends = iter([False, True])
    monkeypatch.setattr(follower, "job_ended", lambda: next(ends))
    status = follower.run_until_job_ends()
    assert status.state == "done" and status.newest_archived_step == 2


def test_retention_deletes_only_verified_checkpoints_and_keeps_the_newest(s3, make_run, add_checkpoint):
    layout = Layout(s3.root)
    run = make_run(steps=(1, 2, 3, 4), big=50_000)
    store = s3.store()
    result = backup_run(layout, store, run.name, out=io.StringIO(), err=io.StringIO())
    add_checkpoint(run.name, 5, big=1000)  # newer than the backup: not in the manifest
    checkpoints.update_step_latest(layout.training_state(run.name), 5)

    deleted = apply_retention(layout, store, result.manifest, Retention(keep_latest=True, keep_every=2),
                              io.StringIO())
    assert deleted == [1, 3]
    assert _steps(layout, run.name) == [2, 4, 5]  # keep-every 2, and the newest (not yet archived)


def test_retention_keeps_every_checkpoint_while_an_eval_job_reads_them(s3, make_run):
    from tests.archive.test_sync_jobs import evaluating_job

    layout = Layout(s3.root)
    run = make_run(steps=(1, 2, 3), big=1000)
    store = s3.store()
    result = backup_run(layout, store, run.name, out=io.StringIO(), err=io.StringIO())
    reader = evaluating_job(layout, run.name)
    out = io.StringIO()
    assert apply_retention(layout, store, result.manifest, Retention(keep_latest=True), out) == []
    assert f"kept every local checkpoint: job {reader} evaluates them" in out.getvalue()
    assert _steps(layout, run.name) == [1, 2, 3]
    from rltui.jobs.records import StateFile, update_state

    update_state(layout, reader, lambda s: StateFile.from_json({**s.to_json(), "state": "succeeded"}))
    assert apply_retention(layout, store, result.manifest, Retention(keep_latest=True), io.StringIO()) == [1, 2]


def test_retention_refuses_a_checkpoint_whose_objects_are_gone_from_the_bucket(s3, make_run):
    layout = Layout(s3.root)
    run = make_run(steps=(1, 2), big=50_000)
    store = s3.store()
    result = backup_run(layout, store, run.name, out=io.StringIO(), err=io.StringIO())
    victim = next(e for p, e in result.manifest.files.items() if "/step_1/" in p)
    s3.raw_client().delete_object(Bucket=s3.bucket, Key=store.object_key(run.name, victim.sha256))
    out = io.StringIO()
    assert apply_retention(layout, store, result.manifest, Retention(keep_latest=True), out) == []
    assert "not confirmed in the bucket" in out.getvalue()
    assert _steps(layout, run.name) == [1, 2]


def test_a_local_budget_deletes_the_oldest_verified_checkpoints_until_under_it(s3, make_run):
    layout = Layout(s3.root)
    run = make_run(steps=(1, 2, 3), big=50_000)
    store = s3.store()
    result = backup_run(layout, store, run.name, out=io.StringIO(), err=io.StringIO())
    one = sum(f.stat().st_size for f in layout.step_dir(run.name, 1).rglob("*") if f.is_file())
    deleted = apply_retention(layout, store, result.manifest, Retention(local_budget=int(one * 2.5)),
                              io.StringIO())
    assert deleted == [1]
    assert _steps(layout, run.name) == [2, 3]


@pytest.mark.parametrize("text,value", [("500M", 500 << 20), ("2G", 2 << 30), ("1.5GiB", int(1.5 * (1 << 30))),
                                        ("1024", 1024)])
def test_sizes_parse(text, value):
    assert parse_size(text, "--local-budget") == value


@pytest.mark.parametrize("text", ["lots", "-1G", "0"])
def test_a_bad_size_names_the_flag_and_the_value(text):
    with pytest.raises(UsageError, match=f"--local-budget: {text!r}"):
        parse_size(text, "--local-budget")


def test_the_catalog_lists_bucket_runs_and_refetches_only_changed_manifests(s3, make_run, add_checkpoint):
    layout = Layout(s3.root)
    a, b = make_run(run="run_2026-01-01_00-00-01", steps=(1,), big=10_000), make_run(run="run_2026-01-01_00-00-02", steps=(1, 2), big=10_000)
    store = s3.store()
    for r in (a, b):
        backup_run(layout, store, r.name, out=io.StringIO(), err=io.StringIO())

    first = catalog.refresh(layout, store)
    assert set(first.runs) == {a.name, b.name} and first.fetched == 2
    assert first.runs[b.name].newest_step == 2 and first.runs[b.name].size > 0

    add_checkpoint(b.name, 3, big=1000)
    backup_run(layout, store, b.name, out=io.StringIO(), err=io.StringIO())
    s3.log.reset()
    second = catalog.refresh(layout, store)
    assert second.fetched == 1 and second.runs[b.name].newest_step == 3
    assert s3.log.ops["GetObject"] == 1 and s3.log.ops["ListObjectsV2"] == 1

    cached = catalog.read_catalog(layout)
    assert cached is not None and cached.runs[b.name].steps == (1, 2, 3)
    only = catalog.bucket_only(cached, local_runs={a.name})
    assert [r.run for r in only] == [b.name]


def test_status_lists_bucket_only_runs_and_the_live_lag_without_the_network(s3, make_run):
    import json
    import subprocess
    import sys

    layout = Layout(s3.root)
    gone = make_run(run="run_2026-01-01_00-00-09", steps=(1, 2), big=10_000)
    here = make_run(run="run_2026-01-01_00-00-10", steps=(1,), big=10_000)
    store = s3.store()
    for r in (gone, here):
        backup_run(layout, store, r.name, out=io.StringIO(), err=io.StringIO())
    Follower(layout, store, here.name, out=io.StringIO()).one_pass()
    import shutil

    shutil.rmtree(layout.run_dir(gone.name))
    shutil.rmtree(layout.eval_runs)
    argv = [sys.executable, "-m", "rltui.cli", "--root", str(s3.root), "--batch", "status"]
    listed = subprocess.run(argv + ["--remote"], env=s3.env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "IN THE BUCKET ONLY" in listed.stdout and gone.name in listed.stdout
    assert f"{here.name}  archived step 1 of local 1" in listed.stdout

    offline = {**s3.env, "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"}  # nothing listens: the cache answers
    doc = json.loads(subprocess.run(argv + ["--json"], env=offline, capture_output=True, text=True,
                                    timeout=120).stdout)
    assert [r["run"] for r in doc["archive"]["bucket_only_runs"]] == [gone.name]
    assert doc["archive"]["bucket_only_runs"][0]["newest_step"] == 2
    assert doc["archive"]["live"][here.name]["newest_archived_step"] == 1


def test_archive_flags_without_a_bucket_are_one_line_and_launch_nothing(tmp_path, monkeypatch):
    import subprocess
    import sys

    root = tmp_path / "root"
    Layout(root).ensure()
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("training: {total_steps: 2}\n")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("RLTUI_S3", "AWS_"))}
    env["RLTUI_S3_ENV"] = str(tmp_path / "none.env")
    (tmp_path / "none.env").write_text("# no bucket\n")
    out = subprocess.run([sys.executable, "-m", "rltui.cli", "--root", str(root), "--batch", "train",
                          "--cfg", str(cfg), "--archive", "--gpus", "none"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "RLTUI_S3_BUCKET" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not list(Layout(root).jobs.glob("*")) and not list(Layout(root).training_runs.glob("*"))
    bad = subprocess.run([sys.executable, "-m", "rltui.cli", "--root", str(root), "--batch", "train",
                          "--cfg", str(cfg), "--archive-budget", "lots", "--gpus", "none"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--archive" in bad.stderr and "Traceback" not in bad.stderr


def test_the_live_archive_yields_the_cpu_and_disk_to_the_trainer():
    import subprocess
    import sys

    code = ("import os; from rltui.cli.sync import _yield_to_training; _yield_to_training(); "
            "print(os.getpriority(os.PRIO_PROCESS, 0)); print(open('/proc/self/stat').read().split()[18])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    priority, nice_field = done.stdout.split()
    assert int(priority) >= 10 and int(nice_field) >= 10
