"""What the decode attention kernels share (trainer/fused_decode.py, trainer/split_attention.py):
the new token's q, key and value with RoPE, one block of the online softmax over cached slots (Triton
JIT functions, inlined into the kernels that call them), the attention loop's tuning settings, and
the launch (`launch`: the arguments both kernels take, autotuned on CUDA).

    from trainer.attention_blocks import autotuned, launch, _attend_block, _new_token
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from trainer.qwen2_decode import DecodeState, ModelDims
from trainer.triton_base import repeatable, tl, triton

BLOCK_N = 64
# Slots per block, warps and pipeline stages of the attention loop: timed per (attention length,
# batch) by Triton's autotuner at the first call on CUDA (a warm-up, before any graph capture);
# the kernel's cache write is idempotent, so the repeated runs leave the same cache. "0": the
# fixed (64, 4, 3).
TUNE_ENV = "RLTUI_DECODE_TUNE"
CONFIGS = ((64, 4, 3), (32, 4, 3), (32, 4, 4), (64, 4, 2), (64, 8, 3), (128, 8, 2))

if triton is not None:
    @triton.jit
    def _rope_half(x1, x2, cos1, sin1, cos2, sin2):
        # x * cos + rotate_half(x) * sin, rotate_half(x) = (-x2, x1): in float32, as one expression
        return x1 * cos1 - x2 * sin1, x2 * cos2 + x1 * sin2

    @triton.jit
    def _qkv_load(row, cols, mask, part_stride, qkv_bias_ptr, dtype, PARTS: tl.constexpr, HAS_BIAS: tl.constexpr):
        # The product's output at `cols` of this row: bf16 as written (PARTS 0), or the sum of
        # PARTS float32 partials in a fixed order, plus the bias, rounded as the product's output.
        if PARTS == 0:
            return tl.load(row + cols, mask=mask, other=0.0)
        acc = tl.load(row + cols, mask=mask, other=0.0)
        for s in tl.static_range(1, PARTS):
            acc += tl.load(row + s * part_stride + cols, mask=mask, other=0.0)
        if HAS_BIAS:
            acc += tl.load(qkv_bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        return acc.to(dtype)

    @triton.jit
    def _new_token(qkv_ptr, cos_ptr, sin_ptr, pos_ptr, b, h, qkv_stride_b, part_stride, qkv_bias_ptr, dtype,
                   HEADS: tl.constexpr, KV_HEADS: tl.constexpr, GROUPS: tl.constexpr, D: tl.constexpr,
                   BLOCK_M: tl.constexpr, PARTS: tl.constexpr, HAS_BIAS: tl.constexpr):
        # Row b's new token for KV head h: q of its GROUPS query heads (as halves [BLOCK_M, D/2],
        # rows past GROUPS zero) and the key, both with RoPE at the row's position in float32 and
        # rounded once to `dtype`, and the value [D].
        HALF: tl.constexpr = D // 2
        rows = tl.arange(0, BLOCK_M)
        halves = tl.arange(0, HALF)
        dims = tl.arange(0, D)
        heads = h * GROUPS + rows
        pos = tl.load(pos_ptr + b)
        cos1 = tl.load(cos_ptr + pos * D + halves).to(tl.float32)
        cos2 = tl.load(cos_ptr + pos * D + HALF + halves).to(tl.float32)
        sin1 = tl.load(sin_ptr + pos * D + halves).to(tl.float32)
        sin2 = tl.load(sin_ptr + pos * D + HALF + halves).to(tl.float32)
        row = qkv_ptr + b * qkv_stride_b
        q_cols = heads[:, None] * D + halves[None, :]
        q_live = (rows < GROUPS)[:, None] & (halves < HALF)[None, :]
        q1 = _qkv_load(row, q_cols, q_live, part_stride, qkv_bias_ptr, dtype, PARTS, HAS_BIAS).to(tl.float32)
        q2 = _qkv_load(row, q_cols + HALF, q_live, part_stride, qkv_bias_ptr, dtype, PARTS, HAS_BIAS).to(tl.float32)
        q1, q2 = _rope_half(q1, q2, cos1[None, :], sin1[None, :], cos2[None, :], sin2[None, :])
        k_cols = HEADS * D + h * D + halves
        every = halves < HALF
        k1, k2 = _rope_half(
            _qkv_load(row, k_cols, every, part_stride, qkv_bias_ptr, dtype, PARTS, HAS_BIAS).to(tl.float32),
            _qkv_load(row, k_cols + HALF, every, part_stride, qkv_bias_ptr, dtype, PARTS, HAS_BIAS).to(tl.float32),
            cos1, sin1, cos2, sin2)
        v_new = _qkv_load(row, (HEADS + KV_HEADS) * D + h * D + dims, dims < D, part_stride, qkv_bias_ptr, dtype,
                          PARTS, HAS_BIAS)
        return q1.to(dtype), q2.to(dtype), k1.to(dtype), k2.to(dtype), v_new

    @triton.jit
    def _attend_block(q1, q2, at, inside, bias, m_i, l_i, acc, scale, D: tl.constexpr, F32_DOT: tl.constexpr):
        # One block of cached slots (key | value rows at `at`, those outside `inside` not read)
        # into the online softmax's running max, sum and unnormalised output.
        HALF: tl.constexpr = D // 2
        halves = tl.arange(0, HALF)
        c1 = tl.load(at + halves[None, :], mask=inside[:, None], other=0.0)
        c2 = tl.load(at + HALF + halves[None, :], mask=inside[:, None], other=0.0)
        v = tl.load(at + D + tl.arange(0, D)[None, :], mask=inside[:, None], other=0.0)
        if F32_DOT:  # Triton's interpreter multiplies bf16 tiles wrongly: the tests use float32
            s = tl.dot(q1.to(tl.float32), tl.trans(c1.to(tl.float32))) + tl.dot(q2.to(tl.float32), tl.trans(c2.to(tl.float32)))
        else:
            s = tl.dot(q1, tl.trans(c1)) + tl.dot(q2, tl.trans(c2))
        return _softmax_step(s * scale + bias[None, :], v, m_i, l_i, acc, F32_DOT)

    @triton.jit
    def _softmax_step(s, v, m_i, l_i, acc, F32_DOT: tl.constexpr):
        # Scores s [rows, slots] (-inf: masked) and their values v [slots, D] into the online
        # softmax's running max, sum and unnormalised output.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if F32_DOT:
            acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32))
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        return m_new, l_i, acc


def autotuned(kernel, key: list[str]):
    """`kernel` under Triton's autotuner over CONFIGS (slots per block, warps, stages), per `key`."""
    configs = [triton.Config({"BLOCK": b}, num_warps=w, num_stages=st) for b, w, st in CONFIGS]
    return triton.autotune(configs=configs, key=key)(kernel)


