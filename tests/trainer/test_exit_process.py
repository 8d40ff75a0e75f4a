"""How a training process ends: a rank of a multi-process job runs its exit handlers, flushes its
streams and skips the interpreter's finalization (where a gloo worker thread could abort it); a
single process exits the ordinary way."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from child import REPO

CODE = """
import atexit
from trainer.distributed import exit_process

class Finalized:
    def __del__(self):
        print("finalized", flush=True)  # runs only while the interpreter finalizes

keep = Finalized()
atexit.register(print, "exit handler ran")
print("buffered line")  # stdout is a pipe: block-buffered, not yet written
exit_process(3)
"""


def _run(world_size: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "WORLD_SIZE"}
    if world_size is not None:
        env["WORLD_SIZE"] = world_size
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def test_a_rank_of_a_multi_process_job_keeps_its_output_and_exit_code_and_skips_finalization():
    proc = _run("2")
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.splitlines() == ["buffered line", "exit handler ran"]


@pytest.mark.parametrize("world_size", [None, "1"])
def test_a_single_process_exits_the_ordinary_way(world_size):
    proc = _run(world_size)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.splitlines() == ["buffered line", "exit handler ran", "finalized"]
