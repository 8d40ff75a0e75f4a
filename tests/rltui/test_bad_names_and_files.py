"""Bad input that once gave tracebacks (issue 13): names longer than the filesystem allows and a
config that is not UTF-8 are one line, exit 2, and no job or run folder is made."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.rltui.test_status_cli import REPO, rltui

LONG = "a" * 300


def _nothing_made(root: Path) -> None:
    for folder in ("jobs", "training_runs"):
        made = [p.name for p in (root / folder).iterdir() if p.name != "run_x"] if (root / folder).is_dir() else []
        assert not made, made


@pytest.mark.parametrize("argv", [
    ["train", "--cfg", f"/tmp/{LONG}"],
    ["train", "--cfg", str(REPO / "configs" / "tiny.yaml"), "--ckpt", f"/tmp/{LONG}"],
    ["eval", "--training-run", "run_x", "--eval-dataset", LONG],
    ["eval", "--training-run", "run_x", "--eval-dataset", "a" * 250],  # fits alone, not as RUN_D
    ["eval", "--training-run", LONG],
    ["resume", "--training-run", LONG, "--from-step", "latest"],
    ["logs", LONG],
    ["status", "--run", LONG],
], ids=["cfg", "ckpt", "dataset", "eval-folder", "run", "resume", "job", "status"])
def test_a_name_longer_than_the_filesystem_allows_is_one_line_exit_2_and_no_job(lfs, argv):
    (lfs.root / "training_runs" / "run_x").mkdir(parents=True, exist_ok=True)
    proc = rltui("--batch", *argv, "--root", str(lfs.root))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "long" in proc.stderr or "at most 255" in proc.stderr or "no such" in proc.stderr
    _nothing_made(lfs.root)


def test_a_config_that_is_not_utf8_is_one_line_exit_2_and_no_job(lfs, tmp_path):
    cfg = tmp_path / "latin1.yaml"
    cfg.write_bytes(b"model:\n  base: tiny\n# caf\xe9\n")
    proc = rltui("--batch", "train", "--cfg", str(cfg), "--root", str(lfs.root))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "not UTF-8" in proc.stderr and str(cfg) in proc.stderr and proc.stderr.count("\n") == 1
    _nothing_made(lfs.root)


def test_the_trainer_reads_a_config_that_is_not_utf8_as_one_config_error(tmp_path):
    from trainer.config import ConfigError, load_config

    cfg = tmp_path / "latin1.yaml"
    cfg.write_bytes(b"model:\n  base: caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(cfg)
