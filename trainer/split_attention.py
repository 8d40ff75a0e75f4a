"""Decode attention split over the cache slots ("flash-decoding"): the contract of
fused_decode.rope_attention, with `splits` programs per (row, kv head) instead of one.

    from trainer.split_attention import rope_attention_split
    out = rope_attention_split(dims, qkv, state, cache, bias, kv_len, qkv_bias, splits=4)  # as rope_attention

fused_decode's kernel runs one program per (row, kv head): 256 programs at batch 128 on Qwen2.5-1.5B,
each walking its 100-380 filled slots in sequence, which keeps an H200 at about a third of its
memory bandwidth (~12.9 us a layer for ~18 MB of keys and values). Here the grid is (row, kv head,
split): program s attends over a contiguous chunk of the filled slots (chunks sized per call from
the filled count, a multiple of the slot block; late chunks may be empty), program 0 also writes
the new key | value and includes the new token. Each writes its partial softmax (running max, sum
and unnormalised output, float32) to a workspace and draws a ticket from a per-(row, kv head)
counter; the program with the last ticket adds the partials in a fixed order (split 0 first, so
the result does not depend on which program finishes last), writes the output and sets the
counter back to 0 for the next call, so a CUDA graph replays it without a memset.

Same arithmetic as rope_attention up to float32 summation order. Checked in Triton's interpreter
on a CPU against rope_attention (tests/trainer/test_split_attention.py): outputs to float32
rounding, the cache bitwise, shared prompt slots and unfilled slots never read, empty chunks,
the float32-partials input, repeated calls, and a combination independent of the last arrival.
"""

from __future__ import annotations

import torch

from trainer.attention_blocks import autotuned, launch
from trainer.qwen2_decode import DecodeState, ModelDims
from trainer.triton_base import tl, triton

if triton is not None:
    # Scores start here instead of -inf in splits without the new token: a chunk whose slots are
    # all masked (left padding, or an empty chunk) keeps l = 0 and acc = 0, not exp(-inf + inf).
    NEG = tl.constexpr(-1.0e30)

    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

    from trainer.attention_blocks import _attend_block, _new_token

    @triton.jit
    def _split_attention_kernel(qkv_ptr, cos_ptr, sin_ptr, pos_ptr, write_ptr, leader_ptr, shared_ptr, cache_ptr,
                                bias_ptr, out_ptr, part_acc_ptr, part_ml_ptr, ticket_ptr, scale, batch,
                                qkv_stride_b, cache_stride_b, cache_stride_h, cache_stride_n, bias_stride_b,
                                out_stride_b, part_stride, qkv_bias_ptr, kv_len: tl.constexpr,
                                F32_DOT: tl.constexpr, HEADS: tl.constexpr, KV_HEADS: tl.constexpr,
                                GROUPS: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK: tl.constexpr,
                                PARTS: tl.constexpr, HAS_BIAS: tl.constexpr, SPLITS: tl.constexpr,
                                PDL: tl.constexpr):
        if PDL:  # wait for the q/k/v product, then let the next kernel start its prologue
            gdc_wait()
            gdc_launch_dependents()
        HALF: tl.constexpr = D // 2
        b = tl.program_id(0)
        h = tl.program_id(1)
        split = tl.program_id(2)
        first = split == 0
        rows = tl.arange(0, BLOCK_M)
        halves = tl.arange(0, HALF)
        dims = tl.arange(0, D)
        heads = h * GROUPS + rows
        live_rows = rows < GROUPS
        every = halves < HALF
        slot = tl.load(write_ptr)
        q1, q2, k1, k2, v_new = _new_token(qkv_ptr, cos_ptr, sin_ptr, pos_ptr, b, h, qkv_stride_b, part_stride,
                                           qkv_bias_ptr, out_ptr.dtype.element_ty, HEADS, KV_HEADS, GROUPS, D,
                                           BLOCK_M, PARTS, HAS_BIAS)
        entry = cache_ptr + b * cache_stride_b + h * cache_stride_h + slot * cache_stride_n
        # The group's prompt slots from its first row (see fused_decode), the new slot by split 0.
        shared = tl.load(shared_ptr)
        leader = tl.load(leader_ptr + b) * cache_stride_b + h * cache_stride_h
        own = b * cache_stride_b + h * cache_stride_h
        filled = tl.minimum(slot, kv_len)
        tl.store(entry + halves, k1.to(cache_ptr.dtype.element_ty), mask=every & first)
        tl.store(entry + HALF + halves, k2.to(cache_ptr.dtype.element_ty), mask=every & first)
        tl.store(entry + D + dims, v_new.to(cache_ptr.dtype.element_ty), mask=(dims < D) & first)
        # This program's chunk [lo, hi) of the filled slots, whole blocks but for the last one.
        chunk = tl.cdiv(tl.cdiv(filled, SPLITS), BLOCK) * BLOCK
        lo = split * chunk
        hi = tl.minimum(lo + chunk, filled)
        new_score = (tl.sum(q1.to(tl.float32) * k1.to(tl.float32)[None, :], 1)
                     + tl.sum(q2.to(tl.float32) * k2.to(tl.float32)[None, :], 1)) * scale
        m_i = tl.where(first, new_score, NEG)
        l_i = tl.where(first, tl.full([BLOCK_M], 1.0, tl.float32), 0.0)
        acc = tl.where(first, tl.zeros([BLOCK_M, D], tl.float32) + v_new.to(tl.float32)[None, :], 0.0)
        # (Triton's interpreter cannot bound a loop by a loaded value: there, masks alone stop it.)
        for start in range(0 if F32_DOT else lo, kv_len if F32_DOT else hi, BLOCK):
            slots = start + tl.arange(0, BLOCK)
            inside = (slots >= lo) & (slots < hi)
            at = cache_ptr + tl.where(slots < shared, leader, own)[:, None] + slots[:, None] * cache_stride_n
            bias = tl.load(bias_ptr + b * bias_stride_b + slots, mask=inside, other=float("-inf")).to(tl.float32)
            m_i, l_i, acc = _attend_block(q1, q2, at, inside, bias, m_i, l_i, acc, scale, D, F32_DOT)
        # The partial of (b, h, split): acc [GROUPS, D], then m and l [GROUPS] each.
        pair = b * KV_HEADS + h
        part_acc = part_acc_ptr + pair * SPLITS * GROUPS * D + rows[:, None] * D + dims[None, :]
        part_ml = part_ml_ptr + pair * SPLITS * 2 * GROUPS + rows
        tl.store(part_acc + split * GROUPS * D, acc, mask=live_rows[:, None])
        tl.store(part_ml + split * 2 * GROUPS, m_i, mask=live_rows)
        tl.store(part_ml + split * 2 * GROUPS + GROUPS, l_i, mask=live_rows)
        # Every thread's stores before the ticket (barrier), the ticket releases them to the GPU
        # and acquires the other splits' for whoever draws the last one.
        tl.debug_barrier()
        ticket = tl.atomic_add(ticket_ptr + pair, 1, sem="acq_rel", scope="gpu")
        tl.debug_barrier()
        if ticket == SPLITS - 1:
            m_all = tl.full([BLOCK_M], NEG, tl.float32)
            for t in tl.static_range(SPLITS):
                m_all = tl.maximum(m_all, tl.load(part_ml + t * 2 * GROUPS, mask=live_rows, other=NEG,
                                                  cache_modifier=".cg"))
            l_all = tl.zeros([BLOCK_M], tl.float32)
            acc_all = tl.zeros([BLOCK_M, D], tl.float32)
            for t in tl.static_range(SPLITS):  # a fixed order: the sum is the same whoever adds it
                m_t = tl.load(part_ml + t * 2 * GROUPS, mask=live_rows, other=NEG, cache_modifier=".cg")
                l_t = tl.load(part_ml + t * 2 * GROUPS + GROUPS, mask=live_rows, other=0.0, cache_modifier=".cg")
                acc_t = tl.load(part_acc + t * GROUPS * D, mask=live_rows[:, None], other=0.0, cache_modifier=".cg")
                w = tl.exp(m_t - m_all)
                l_all += l_t * w
                acc_all += acc_t * w[:, None]
            out = acc_all / tl.where(live_rows, l_all, 1.0)[:, None]
            tl.store(out_ptr + b * out_stride_b + heads[:, None] * D + dims[None, :],
                     out.to(out_ptr.dtype.element_ty), mask=live_rows[:, None])
            tl.store(ticket_ptr + pair, 0)  # every split has drawn: ready for the next call


