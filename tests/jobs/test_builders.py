"""Job builders refuse what the process they would start refuses, before any record is written."""

from __future__ import annotations

import pytest

from rltui.jobs import builders
from rltui.errors import UsageError
from rltui.runs.localfs import Layout


@pytest.mark.parametrize("kwargs, names", [
    ({"action": "backup", "run": "run_2026-01-01_00-00-00", "keep_latest": True}, "--keep-latest"),
    ({"action": "verify"}, "--training-run"),
    ({"action": "restore", "run": "run_2026-01-01_00-00-00", "cleanup": True}, "--cleanup"),
    ({"action": "list-backups", "run": "run_2026-01-01_00-00-00"}, "--training-run"),
])
def test_sync_job_refuses_flag_combinations_the_archive_refuses(tmp_path, kwargs, names):
    with pytest.raises(UsageError, match=names):
        builders.sync_job(Layout(tmp_path), **kwargs)
    assert not (tmp_path / "jobs").exists()


def test_sync_job_with_cleanup_and_keep_latest_builds_the_archive_argv(tmp_path):
    spec = builders.sync_job(Layout(tmp_path), "backup", run="run_2026-01-01_00-00-00",
                         cleanup=True, keep_latest=True)
    assert list(spec.argv[1:]) == [
        "-m", "rltui.sync_to_s3", "--action", "backup", "--training-run", "run_2026-01-01_00-00-00",
        "--cleanup", "--keep-latest", "--root", str(tmp_path),
    ]


def test_the_checkout_goes_first_on_pythonpath_once():
    import os

    from rltui.jobs.records import CODE_ROOT, with_code_root

    once = with_code_root({"PYTHONPATH": "/other"})["PYTHONPATH"]
    assert once == os.pathsep.join([str(CODE_ROOT), "/other"])
    assert with_code_root({"PYTHONPATH": once})["PYTHONPATH"] == once  # the keeper adds it again
    assert with_code_root({})["PYTHONPATH"] == str(CODE_ROOT)
