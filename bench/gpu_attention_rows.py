"""Decode attention with R rows of a group per program, against the step's kernel
(fused_decode.rope_attention, one row per program), 28 layers' caches at batch 128 in one graph.

    python bench/gpu_attention_rows.py [--out $OUT/attention_rows.json]    # on the GPU machine
    TRITON_INTERPRET=1 python bench/gpu_attention_rows.py --check          # anywhere: correctness

The step's kernel runs one program per (row, KV head): 256 programs, each reading the group's
128 prompt slots (from the group's first row, so the other seven find them in L2) and then its
own generated slots, 64 at a time, with its 6 query heads in a 16-row tile. Its time through the
rollout is ~12.7 us a layer against ~4.4 us for the bytes it reads from memory at the copy rate
(call 46). Here a program takes R rows of one group (R x 6 queries in one tile): the prompt's
keys and values are read once for the R rows, and the generated slots of the R rows are read
side by side as one tile of R x SB slots, each query scoring against all of it and masked to its
own row's. Same bytes from memory, 1/R of the prompt's reads from L2, R x the multiplies (idle
tensor cores here), 256 / R programs.

The cascade (`cascade_attention`): in one launch, 16 programs per KV head take a group's prompt
slots once for all 48 of its queries (a 64-row tile), 128 take one row's own slots and the new
token as the step's kernel does; each writes its partial softmax and draws a ticket per row, and
the second to draw merges the row's two parts (split_attention's tickets).

Timing-only forms (`prompt=False`: the prompt's slots are not read, the output is wrong) show
what the prompt part costs. Each form is timed per fill (slots filled at the step), its output
compared with the step kernel's (relative error; bf16 output rounding is ~3e-3).

On an H200 (docs/benchmarks.md, issue 18, calls 47-50) every correct form was slower than the
step's kernel: R rows a program 1.04-3.3x, the cascade in one launch 1.44-1.85x, as two kernels
side by side on two streams 1.13-1.51x (call 50). Leaving the prompt out took 19-40% off the same
code (the share the prompt's reads from L2 cost), and no form sharing them got it back. Call 53
repeated them; there the autotuner's pick for the step kernel at 160 filled slots was slow, so one
and two rows a program (fixed configurations) came out ahead of it at that fill.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.attention_blocks import _attend_block, _new_token, _softmax_step
from trainer.fused_decode import rope_attention, step_bias
from trainer.qwen2_decode import DecodeState, ModelDims
from trainer.triton_base import tl, triton

LAYERS, BATCH, CAP = 28, 128, 448
# rows: (rows a program, slots a row per generated-slot tile, prompt slots per tile, warps, stages,
# prompt read)
FORMS = ((1, 64, 64, 4, 3, True), (1, 64, 64, 4, 3, False), (2, 32, 64, 4, 3, True), (2, 64, 64, 4, 3, True),
         (2, 64, 64, 8, 3, True), (2, 32, 64, 4, 4, True), (4, 16, 64, 4, 3, True), (4, 32, 64, 8, 3, True),
         (4, 32, 64, 4, 2, True), (8, 16, 64, 8, 3, True), (2, 64, 64, 4, 3, False), (4, 32, 64, 8, 3, False))
# cascade: (rows a group, slots per block, warps, stages, launches)
CASCADE_FORMS = ((8, 64, 4, 3, "one"), (8, 64, 4, 3, "two"), (8, 64, 4, 3, "side"), (8, 32, 4, 3, "side"),
                 (8, 128, 8, 2, "side"), (8, 64, 8, 3, "side"))

if triton is not None:
    @triton.jit
    def _queries(qkv_ptr, cos_ptr, sin_ptr, pos_ptr, q_row, q_head, q_live, qkv_stride_b, dtype, D: tl.constexpr):
        # A tile of q/k/v heads (row q_row, head q_head of the product's output each: a query, or
        # a key past the HEADS query heads) with RoPE at their rows' positions, as
        # attention_blocks._new_token computes them (float32, rounded once to dtype).
        HALF: tl.constexpr = D // 2
        dims = tl.arange(0, D)
        rot = (dims + HALF) % D
        sign = tl.where(dims < HALF, -1.0, 1.0)
        q_pos = tl.load(pos_ptr + q_row)
        q_at = qkv_ptr + q_row[:, None] * qkv_stride_b + q_head[:, None] * D
        q = tl.load(q_at + dims[None, :], mask=q_live[:, None], other=0.0).to(tl.float32)
        q_rot = tl.load(q_at + rot[None, :], mask=q_live[:, None], other=0.0).to(tl.float32)
        cos = tl.load(cos_ptr + q_pos[:, None] * D + dims[None, :]).to(tl.float32)
        sin = tl.load(sin_ptr + q_pos[:, None] * D + dims[None, :]).to(tl.float32)
        return (q * cos + sign[None, :] * q_rot * sin).to(dtype)

    @triton.jit
    def _soft_update(q, kk, vv, bias, m_i, l_i, acc, scale, F32_DOT: tl.constexpr):
        # One tile of slots into the online softmax: scores q kk^T * scale + bias (-inf: masked).
        if F32_DOT:
            s = tl.dot(q.to(tl.float32), tl.trans(kk.to(tl.float32)))
        else:
            s = tl.dot(q, tl.trans(kk))
        return _softmax_step(s * scale + bias, vv, m_i, l_i, acc, F32_DOT)

    @triton.jit
    def _prompt(q, q_row, leader, shared, cache_ptr, bias_ptr, bias_stride_b, cache_stride_n, m_i, l_i, acc, scale,
                kv_len: tl.constexpr, D: tl.constexpr, PB: tl.constexpr, F32_DOT: tl.constexpr):
        # The group's prompt slots [0, shared), from its first row's cache (offset `leader`), for
        # every query of the tile.
        dims = tl.arange(0, D)
        # (Triton's interpreter cannot bound a loop by a loaded value: there, masks alone stop it.)
        for start in range(0, kv_len if F32_DOT else shared, PB):
            slots = start + tl.arange(0, PB)
            inside = slots < shared
            at = cache_ptr + leader + slots[:, None] * cache_stride_n
            kk = tl.load(at + dims[None, :], mask=inside[:, None], other=0.0)
            vv = tl.load(at + D + dims[None, :], mask=inside[:, None], other=0.0)
            bias = tl.load(bias_ptr + q_row[:, None] * bias_stride_b + slots[None, :], mask=inside[None, :],
                           other=float("-inf")).to(tl.float32)
            m_i, l_i, acc = _soft_update(q, kk, vv, bias, m_i, l_i, acc, scale, F32_DOT)
        return m_i, l_i, acc

    @triton.jit
    def _rows_kernel(qkv_ptr, cos_ptr, sin_ptr, pos_ptr, write_ptr, leader_ptr, shared_ptr, cache_ptr, bias_ptr,
                     out_ptr, scale, qkv_stride_b, cache_stride_b, cache_stride_h, cache_stride_n,
                     bias_stride_b, out_stride_b, kv_len: tl.constexpr, HEADS: tl.constexpr, KV_HEADS: tl.constexpr,
                     GROUPS: tl.constexpr, D: tl.constexpr, R: tl.constexpr, BLOCK_M: tl.constexpr,
                     SB: tl.constexpr, PB: tl.constexpr, RP: tl.constexpr, PROMPT: tl.constexpr,
                     F32_DOT: tl.constexpr):
        first = tl.program_id(0) * R
        h = tl.program_id(1)
        dims = tl.arange(0, D)
        # query i: row first + i // GROUPS, head h * GROUPS + i % GROUPS
        qi = tl.arange(0, BLOCK_M)
        q_live = qi < R * GROUPS
        q_row = first + tl.where(q_live, qi // GROUPS, 0)
        q_head = h * GROUPS + qi % GROUPS
        q = _queries(qkv_ptr, cos_ptr, sin_ptr, pos_ptr, q_row, q_head, q_live, qkv_stride_b,
                     cache_ptr.dtype.element_ty, D)
        # the R rows' new key (RoPE) and value into the cache at this step's slot
        ri = tl.arange(0, RP)
        r_live = ri < R
        r_row = first + tl.where(r_live, ri, 0)
        slot = tl.load(write_ptr)
        k = _queries(qkv_ptr, cos_ptr, sin_ptr, pos_ptr, r_row, HEADS + h + 0 * ri, r_live, qkv_stride_b,
                     cache_ptr.dtype.element_ty, D)  # the key's columns follow the query heads'
        v = tl.load(qkv_ptr + r_row[:, None] * qkv_stride_b + (HEADS + KV_HEADS + h) * D + dims[None, :],
                    mask=r_live[:, None], other=0.0)
        entry = cache_ptr + r_row[:, None] * cache_stride_b + h * cache_stride_h + slot * cache_stride_n
        tl.store(entry + dims[None, :], k, mask=r_live[:, None])
        tl.store(entry + D + dims[None, :], v, mask=r_live[:, None])
        tl.debug_barrier()  # the slot just written is read back below, by other threads
        limit = tl.minimum(slot, kv_len - 1) + 1
        m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        shared = tl.load(shared_ptr)
        if PROMPT:  # the group's prompt slots, once for the R rows, from the group's first row
            leader = tl.load(leader_ptr + first) * cache_stride_b + h * cache_stride_h
            m_i, l_i, acc = _prompt(q, q_row, leader, shared, cache_ptr, bias_ptr, bias_stride_b, cache_stride_n,
                                    m_i, l_i, acc, scale, kv_len, D, PB, F32_DOT)
        # each row's own slots from the prompt's end through this step's, R rows side by side
        j = tl.arange(0, R * SB)
        j_row = first + j // SB
        j_own = j_row * cache_stride_b + h * cache_stride_h
        mine = (qi // GROUPS)[:, None] == (j // SB)[None, :]
        for start in range(0 if F32_DOT else shared, kv_len if F32_DOT else limit, SB):
            slots = start + j % SB
            inside = (slots >= shared) & (slots < limit)
            at = cache_ptr + j_own[:, None] + slots[:, None] * cache_stride_n
            kk = tl.load(at + dims[None, :], mask=inside[:, None], other=0.0)
            vv = tl.load(at + D + dims[None, :], mask=inside[:, None], other=0.0)
            bias = tl.load(bias_ptr + j_row[None, :] * bias_stride_b + slots[None, :], mask=inside[None, :],
                           other=float("-inf")).to(tl.float32)
            m_i, l_i, acc = _soft_update(q, kk, vv, tl.where(mine, bias, float("-inf")), m_i, l_i, acc, scale,
                                         F32_DOT)
        out = acc / l_i[:, None]
        tl.store(out_ptr + q_row[:, None] * out_stride_b + q_head[:, None] * D + dims[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=q_live[:, None])

    NEG = tl.constexpr(-1.0e30)

    @triton.jit
    def _merge(m_p, l_p, acc_p, m_s, l_s, acc_s, live):
        # A row's prompt part and own part of the softmax, prompt first (the same sum whichever
        # program merges): the normalised output.
        m_all = tl.maximum(m_p, m_s)
        w_p = tl.exp(m_p - m_all)
        w_s = tl.exp(m_s - m_all)
        return (acc_p * w_p[:, None] + acc_s * w_s[:, None]) / tl.where(live, l_p * w_p + l_s * w_s, 1.0)[:, None]

    @triton.jit
    def _cascade_prefix(pid, h, dims, shared, qkv_ptr, cos_ptr, sin_ptr, pos_ptr, write_ptr, leader_ptr, cache_ptr,
                        bias_ptr, out_ptr, part_acc_ptr, part_ml_ptr, ticket_ptr, scale, qkv_stride_b, cache_stride_b,
                        cache_stride_h, cache_stride_n, bias_stride_b, out_stride_b, kv_len: tl.constexpr,
                        HEADS: tl.constexpr, KV_HEADS: tl.constexpr, GROUPS: tl.constexpr, D: tl.constexpr,
                        GS: tl.constexpr, HP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK: tl.constexpr,
                        F32_DOT: tl.constexpr):
        # A group's prompt slots for all its GS rows' queries (part 0).
        qi = tl.arange(0, GS * HP)
        q_live = (qi % HP) < GROUPS
        q_row = pid * GS + qi // HP
        j = tl.where(q_live, qi % HP, 0)
        q_head = h * GROUPS + j
        q = _queries(qkv_ptr, cos_ptr, sin_ptr, pos_ptr, q_row, q_head, q_live, qkv_stride_b,
                     cache_ptr.dtype.element_ty, D)
        m_i = tl.full([GS * HP], NEG, tl.float32)
        l_i = tl.zeros([GS * HP], tl.float32)
        acc = tl.zeros([GS * HP, D], tl.float32)
        leader = tl.load(leader_ptr + pid * GS) * cache_stride_b + h * cache_stride_h
        m_i, l_i, acc = _prompt(q, q_row, leader, shared, cache_ptr, bias_ptr, bias_stride_b, cache_stride_n, m_i, l_i,
                                acc, scale, kv_len, D, BLOCK, F32_DOT)
        pair = q_row * KV_HEADS + h
        part_acc = part_acc_ptr + pair[:, None] * 2 * GROUPS * D + j[:, None] * D + dims[None, :]
        part_ml = part_ml_ptr + pair * 4 * GROUPS + j
        tl.store(part_acc, acc, mask=q_live[:, None])
        tl.store(part_ml, m_i, mask=q_live)
        tl.store(part_ml + GROUPS, l_i, mask=q_live)
        tl.debug_barrier()
        rows = pid * GS + tl.arange(0, GS)
        tickets = tl.atomic_add(ticket_ptr + rows * KV_HEADS + h, 1, sem="acq_rel", scope="gpu")
        tl.debug_barrier()
        second = tl.reshape(tl.broadcast_to((tickets == 1)[:, None], [GS, HP]), [GS * HP]) & q_live
        m_s = tl.load(part_ml + 2 * GROUPS, mask=second, other=NEG, cache_modifier=".cg")
        l_s = tl.load(part_ml + 3 * GROUPS, mask=second, other=0.0, cache_modifier=".cg")
        acc_s = tl.load(part_acc + GROUPS * D, mask=second[:, None], other=0.0, cache_modifier=".cg")
        out = _merge(m_i, l_i, acc, m_s, l_s, acc_s, second)
        tl.store(out_ptr + q_row[:, None] * out_stride_b + q_head[:, None] * D + dims[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=second[:, None])
        tl.store(ticket_ptr + rows * KV_HEADS + h, 0, mask=tickets == 1)

    @triton.jit
    def _cascade_suffix(b, h, dims, shared, qkv_ptr, cos_ptr, sin_ptr, pos_ptr, write_ptr, leader_ptr, cache_ptr,
                        bias_ptr, out_ptr, part_acc_ptr, part_ml_ptr, ticket_ptr, scale, qkv_stride_b, cache_stride_b,
                        cache_stride_h, cache_stride_n, bias_stride_b, out_stride_b, kv_len: tl.constexpr,
                        HEADS: tl.constexpr, KV_HEADS: tl.constexpr, GROUPS: tl.constexpr, D: tl.constexpr,
                        GS: tl.constexpr, HP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK: tl.constexpr,
                        F32_DOT: tl.constexpr):
        # One row's own slots and the new token (part 1), as the step's kernel.
        HALF: tl.constexpr = D // 2
        rows_m = tl.arange(0, BLOCK_M)
        live = rows_m < GROUPS
        heads = h * GROUPS + rows_m
        slot = tl.load(write_ptr)
        q1, q2, k1, k2, v_new = _new_token(qkv_ptr, cos_ptr, sin_ptr, pos_ptr, b, h, qkv_stride_b, 0,
                                           qkv_ptr, out_ptr.dtype.element_ty, HEADS, KV_HEADS, GROUPS, D,
                                           BLOCK_M, 0, False)
        own = b * cache_stride_b + h * cache_stride_h
        entry = cache_ptr + own + slot * cache_stride_n
        halves = tl.arange(0, HALF)
        filled = tl.minimum(slot, kv_len)
        tl.store(entry + halves, k1.to(cache_ptr.dtype.element_ty))
        tl.store(entry + HALF + halves, k2.to(cache_ptr.dtype.element_ty))
        tl.store(entry + D + dims, v_new.to(cache_ptr.dtype.element_ty))
        m_i = (tl.sum(q1.to(tl.float32) * k1.to(tl.float32)[None, :], 1)
               + tl.sum(q2.to(tl.float32) * k2.to(tl.float32)[None, :], 1)) * scale
        l_i = tl.full([BLOCK_M], 1.0, tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32) + v_new.to(tl.float32)[None, :]
        for start in range(0 if F32_DOT else shared, kv_len if F32_DOT else filled, BLOCK):
            slots = start + tl.arange(0, BLOCK)
            inside = (slots >= shared) & (slots < filled)
            at = cache_ptr + own + slots[:, None] * cache_stride_n
            bias = tl.load(bias_ptr + b * bias_stride_b + slots, mask=inside, other=float("-inf")).to(tl.float32)
            m_i, l_i, acc = _attend_block(q1, q2, at, inside, bias, m_i, l_i, acc, scale, D, F32_DOT)
        pair = b * KV_HEADS + h
        part_acc = part_acc_ptr + pair * 2 * GROUPS * D + rows_m[:, None] * D + dims[None, :]
        part_ml = part_ml_ptr + pair * 4 * GROUPS + rows_m
        tl.store(part_acc + GROUPS * D, acc, mask=live[:, None])
        tl.store(part_ml + 2 * GROUPS, m_i, mask=live)
        tl.store(part_ml + 3 * GROUPS, l_i, mask=live)
        tl.debug_barrier()
        ticket = tl.atomic_add(ticket_ptr + pair, 1, sem="acq_rel", scope="gpu")
        tl.debug_barrier()
        if ticket == 1:
            m_p = tl.load(part_ml, mask=live, other=NEG, cache_modifier=".cg")
            l_p = tl.load(part_ml + GROUPS, mask=live, other=0.0, cache_modifier=".cg")
            acc_p = tl.load(part_acc, mask=live[:, None], other=0.0, cache_modifier=".cg")
            out = _merge(m_p, l_p, acc_p, m_i, l_i, acc, live)
            tl.store(out_ptr + b * out_stride_b + heads[:, None] * D + dims[None, :],
                     out.to(out_ptr.dtype.element_ty), mask=live[:, None])
            tl.store(ticket_ptr + pair, 0)

    @triton.jit
    def _cascade_kernel(qkv_ptr, cos_ptr, sin_ptr, pos_ptr, write_ptr, leader_ptr, shared_ptr, cache_ptr, bias_ptr,
                        out_ptr, part_acc_ptr, part_ml_ptr, ticket_ptr, scale, qkv_stride_b, cache_stride_b,
                        cache_stride_h, cache_stride_n, bias_stride_b, out_stride_b, kv_len: tl.constexpr,
                        HEADS: tl.constexpr, KV_HEADS: tl.constexpr, GROUPS: tl.constexpr, D: tl.constexpr,
                        GS: tl.constexpr, NG: tl.constexpr, HP: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK: tl.constexpr, F32_DOT: tl.constexpr, PART: tl.constexpr):
        # Programs [0, NG): a group's prompt slots for all its GS rows' queries (part 0); programs
        # [NG, NG + batch): one row's own slots and the new token (part 1), as the step's kernel.
        # Each writes its partial softmax and draws a ticket per row; the second to draw merges
        # the row's two parts (prompt first: the same sum whoever merges) and resets the ticket.
        # PART 1: the prompt programs alone (grid NG), 2: the row programs alone (grid batch), each
        # kernel sized for its own part (two launches, which may run side by side).
        pid = tl.program_id(0)
        h = tl.program_id(1)
        dims = tl.arange(0, D)
        shared = tl.load(shared_ptr)
        # (PART 1 and 2 are compile-time branches: each kernel holds only its own part)
        if PART == 1:
            _cascade_prefix(pid, h, dims, shared, qkv_ptr, cos_ptr, sin_ptr, pos_ptr, write_ptr, leader_ptr,
                            cache_ptr, bias_ptr, out_ptr, part_acc_ptr, part_ml_ptr, ticket_ptr, scale, qkv_stride_b,
                            cache_stride_b, cache_stride_h, cache_stride_n, bias_stride_b, out_stride_b, kv_len,
                            HEADS, KV_HEADS, GROUPS, D, GS, HP, BLOCK_M, BLOCK, F32_DOT)
        elif PART == 2:
            _cascade_suffix(pid, h, dims, shared, qkv_ptr, cos_ptr, sin_ptr, pos_ptr, write_ptr, leader_ptr,
                            cache_ptr, bias_ptr, out_ptr, part_acc_ptr, part_ml_ptr, ticket_ptr, scale, qkv_stride_b,
                            cache_stride_b, cache_stride_h, cache_stride_n, bias_stride_b, out_stride_b, kv_len,
                            HEADS, KV_HEADS, GROUPS, D, GS, HP, BLOCK_M, BLOCK, F32_DOT)
        elif pid < NG:
            _cascade_prefix(pid, h, dims, shared, qkv_ptr, cos_ptr, sin_ptr, pos_ptr, write_ptr, leader_ptr,
                            cache_ptr, bias_ptr, out_ptr, part_acc_ptr, part_ml_ptr, ticket_ptr, scale, qkv_stride_b,
                            cache_stride_b, cache_stride_h, cache_stride_n, bias_stride_b, out_stride_b, kv_len,
                            HEADS, KV_HEADS, GROUPS, D, GS, HP, BLOCK_M, BLOCK, F32_DOT)
        else:
            _cascade_suffix(pid - NG, h, dims, shared, qkv_ptr, cos_ptr, sin_ptr, pos_ptr, write_ptr, leader_ptr,
                            cache_ptr, bias_ptr, out_ptr, part_acc_ptr, part_ml_ptr, ticket_ptr, scale, qkv_stride_b,
                            cache_stride_b, cache_stride_h, cache_stride_n, bias_stride_b, out_stride_b, kv_len,
                            HEADS, KV_HEADS, GROUPS, D, GS, HP, BLOCK_M, BLOCK, F32_DOT)


_CASCADE_WS: dict = {}
_SIDE: list = []  # the cascade's second stream


def cascade_attention(dims: ModelDims, qkv, state: DecodeState, cache, bias, kv_len: int, form) -> torch.Tensor:
    """Groups of `gs` consecutive rows share their prompt (their leader is the group's first row).
    `launches`: "one" (both parts in one grid), "two" (the prompt's kernel, then the rows'), "side"
    (the prompt's kernel on a second stream, side by side with the rows')."""
    gs, block, warps, stages, launches = form
    batch, groups = qkv.shape[0], dims.heads // dims.kv_heads
    key = (str(qkv.device), batch, dims.kv_heads, groups, dims.head_dim)
    if key not in _CASCADE_WS:
        _CASCADE_WS[key] = (
            torch.empty(batch * dims.kv_heads * 2 * groups * dims.head_dim, device=qkv.device, dtype=torch.float32),
            torch.empty(batch * dims.kv_heads * 4 * groups, device=qkv.device, dtype=torch.float32),
            torch.zeros(batch * dims.kv_heads, device=qkv.device, dtype=torch.int32))
    part_acc, part_ml, tickets = _CASCADE_WS[key]
    out = torch.empty(batch, dims.q_size, device=qkv.device, dtype=cache.dtype)
    cuda = qkv.device.type == "cuda"
    args = (qkv, state.cos, state.sin, state.positions, state.write_index, state.leaders, state.shared, cache, bias,
            out, part_acc, part_ml, tickets, float(dims.head_dim ** -0.5), qkv.stride(0), cache.stride(0),
            cache.stride(1), cache.stride(2), bias.stride(0), out.stride(0))
    shape = {"kv_len": kv_len, "HEADS": dims.heads, "KV_HEADS": dims.kv_heads, "GROUPS": groups, "D": dims.head_dim,
             "GS": gs, "NG": batch // gs, "HP": triton.next_power_of_2(groups),
             "BLOCK_M": max(16, triton.next_power_of_2(groups)), "BLOCK": block, "F32_DOT": not cuda,
             "num_warps": warps, "num_stages": stages}
    if launches == "one":
        _cascade_kernel[(batch // gs + batch, dims.kv_heads)](*args, PART=0, **shape)
        return out
    if launches == "side" and cuda:
        if not _SIDE:
            _SIDE.append(torch.cuda.Stream(qkv.device))
        side, main = _SIDE[0], torch.cuda.current_stream(qkv.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            _cascade_kernel[(batch // gs, dims.kv_heads)](*args, PART=1, **shape)
        _cascade_kernel[(batch, dims.kv_heads)](*args, PART=2, **shape)
        main.wait_stream(side)
        return out
    _cascade_kernel[(batch // gs, dims.kv_heads)](*args, PART=1, **shape)
    _cascade_kernel[(batch, dims.kv_heads)](*args, PART=2, **shape)
    return out


def rows_attention(dims: ModelDims, qkv, state: DecodeState, cache, bias, kv_len: int, form) -> torch.Tensor:
    rows, sb, pb, warps, stages, prompt = form
    batch, groups = qkv.shape[0], dims.heads // dims.kv_heads
    out = torch.empty(batch, dims.q_size, device=qkv.device, dtype=cache.dtype)
    cuda = qkv.device.type == "cuda"
    _rows_kernel[(batch // rows, dims.kv_heads)](
        qkv, state.cos, state.sin, state.positions, state.write_index, state.leaders, state.shared, cache, bias,
        out, float(dims.head_dim ** -0.5), qkv.stride(0), cache.stride(0), cache.stride(1),
        cache.stride(2), bias.stride(0), out.stride(0), kv_len=kv_len, HEADS=dims.heads, KV_HEADS=dims.kv_heads,
        GROUPS=groups, D=dims.head_dim, R=rows, BLOCK_M=max(16, triton.next_power_of_2(rows * groups)), SB=sb, PB=pb,
        RP=max(2, rows), PROMPT=prompt, F32_DOT=not cuda, num_warps=warps, num_stages=stages)
    return out


def setup(dev, layers: int, batch: int, cap: int, dims: ModelDims, filled: int, kv: int):
    gen = torch.Generator(device=dev).manual_seed(0)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    state = DecodeState.allocate(dims, batch, cap, dev, dtype)
    state.kv_cache.normal_(generator=gen)
    state.shared.fill_(min(128, filled))
    state.leaders.copy_(torch.arange(batch, device=dev) // 8 * 8)
    # the prompt is the same in a group's rows (the step's kernel reads the leader's; ours too)
    for b in range(batch):
        lead = b // 8 * 8
        state.kv_cache[:, b, :, :int(state.shared)] = state.kv_cache[:, lead, :, :int(state.shared)]
    state.valid.zero_()
    state.valid[:, :filled] = True
    padded = torch.arange(batch, device=dev) // 8 % 2 == 1  # every other group's prompt: 3 slots of padding
    state.valid[padded, :3] = False
    state.positions.copy_(filled - 3 * padded.long())
    state.write_index.fill_(filled)
    qkv = torch.randn(batch, dims.q_size + 2 * dims.kv_size, device=dev, generator=gen).to(dtype)
    bias = step_bias(state, kv, dtype)
    return state, qkv, bias


def check() -> int:
    """Under TRITON_INTERPRET=1 on a CPU: every form (prompt read) against the step's kernel."""
    dev = torch.device("cpu")
    dims = ModelDims(layers=1, hidden=64, heads=12, kv_heads=2, head_dim=32, intermediate=64, vocab=64,
                     eps=1e-6, rope_theta=1e6)
    worst = 0.0
    for filled, kv in ((20, 64), (37, 64)):
        state, qkv, bias = setup(dev, 1, 16, 64, dims, filled, kv)
        state.shared.fill_(12)
        cache = state.kv_cache[0]
        want = rope_attention(dims, qkv, state, cache.clone(), bias, kv).float()
        for form in ((1, 16, 16, 4, 3, True), (2, 8, 16, 4, 3, True), (4, 8, 8, 4, 3, True), (8, 4, 8, 4, 3, True)):
            got_cache = cache.clone()
            got = rows_attention(dims, qkv, state, got_cache, bias, kv, form).float()
            err = float((got - want).norm() / want.norm())
            same_cache = bool(torch.equal(got_cache, _written(dims, qkv, state, cache, bias, kv)))
            print(f"filled {filled} form {form}: rel err {err:.2e}, cache as the step kernel writes it {same_cache}")
            worst = max(worst, err if same_cache else 1.0)
    for filled, kv in ((20, 64), (37, 64), (9, 64)):
        state, qkv, bias = setup(dev, 1, 16, 64, dims, filled, kv)
        state.shared.fill_(min(12, filled))
        cache = state.kv_cache[0]
        want = rope_attention(dims, qkv, state, cache.clone(), bias, kv).float()
        for form in ((8, 16, 4, 3, "one"), (8, 8, 4, 3, "two")):
            for again in range(2):  # the tickets are back at 0 after each call
                got_cache = cache.clone()
                got = cascade_attention(dims, qkv, state, got_cache, bias, kv, form).float()
                err = float((got - want).norm() / want.norm())
                same_cache = bool(torch.equal(got_cache, _written(dims, qkv, state, cache, bias, kv)))
                reset = not bool(_CASCADE_WS[next(iter(_CASCADE_WS))][2].any())
                print(f"cascade filled {filled} form {form} call {again}: rel err {err:.2e}, cache {same_cache}, "
                      f"tickets reset {reset}")
                worst = max(worst, err if same_cache and reset else 1.0)
    print(f"worst {worst:.2e}")
    return 0 if worst < 1e-4 else 1


def _written(dims, qkv, state, cache, bias, kv):
    done = cache.clone()
    rope_attention(dims, qkv, state, done, bias, kv)
    return done


def measure(dims: ModelDims, kv: int, filled: int) -> dict:
    """Every form and the step's kernel at one fill, 28 layers in one graph each (ms a step)."""
    from trainer.triton_products import _graph_ms
    state, qkv, bias = setup(torch.device("cuda"), LAYERS, BATCH, CAP, dims, filled, kv)
    caches = [state.kv_cache[i] for i in range(LAYERS)]

    def step_kernel(cache):
        return rope_attention(dims, qkv, state, cache, bias, kv)

    want = step_kernel(caches[0]).float()
    base = _graph_ms(lambda: [step_kernel(c) for c in caches], replays=30)
    line = {"kv": kv, "filled": filled, "step_kernel_ms": base, "forms": []}
    print(f"kv {kv} filled {filled}: step kernel {base:.4f} ms for {LAYERS} layers", flush=True)
    kinds = [("rows", form, rows_attention) for form in FORMS] + [("cascade", form, cascade_attention)
                                                                 for form in CASCADE_FORMS]
    for kind, form, attention in kinds:
        def run(cache, form=form, attention=attention):
            return attention(dims, qkv, state, cache, bias, kv, form)
        try:
            err = float((run(caches[0]).float() - want).norm() / want.norm())
            ms = _graph_ms(lambda run=run: [run(c) for c in caches], replays=30)
        except Exception as exc:  # noqa: BLE001 - a form that does not compile or run is the finding
            print(f"  {kind} {form}: {exc!r:.2000}", flush=True)
            torch.cuda.synchronize()
            continue
        line["forms"].append({kind: form, "ms": ms, "rel_err": err})
        print(f"  {kind} {form}: {ms:.4f} ms ({ms / base:.3f}x) rel err {err:.1e}", flush=True)
    line["step_kernel_again_ms"] = _graph_ms(lambda: [step_kernel(c) for c in caches], replays=30)
    print(f"  step kernel again {line['step_kernel_again_ms']:.4f} ms", flush=True)
    return line


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.check:
        return check()
    dims = ModelDims(layers=LAYERS, hidden=1536, heads=12, kv_heads=2, head_dim=128, intermediate=8960,
                     vocab=151936, eps=1e-6, rope_theta=1e6)
    print(torch.cuda.get_device_name(), flush=True)
    results = [measure(dims, kv, filled) for kv, filled in ((384, 383), (256, 255), (192, 160))]
    if args.out:
        Path(args.out).write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") == "1" and "--check" not in sys.argv:
        sys.argv.append("--check")
    sys.exit(main())
