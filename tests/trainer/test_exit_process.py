"""How a training process ends: a rank of a multi-process job runs its exit handlers, flushes its
streams and skips the interpreter's finalization (where a gloo worker thread could abort it); a
single process exits the ordinary way."""

from __future__ import annotations

import subprocess
import sys

import pytest
from child import child_env

GLOO_RANK = """
import torch
from trainer.distributed import exit_process, init_distributed, wrap_ddp

d = init_distributed()
ddp, _ = wrap_ddp(torch.nn.Linear(32, 32), d)
for _ in range(20):
    ddp(torch.randn(4, 32)).sum().backward()
    d.any(False)
    d.mean([1.0, 2.0])
d.close()
exit_process(0)
"""

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


def _env(**extra: str) -> dict[str, str]:
    """The child's environment: the repository on its path, WORLD_SIZE only where given."""
    env = child_env(**extra)
    if "WORLD_SIZE" not in extra:
        env.pop("WORLD_SIZE", None)
    return env


def _run(world_size: str | None) -> subprocess.CompletedProcess:
    env = _env() if world_size is None else _env(WORLD_SIZE=world_size)
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


@pytest.mark.slow
def test_gloo_ranks_that_end_right_after_their_collectives_exit_0(tmp_path):
    """Four CPU ranks on this machine's cores, each leaving just after an all-reduce of tensors made
    in Python. Ended by sys.exit instead, 19 of 40 such jobs here aborted (SIGABRT in a gloo worker
    thread during finalization); through exit_process, 0 of 40."""
    script = tmp_path / "rank.py"
    script.write_text(GLOO_RANK)
    for attempt in range(6):
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                               "--nnodes=1", "--nproc_per_node=4", str(script)],
                              env=_env(), capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, (attempt, proc.stderr[-3000:])
