"""trainer/triton_sampling.py in Triton's interpreter (CPU): the race draws from softmax(l / T) and
never a banned id. Skipped where Triton is not installed (the CUDA image has it). Run in a child
process: TRITON_INTERPRET must be set before Triton is first imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

CHILD = r"""
import json, torch
from trainer import triton_sampling as ts
ts.COLUMNS_PER_PROGRAM, ts.BLOCK = 32, 16  # several blocks and programs per row
rows, vocab, temperature = 600, 40, 0.8
logits = (torch.randn(vocab, generator=torch.Generator().manual_seed(0)) * 1.5).bfloat16()[None].repeat(rows, 1)
banned = torch.tensor([3, 17])
tokens = ts.race_sample(logits, 1 / temperature, torch.Generator().manual_seed(1), banned)
p = (logits[0].float() / temperature).index_fill(0, banned, float("-inf")).softmax(-1)
freq = torch.bincount(tokens, minlength=vocab).float() / rows
print(json.dumps({"dtype": str(tokens.dtype), "banned": float(freq[banned].sum()),
                  "tv": float(0.5 * (freq - p).abs().sum())}))
"""


def test_race_sample_draws_from_the_softmax_and_never_a_banned_id():
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(
        [str(repo)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["dtype"] == "torch.int64" and found["banned"] == 0
    assert found["tv"] < 0.08  # total variation from softmax; sampling noise alone is ~0.04 here
