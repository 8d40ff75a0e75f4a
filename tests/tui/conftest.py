"""Fixtures for the TUI tests; the helpers live in tui_kit.py (imported by name)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # for tui_kit (pytest runs in importlib mode)

from tui_kit import SNAPSHOT_ROOT, build_localfs  # noqa: E402


@pytest.fixture
def tui_root(tmp_path: Path) -> Path:
    build_localfs(tmp_path / "localfs")
    return tmp_path / "localfs"


@pytest.fixture
def snapshot_root() -> Path:
    shutil.rmtree(SNAPSHOT_ROOT, ignore_errors=True)
    build_localfs(SNAPSHOT_ROOT)
    yield SNAPSHOT_ROOT
    shutil.rmtree(SNAPSHOT_ROOT, ignore_errors=True)
