"""The optional Triton kernels in Triton's interpreter (CPU): trainer/triton_sampling.py draws from
softmax(l / T) and never a banned id; trainer/triton_decode.py equals SDPA's decode attention.
Skipped where Triton is not installed (the CUDA image has it). Each runs in a child process:
TRITON_INTERPRET must be set before Triton is first imported."""

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


def _interpreted(code: str) -> dict:
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(
        [str(repo)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_race_sample_draws_from_the_softmax_and_never_a_banned_id():
    found = _interpreted(CHILD)
    assert found["dtype"] == "torch.int64" and found["banned"] == 0
    assert found["tv"] < 0.08  # total variation from softmax; sampling noise alone is ~0.04 here


DECODE = r"""
import json, torch
from trainer.qwen2_decode import Attention, ModelDims, _attend
dims = ModelDims(layers=1, hidden=96, heads=6, kv_heads=2, head_dim=16, intermediate=8, vocab=8, eps=1e-6,
                 rope_theta=1e4)
gen = torch.Generator().manual_seed(0)
batch, length = 3, 150  # more than two blocks of slots, the last one partial
q = torch.randn(batch, dims.heads, dims.head_dim, generator=gen).bfloat16()
live = torch.randn(batch, dims.kv_heads, length + 10, 2 * dims.head_dim, generator=gen).bfloat16()[:, :, :length]
valid = torch.rand(batch, length, generator=gen) > 0.3
valid[1, :70] = False  # a whole block of slots masked (left padding)
bias = torch.zeros(batch, 1, length).bfloat16().masked_fill_(~valid[:, None], float("-inf"))[:, None]
want = _attend(dims, q.float(), live.float(), bias.float(), Attention.SDPA)
got = _attend(dims, q, live, bias, Attention.TRITON)
print(json.dumps({"shape": list(got.shape), "error": float((got.float() - want).norm() / want.norm())}))
"""


def test_triton_decode_attention_equals_sdpa():
    found = _interpreted(DECODE)
    assert found["shape"] == [3, 6 * 16]
    assert found["error"] < 0.01  # bf16 output rounding
