"""Fixtures for the Slurm backend's tests: a real Slurm on this machine and a localfs for it.

    slurm_cluster   (module) a running SlurmCluster with two "nodes" on this host; skips with the
                    reason when Slurm is not installed or we are not root (make test installs it)
    slurm_root      (function) a fresh localfs root holding the cached tiny model
    slurm_cfg       a tiny training config (CPU, one thread) -> Path; overrides as section__key=value

Helpers the tests import are in slurm_kit.py (every test folder has a `conftest`, so none is
imported by that name).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cluster import SlurmCluster, SlurmUnavailable, missing_reason  # noqa: E402
from slurm_kit import CONFIG  # noqa: E402


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    why = missing_reason()
    if why:
        pytest.skip(why)
    folder = tmp_path_factory.mktemp("slurm")
    try:
        with SlurmCluster(folder, nodes=2) as cluster:
            yield cluster
    except SlurmUnavailable as e:
        pytest.skip(f"Slurm could not start here: {e}")


@pytest.fixture
def slurm_root(tiny_cache: Path, tmp_path: Path) -> Path:
    root = tmp_path / "localfs"
    (root / "models").mkdir(parents=True)
    shutil.copytree(tiny_cache / "models" / "tiny", root / "models" / "tiny")
    return root


@pytest.fixture
def slurm_cfg(tmp_path: Path) -> Callable[..., Path]:
    def make(**overrides: Any) -> Path:
        cfg = json.loads(json.dumps(CONFIG))
        for dotted, value in overrides.items():
            section, key = dotted.split("__")
            cfg[section][key] = value
        path = tmp_path / f"cfg_{len(list(tmp_path.glob('cfg_*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    return make
