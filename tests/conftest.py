"""Shared fixtures for the built-in tiny model (real torch / transformers / peft, on the CPU).

Fixtures:
    tiny_cache   (session) a localfs root whose models/tiny/ holds the built tiny model and its
                 warm-start adapter. Built once and reused across test sessions: the cache lives in
                 $RLTUI_TEST_MODEL_CACHE when set, else in the system temp folder under a key made
                 from the sources of trainer/tiny.py and trainer/data.py (edit them and it rebuilds).
    tiny_paths   (session) trainer.tiny.TinyPaths(base, warmstart) of that cached build.
    tiny_root    (function) a fresh, empty localfs root (a tmp folder) whose models/tiny/ is a copy
                 of the cached build, so `ensure_tiny(tiny_root)` and `model: tiny` never rebuild.

Tests that use them should keep CPU small: tiny subsets, short max_new_tokens. torch is limited
to one thread per test process here, since six people share this machine's two cores.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CACHE_ENV = "RLTUI_TEST_MODEL_CACHE"


def _build_key() -> str:
    h = hashlib.sha256()
    for rel in ("trainer/tiny.py", "trainer/data.py"):
        h.update((REPO / rel).read_bytes())
    return h.hexdigest()[:12]


@pytest.fixture(scope="session")
def tiny_cache() -> Path:
    import torch

    from trainer.tiny import ensure_tiny

    torch.set_num_threads(1)
    base = os.environ.get(CACHE_ENV) or os.path.join(tempfile.gettempdir(), "rltui-tiny-cache")
    root = Path(base) / _build_key()
    ensure_tiny(root)  # locked and atomic: parallel sessions build it once
    return root


@pytest.fixture(scope="session")
def tiny_paths(tiny_cache: Path):
    from trainer.tiny import ensure_tiny

    return ensure_tiny(tiny_cache)


@pytest.fixture
def tiny_root(tiny_cache: Path, tmp_path: Path) -> Path:
    root = tmp_path / "localfs"
    (root / "models").mkdir(parents=True)
    shutil.copytree(tiny_cache / "models" / "tiny", root / "models" / "tiny")
    return root


@pytest.fixture(autouse=True)
def _decoding_mode_put_back(monkeypatch):
    """The evaluator makes its process's decoding repeatable (trainer.triton_base.decode_repeatably
    sets RLTUI_DECODE_REPEATABLE); a test that runs it in pytest's process does not leave it on for
    the next test."""
    monkeypatch.setenv("RLTUI_DECODE_REPEATABLE", os.environ.get("RLTUI_DECODE_REPEATABLE", ""))
