"""Fixtures for the job tests: a localfs root, fake-trainer job specs, and cleanup of every
process a test's jobs left behind (keepers and their process groups)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from rltui.jobs import control
from rltui.runs.localfs import Layout
from rltui.runs.machine import pid_alive

sys.path.insert(0, str(Path(__file__).parent))  # for jobs_helpers (pytest runs in importlib mode)


@pytest.fixture
def layout(tmp_path: Path):
    lay = Layout(tmp_path / "localfs").ensure()
    yield lay
    for job in control.list_jobs(lay):
        s = job.state
        if s is None or not s.keeper_pid or s.keeper_pid == os.getpid():
            continue  # no keeper, or an in-process keeper of a unit test with fake children
        if pid_alive(s.keeper_pid):
            os.kill(s.keeper_pid, signal.SIGKILL)
        if s.pgid and s.pgid > 1:
            try:
                os.killpg(s.pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
