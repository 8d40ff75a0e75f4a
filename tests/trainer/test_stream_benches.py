"""The weight-stream benchmarks written for the next GPU call (bench/gpu_gluon_stream.py,
gpu_gluon_mlp_stream.py, gpu_gluon_layer_stream.py; issue 18), kept working without a GPU: their
kernels compile for sm_90a with no spills and no serialized wgmma, and the Python model of their
rings and counters finds no deadlock or early read and catches every bug planted in it (the step
around the layer kernel, trainer/gluon_stream.py, is tested in test_gluon_stream.py). Each runs
as its own process, as on the GPU machine. Whether the kernels are right and fast is for the GPU
run to say."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from child import REPO, child_env

BENCH = REPO / "bench"


def run_bench(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, env=child_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_stream_model_runs_every_interleaving_clean():
    done = run_bench(str(BENCH / "gluon_stream_model.py"), "10")
    assert done.returncode == 0, done.stderr[-2000:]
    # 10 seeds x 2 (weights waiting or not) x 3 ring depths x 3 down lengths x 3 kernels' forms
    assert done.stdout.split() == ["ok", str(10 * 2 * 3 * 3 * 3), "runs"]


def test_stream_model_catches_every_planted_bug():
    done = run_bench(str(BENCH / "gluon_stream_model.py"), "--mutations")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "NOT caught" not in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "10 of 10 planted bugs caught"


@pytest.mark.parametrize(("script", "kernels"), [
    ("gpu_gluon_stream.py", 18), ("gpu_gluon_mlp_stream.py", 4), ("gpu_gluon_layer_stream.py", 11)])
def test_stream_kernels_compile_for_hopper(script, kernels):
    pytest.importorskip("triton.experimental.gluon")
    done = run_bench(str(BENCH / script), "--compile-only")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    reports = [line for line in done.stdout.splitlines() if "'spill_bytes': 0" in line and "'serialized': 0" in line]
    assert len(reports) == kernels, done.stdout
    # every ring fits an H100/H200 multiprocessor's 227 KiB of shared memory
    assert all(int(re.search(r"'shared': (\d+)", line).group(1)) <= 227 * 1024 for line in reports)


def test_the_layer_stream_bench_refuses_an_unknown_weight_init():
    env = child_env() | {"BENCH_STREAM_INIT": "fan-in"}
    done = subprocess.run([sys.executable, str(BENCH / "gpu_gluon_layer_stream.py"), "--compile-only"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == "BENCH_STREAM_INIT must be fan_in or hf, not 'fan-in'"
