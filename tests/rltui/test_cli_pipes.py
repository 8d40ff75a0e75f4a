"""A reader that leaves early (`rltui --batch jobs --json | head -1`) is no error: no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def busy_root(tmp_path_factory) -> Path:
    sys.path.insert(0, str(REPO))
    from bench import make_localfs

    root = tmp_path_factory.mktemp("pipes") / "localfs"
    make_localfs.make_localfs(root, make_localfs.parse_args([str(root), "--runs", "3",
                                                             "--checkpoints", "2"]))
    return root


@pytest.mark.parametrize("command", [["jobs", "--json"], ["jobs"], ["status", "--json"],
                                     ["status"], ["eval", "--help"]])
def test_a_closed_pipe_ends_the_command_quietly(busy_root, command):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "rltui.cli", "--root", str(busy_root), "--batch",
                             *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader is gone before the command writes its first byte
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