# (partial acc, partial m | l, tickets) per (device, batch, kv_heads, splits, groups, head_dim).
# The first call runs eagerly (fast_generation's warm-up, the autotuner's timing) before any CUDA
# graph capture, so these live outside the graph's pool and every replay reuses them; the tickets
# are zeroed here once and each call leaves them at 0. One stream at a time may use them.
_WORKSPACES: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def workspace(device: torch.device, batch: int, kv_heads: int, splits: int, groups: int,
              head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    key = (str(device), batch, kv_heads, splits, groups, head_dim)
    if key not in _WORKSPACES:
        _WORKSPACES[key] = (
            torch.empty(batch, kv_heads, splits, groups, head_dim, device=device, dtype=torch.float32),
            torch.empty(batch, kv_heads, splits, 2, groups, device=device, dtype=torch.float32),
            torch.zeros(batch * kv_heads, device=device, dtype=torch.int32))
    return _WORKSPACES[key]


_TUNED: list = []


def _tuned():
    # The autotuner runs the kernel several times per configuration: the cache write is
    # idempotent and each run leaves the tickets at 0, so the timing runs leave what one run does.
    if not _TUNED:
        _TUNED.append(autotuned(_split_attention_kernel, ["kv_len", "batch", "SPLITS"]))
    return _TUNED[0]


def rope_attention_split(dims: ModelDims, qkv: torch.Tensor, state: DecodeState, cache: torch.Tensor,
                         bias: torch.Tensor, kv_len: int, qkv_bias: torch.Tensor | None = None, *,
                         splits: int = 4, pdl: bool = False) -> torch.Tensor:
    """fused_decode.rope_attention's contract (inputs, output, cache write), computed by `splits`
    programs per (row, kv head) over chunks of the filled slots. `pdl`: on CUDA, launch with
    programmatic dependent launch (the kernel waits for the previous kernel's writes first)."""
    if splits < 1:
        raise ValueError(f"splits must be at least 1, not {splits}")
    batch = qkv.shape[-2]
    found = workspace(qkv.device, batch, dims.kv_heads, splits, dims.heads // dims.kv_heads, dims.head_dim)
    return launch(_split_attention_kernel, _tuned, dims, qkv, state, cache, bias, kv_len, qkv_bias, pdl,
                  workspace=found, splits=splits)