def launch(kernel, tuned: Callable, dims: ModelDims, qkv: torch.Tensor, state: DecodeState, cache: torch.Tensor,
           bias: torch.Tensor, kv_len: int, qkv_bias: torch.Tensor | None, pdl: bool, *,
           workspace: tuple[torch.Tensor, ...] = (), splits: int | None = None,
           constants: dict | None = None) -> torch.Tensor:
    """Run a decode attention kernel (fused_decode's, or split_attention's with its `workspace` and
    `splits`; `constants`: the kernel's own constexprs) on one grid of (row, kv head[, split]) and
    return its output [B, heads D]: on CUDA through `tuned()` (the autotuned kernel) unless
    RLTUI_DECODE_TUNE=0 or decoding is `repeatable` (a block size is a summation order), launched
    with PDL when `pdl`; on a CPU in Triton's interpreter with float32 tiles."""
    parts = qkv.shape[0] if qkv.dim() == 3 else 0
    cuda = qkv.device.type == "cuda"
    pdl = pdl and cuda  # Triton's interpreter has no grid dependency control
    batch, d = qkv.shape[-2], dims.head_dim
    qkv = qkv if qkv.stride(-1) == 1 else qkv.contiguous()
    out = torch.empty(batch, dims.q_size, device=qkv.device, dtype=cache.dtype)
    groups = dims.heads // dims.kv_heads
    has_bias = parts > 0 and qkv_bias is not None
    args = (qkv, state.cos, state.sin, state.positions, state.write_index, state.leaders, state.shared, cache, bias,
            out, *workspace, float(d ** -0.5), batch,
            qkv.stride(-2), cache.stride(0), cache.stride(1), cache.stride(2), bias.stride(0), out.stride(0),
            qkv.stride(0) if parts else 0, qkv_bias if has_bias else out)
    shape = {"kv_len": kv_len, "HEADS": dims.heads, "KV_HEADS": dims.kv_heads, "GROUPS": groups, "D": d,
             "BLOCK_M": max(16, triton.next_power_of_2(groups)), "PARTS": parts, "HAS_BIAS": has_bias, "PDL": pdl,
             **(constants or {})}
    grid = (batch, dims.kv_heads)
    if splits is not None:
        shape["SPLITS"] = splits
        grid = (*grid, splits)
    if cuda and os.environ.get(TUNE_ENV, "1") != "0" and not repeatable():
        tuned()[grid](*args, F32_DOT=False, launch_pdl=pdl, **shape)
    else:
        kernel[grid](*args, F32_DOT=not cuda, BLOCK=BLOCK_N, num_warps=4, num_stages=3, launch_pdl=pdl, **shape)
    return out
