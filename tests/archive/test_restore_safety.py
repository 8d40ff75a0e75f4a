"""Restore never writes outside the run's folders, never through a symlink, never over a
differing local file without --force."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest

from rltui.archive.backup import backup_run
from rltui.runs.localfs import Layout

RUN = "run_2026-01-02_03-04-05"
HOSTILE_PATHS = [
    f"training_runs/{RUN}/../../../escaped.txt",
    "/etc/escaped.txt",
    f"/training_runs/{RUN}/escaped.txt",
    f"training_runs/{RUN}//escaped.txt",
    f"training_runs/{RUN}/..\\..\\..\\escaped.txt",
    f"training_runs/{RUN}/esc\x00aped.txt",
    f"training_runs/{RUN}/./escaped.txt",
    "training_runs/run_2026-09-09_09-09-09/escaped.txt",  # another run's folder
    "datasets/gsm8k/escaped.txt",
    f"eval_runs/{RUN}_2x/escaped.txt",  # not an eval folder of RUN
]


def _all_files(folder: Path) -> set[str]:
    """Every file under folder, but the archive's own lock files."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if (p.is_file() or p.is_symlink()) and ".locks" not in p.parts}


def _files_outside(folder: Path, root: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if root not in p.parents}


def _put_hostile_backup(s3, path: str) -> None:
    data = b"evil bytes\n"
    sha = hashlib.sha256(data).hexdigest()
    client = s3.raw_client()
    prefix = f"team/archive/runs/{RUN}/"
    client.put_object(Bucket=s3.bucket, Key=prefix + "objects/" + sha, Body=data)
    manifest = {"format": 1, "run": RUN, "created": 1.0, "step_latest": None,
                "files": {path: {"size": len(data), "sha256": sha}}}
    client.put_object(Bucket=s3.bucket, Key=prefix + "manifest.json", Body=json.dumps(manifest).encode())


@pytest.mark.parametrize("path", HOSTILE_PATHS, ids=range(len(HOSTILE_PATHS)))
def test_restore_refuses_a_manifest_path_outside_the_run_and_writes_nothing(s3, tmp_path, path):
    _put_hostile_backup(s3, path)
    before = _all_files(tmp_path)
    proc = s3.cli("--action", "restore", "--training-run", RUN, "--root", str(s3.root))
    assert proc.returncode == 1, proc.stderr
    assert "unsafe path" in proc.stderr and "Traceback" not in proc.stderr
    assert _all_files(tmp_path) == before
    assert not Path("/etc/escaped.txt").exists()


def test_hostile_object_keys_in_the_bucket_are_ignored_by_list_and_restore(s3, make_run, tmp_path):
    run = make_run(steps=(1,))
    layout = Layout(s3.root)
    backup_run(layout, s3.store(), run.name, out=io.StringIO(), err=io.StringIO())
    client = s3.raw_client()
    hostile = [
        f"team/archive/runs/{run.name}/objects/../../../../../escaped.txt",
        f"team/archive/runs/{run.name}/../../escaped/manifest.json",
        "team/archive/runs/../../../etc/x",
        f"team/archive/runs/{run.name}/objects/a/../../b",
    ]
    for key in hostile:
        client.put_object(Bucket=s3.bucket, Key=key, Body=b"evil")
    listed = {o["Key"] for o in client.list_objects_v2(Bucket=s3.bucket)["Contents"]}
    assert set(hostile) <= listed  # the server really stores them

    lst = s3.cli("--action", "list-backups", "--json")
    assert lst.returncode == 0, lst.stderr
    assert [b["run"] for b in json.loads(lst.stdout)] == [run.name]

    before = run.files()
    shutil.rmtree(layout.run_dir(run.name))
    outside = _files_outside(tmp_path.parent, s3.root)
    proc = s3.cli("--action", "restore", "--training-run", run.name, "--root", str(s3.root))
    assert proc.returncode == 0, proc.stderr
    assert run.files() == before
    assert _files_outside(tmp_path.parent, s3.root) == outside


def test_restore_never_writes_through_a_symlinked_folder_in_the_destination(s3, make_run, tmp_path):
    run = make_run(steps=(1,))
    layout = Layout(s3.root)
    backup_run(layout, s3.store(), run.name, out=io.StringIO(), err=io.StringIO())
    shutil.rmtree(layout.logs_dir(run.name))
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, layout.logs_dir(run.name))

    proc = s3.cli("--action", "restore", "--training-run", run.name, "--force", "--root", str(s3.root))
    assert proc.returncode == 1, proc.stderr
    assert "symlink" in proc.stderr and "Traceback" not in proc.stderr
    assert list(outside.iterdir()) == []


def test_restore_never_follows_a_symlinked_file_in_the_destination(s3, make_run, tmp_path):
    run = make_run(steps=(1,))
    layout = Layout(s3.root)
    backup_run(layout, s3.store(), run.name, out=io.StringIO(), err=io.StringIO())
    target = tmp_path / "precious.txt"
    target.write_text("do not touch\n")
    os.unlink(layout.run_config(run.name))
    os.symlink(target, layout.run_config(run.name))

    proc = s3.cli("--action", "restore", "--training-run", run.name, "--force", "--root", str(s3.root))
    assert proc.returncode == 1, proc.stderr
    assert target.read_text() == "do not touch\n"
    assert os.path.islink(layout.run_config(run.name))


def test_restore_refuses_to_overwrite_a_differing_local_file_without_force(s3, make_run):
    run = make_run(steps=(1,))
    layout = Layout(s3.root)
    backup_run(layout, s3.store(), run.name, out=io.StringIO(), err=io.StringIO())
    backed_up = run.files()
    layout.run_config(run.name).write_text("model: {base: edited-locally}\n")
    shutil.rmtree(layout.step_dir(run.name, 1))

    proc = s3.cli("--action", "restore", "--training-run", run.name, "--root", str(s3.root))
    assert proc.returncode == 2
    assert "--force" in proc.stderr and "config.yaml" in proc.stderr
    assert layout.run_config(run.name).read_text() == "model: {base: edited-locally}\n"
    assert not layout.step_dir(run.name, 1).exists()  # refused before anything was written

    forced = s3.cli("--action", "restore", "--training-run", run.name, "--force", "--root", str(s3.root))
    assert forced.returncode == 0, forced.stderr
    assert run.files() == backed_up


def test_restore_into_a_running_run_is_refused_exit_2(s3, make_run):
    import subprocess
    import sys

    run = make_run(steps=(1,))
    backup_run(Layout(s3.root), s3.store(), run.name, out=io.StringIO(), err=io.StringIO())
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        make_run(steps=(1,), pid=sleeper.pid, phase="training")
        before = run.files()
        proc = s3.cli("--action", "restore", "--training-run", run.name, "--force", "--root", str(s3.root))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert proc.returncode == 2 and "running" in proc.stderr
    assert run.files() == before
