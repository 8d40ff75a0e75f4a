"""trainer/split_attention.py in Triton's interpreter (CPU): the attention split over chunks of the
cache slots equals fused_decode.rope_attention on the same inputs, in float32 (to rounding), for
1-4 splits, and leaves the same cache. Skipped where Triton is not installed; runs in a child
process (TRITON_INTERPRET must be set before Triton is first imported)."""

from __future__ import annotations

import pytest

from tests.trainer.test_triton_kernels import _interpreted

pytest.importorskip("triton")

SPLIT = r'''
import json, torch
from trainer import attention_blocks, split_attention
from trainer.fused_decode import rope_attention
from trainer.qwen2_decode import DecodeState, ModelDims
attention_blocks.BLOCK_N = 16  # several blocks per chunk, the last one partial (the interpreter's block)
dims = ModelDims(layers=1, hidden=192, heads=12, kv_heads=2, head_dim=16, intermediate=8, vocab=8, eps=1e-6,
                 rope_theta=1e4)  # 6 query heads per kv head, as Qwen2.5-1.5B
gen = torch.Generator().manual_seed(0)
batch, capacity, kv_len = 3, 80, 64
width = (dims.heads + 2 * dims.kv_heads) * dims.head_dim


def case(slot, prompt, parts):
    state = DecodeState.allocate(dims, batch, capacity, torch.device("cpu"), torch.float32)
    cache = torch.randn(state.kv_cache[0].shape, generator=gen)
    cache[1, :, :prompt] = float("nan")  # rows 0-1 share a prompt: row 1's copy is never read
    cache[:, :, slot + 1:] = float("nan")  # nor the slots past this step's
    state.valid[:, :slot + 1] = True  # as fused_decode.step_bias: the slot written is valid too
    state.valid[2, :min(20, slot)] = False  # left padding: with 4 splits, a whole chunk masked
    state.positions.copy_(torch.tensor([slot, slot, max(slot - 20, 0)]))
    state.write_index.fill_(slot)
    state.leaders.copy_(torch.tensor([0, 0, 2]))
    state.shared.fill_(prompt)
    bias = torch.zeros(batch, kv_len).masked_fill_(~state.valid[:, :kv_len], float("-inf"))
    if parts:  # float32 partial sums of a split product, its bias not yet added
        qkv, qkv_bias = torch.randn(parts, batch, width, generator=gen), torch.randn(width, generator=gen)
    else:
        qkv, qkv_bias = torch.randn(batch, width, generator=gen), None
    want_cache = cache.clone()
    want = rope_attention(dims, qkv, state, want_cache, bias, kv_len, qkv_bias)
    found = {}
    for splits in (1, 2, 3, 4):
        got_cache = cache.clone()
        got = split_attention.rope_attention_split(dims, qkv, state, got_cache, bias, kv_len, qkv_bias,
                                                   splits=splits)
        again = split_attention.rope_attention_split(dims, qkv, state, got_cache, bias, kv_len, qkv_bias,
                                                     splits=splits)
        tickets = split_attention.workspace(torch.device("cpu"), batch, dims.kv_heads, splits, 6, 16)[2]
        row = {"finite": bool(got.isfinite().all()), "max_abs_diff": float((got - want).abs().max()),
               "cache_equal": torch.allclose(got_cache, want_cache, rtol=0, atol=0, equal_nan=True),
               "again_equal": bool(torch.equal(again, got)), "tickets_zero": bool((tickets == 0).all())}
        if splits > 1:
            # The interpreter runs a pair's splits in order, so the last split combines. Start the
            # tickets at 1: the one before it draws the last ticket and combines, reading the last
            # split's partial of the previous (identical) call: the same output, bit for bit.
            tickets.fill_(1)
            reordered = split_attention.rope_attention_split(dims, qkv, state, got_cache, bias, kv_len, qkv_bias,
                                                             splits=splits)
            row["reordered_equal"] = bool(torch.equal(reordered, got))
            tickets.zero_()
        found[str(splits)] = row
    return found


# 50 filled slots in 16-slot blocks: chunks of 32 + 18 (2 splits), 32 + 18 + 0 (3), 16 + 16 + 16 + 2 (4).
print(json.dumps({"shared_prompt": case(slot=50, prompt=24, parts=0),
                  "empty_chunks": case(slot=10, prompt=6, parts=0),  # every chunk but the first empty
                  "partials": case(slot=50, prompt=24, parts=3)}))
'''


def test_split_attention_equals_the_single_program_attention():
    found = _interpreted(SPLIT)
    for name, rows in found.items():
        for splits, row in rows.items():
            where = f"{name}, {splits} splits: {row}"
            assert row["finite"] and row["cache_equal"], where
            assert row["max_abs_diff"] < 1e-5, where  # float32 in the interpreter: summation order only
            assert row["again_equal"] and row["tickets_zero"], where  # the tickets are back at 0
            assert row.get("reordered_equal", True), where  # the combination does not depend on arrival
