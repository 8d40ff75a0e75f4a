"""bench/gpu_weight_layout.py (issue 18: the MLP block reading row-major weights against copies
laid out box by box), kept working without a GPU: both layouts' block compiles for sm_90a with
the same shared memory, wgmma and TMA loads and no spills, and the whole script runs on a CPU in
Triton's interpreter at tiny widths, where the tiled block's outputs equal the row-major block's
bit for bit. Whether the tiled layout is faster is for the GPU run to say."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest
from child import REPO, child_env

SCRIPT = REPO / "bench" / "gpu_weight_layout.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=child_env(), capture_output=True,
                          text=True, timeout=600, check=False)


def test_both_layouts_compile_for_hopper_alike():
    pytest.importorskip("triton.experimental.gluon")  # (its compile helper, trainer.gluon_products)
    done = run("--compile-only")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    reports = {line.split(":", 1)[0]: ast.literal_eval(line.split(":", 1)[1].strip())
               for line in done.stdout.splitlines()}
    assert set(reports) == {"row-major", "tiled"}, done.stdout
    rows, tiled = reports["row-major"], reports["tiled"]
    assert tiled["spill_bytes"] == 0 and tiled["serialized"] == 0
    # the same pipeline: as many stages of shared memory, products and tensor-memory loads
    for key in ("shared", "wgmma", "tma_loads"):
        assert tiled[key] == rows[key] > 0, (key, reports)


def test_the_dry_run_measures_both_layouts_and_finds_them_equal(tmp_path):
    pytest.importorskip("triton")
    out = tmp_path / "layout.json"
    done = run("--dry-run", "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    found = json.loads(out.read_text())
    assert found["bitwise equal (act, x, h; all layers x, h)"] == [True] * 5
    assert found["barrier gave up"] is False
    # every timing for both layouts, twice each, and the two references once
    for what in ("block", "gate/up", "gate/up 16 rows", "down"):
        assert len(found["ms"][f"{what} row-major"]) == len(found["ms"][f"{what} tiled"]) == 2
        assert found["tiled / row-major"][what] > 0
    assert set(found["ms"]) >= {"copy of gate_up and down", "cublas gate/up 16 rows"}
    assert found["tiled_bytes_over_weights"] == 1.0  # 64 x 144 on 4 programs: 36 columns each, no padding
