"""tests/install_tools.sh, which `make test` and .ci/run use to install what the tests need beyond
pip: run with a PATH on which tmux is missing and apt-get is a stand-in that records its
arguments and succeeds or fails."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent / "install_tools.sh"


def _run(tmp_path: Path, apt_status: int, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    calls = tmp_path / "apt-calls"
    for name in ("id", "env"):
        (fake / name).symlink_to(shutil.which(name))
    (fake / "apt-get").write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexit {apt_status}\n')
    (fake / "sudo").write_text('#!/bin/sh\n[ "$1" = "-n" ] && shift\nexec "$@"\n')
    for name in ("apt-get", "sudo"):
        (fake / name).chmod(0o755)
    env = {"PATH": str(fake), "TMPDIR": str(tmp_path)}
    done = subprocess.run([shutil.which("bash"), str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    return done, calls.read_text().splitlines() if calls.exists() else []


def test_installs_what_is_missing_with_one_update(tmp_path):
    done, calls = _run(tmp_path, 0)
    assert done.returncode == 0, done.stderr
    assert calls[0] == "update -qq"
    assert len(calls) == 2 and calls[1].startswith("install -y -qq --no-install-recommends")
    assert "tmux" in calls[1].split()  # (tmux is never in /usr/sbin, so it is missing on this PATH)
    assert "installing" in done.stdout and "tmux" in done.stdout


def test_best_effort_warns_and_succeeds_when_apt_fails(tmp_path):
    done, calls = _run(tmp_path, 100)
    assert done.returncode == 0
    assert "warning: could not install" in done.stderr and "tmux" in done.stderr
    assert "skip" in done.stderr
    assert calls == ["update -qq"]  # nothing installed after a failed update


def test_strict_fails_when_apt_fails(tmp_path):
    done, _ = _run(tmp_path, 100, "--strict")
    assert done.returncode == 1
    assert "error: could not install" in done.stderr and "tmux" in done.stderr
    assert (tmp_path / "rltui-tools-apt.log").exists()


def test_nothing_to_do_when_everything_is_there():
    if not all(shutil.which(n) or os.access(f"/usr/sbin/{n}", os.X_OK)
               for n in ("slurmctld", "slurmd", "sbatch", "munged", "tmux")):
        pytest.skip("the tools are not all installed here (make test installs them first)")
    done = subprocess.run(["bash", str(SCRIPT), "--strict"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0 and done.stdout == "" and done.stderr == ""
