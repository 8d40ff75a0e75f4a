"""Fixtures for the metrics store tests: small localfs trees written with localfs's own writers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # for store_kit (pytest runs in importlib mode)

from store_kit import build_three_runs  # noqa: E402


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return build_three_runs(tmp_path / "localfs")
