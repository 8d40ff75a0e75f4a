"""An experiment, slower on an H200 than the fused step (docs/benchmarks.md, calls 26-28: 2.24 ms
against 1.94 for 28 layers at 384 slots): a whole decode layer as one persistent kernel, the
attention half's four phases (attention_block.py) then the MLP half's three (trainer/mlp_block.py),
six device-wide barriers on one counter, one cooperative launch a layer.

    from layer_block import layer_block
    x, h = layer_block(dims, x, h, layer, next_norm, state, cache, bias, kv_len, attention_shape, mlp_shape)

Gate/up reads the MLP half's input (written by other programs of the same launch) through tensor
descriptors after the barrier's proxy fence, so `mlp_shape.tma` must be True.
"""

from __future__ import annotations

import torch
from attention_block import AttentionShape

from trainer.mlp_block import BlockShape
from trainer.triton_base import tl, triton

if triton is not None:
    from attention_block import (
        _attention_phase,
        _leave,
        _norm_phase,
        _o_phase,
        _qkv_phase,
        _sync,
    )

    from trainer.mlp_block import _down_phase, _gate_up_phase

    @triton.jit
    def _layer_kernel(h_ptr, wqkv_ptr, qkv_bias_ptr, qkv_part_ptr, cos_ptr, sin_ptr, pos_ptr, write_ptr, leader_ptr,
                      shared_ptr, cache_ptr, bias_ptr, attn_ptr, wo_ptr, o_part_ptr, x_ptr, post_norm_ptr, x1_ptr,
                      h1_ptr, h1_desc, gu_ptr, gu_desc, act_ptr, act_desc, down_ptr, down_desc, d_part_ptr,
                      next_norm_ptr, x_out_ptr, h_out_ptr, sync_ptr, rows, scale, eps, cache_stride_b, cache_stride_h,
                      cache_stride_n, bias_stride_b, kv_len: tl.constexpr, H: tl.constexpr, I: tl.constexpr,
                      HEADS: tl.constexpr, KV_HEADS: tl.constexpr, GROUPS: tl.constexpr, D: tl.constexpr,
                      P: tl.constexpr, QKV_TILE: tl.constexpr, QKV_SPLITS: tl.constexpr, O_TILE: tl.constexpr,
                      O_SPLITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, HEAD_ROWS: tl.constexpr,
                      BLOCK: tl.constexpr, NORM_BLOCK: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_R: tl.constexpr, DOWN_N: tl.constexpr, SPLITS: tl.constexpr, TILES_N: tl.constexpr,
                      TMA: tl.constexpr, PHASE: tl.constexpr, F32_DOT: tl.constexpr):
        p = tl.program_id(0)
        Q: tl.constexpr = HEADS * D
        NQKV: tl.constexpr = (HEADS + 2 * KV_HEADS) * D
        failed = sync_ptr + 5
        if PHASE == 0 or PHASE == 1:
            _qkv_phase(h_ptr, wqkv_ptr, qkv_part_ptr, p, rows, H, NQKV, P, QKV_TILE, QKV_SPLITS, BLOCK_M, BLOCK_K,
                       F32_DOT)
        if PHASE == 0:
            _sync(sync_ptr, failed, 1, P, False)
        if PHASE == 0 or PHASE == 2:
            _attention_phase(qkv_part_ptr, qkv_bias_ptr, cos_ptr, sin_ptr, pos_ptr, write_ptr, leader_ptr, shared_ptr,
                             cache_ptr, bias_ptr, attn_ptr, p, rows, scale, cache_stride_b, cache_stride_h,
                             cache_stride_n, bias_stride_b, kv_len, HEADS, KV_HEADS, GROUPS, D, P, QKV_SPLITS,
                             BLOCK_M, HEAD_ROWS, BLOCK, HAS_BIAS, F32_DOT)
        if PHASE == 0:
            _sync(sync_ptr, failed, 2, P, False)
        if PHASE == 0 or PHASE == 3:
            _o_phase(attn_ptr, wo_ptr, o_part_ptr, p, rows, H, Q, P, O_TILE, O_SPLITS, BLOCK_M, BLOCK_K, F32_DOT)
        if PHASE == 0:
            _sync(sync_ptr, failed, 3, P, False)
        if PHASE == 0 or PHASE == 4:
            _norm_phase(o_part_ptr, x_ptr, post_norm_ptr, x1_ptr, h1_ptr, p, rows, eps, H, P, O_SPLITS, BLOCK_M,
                        NORM_BLOCK)
        if PHASE == 0:
            _sync(sync_ptr, failed, 4, P, TMA)
        if PHASE == 0 or PHASE == 5:
            _gate_up_phase(h1_ptr, h1_desc, gu_ptr, gu_desc, act_ptr, p, rows, H, I, P, BLOCK_M, BLOCK_K, BLOCK_N,
                           BLOCK_R, TMA, F32_DOT)
        if PHASE == 0:
            _sync(sync_ptr, failed, 5, P, TMA)
        if PHASE == 0 or PHASE == 6:
            _down_phase(act_ptr, act_desc, down_ptr, down_desc, d_part_ptr, p, rows, H, I, BLOCK_M, BLOCK_K, DOWN_N,
                        SPLITS, TILES_N, TMA, F32_DOT)
        if PHASE == 0:
            _sync(sync_ptr, failed, 6, P, False)
            _leave(sync_ptr, sync_ptr + 1, P)
        if PHASE == 0 or PHASE == 7:
            _norm_phase(d_part_ptr, x1_ptr, next_norm_ptr, x_out_ptr, h_out_ptr, p, rows, eps, H, P, SPLITS, BLOCK_M,
                        NORM_BLOCK)


_WORKSPACES: dict[tuple, tuple[torch.Tensor, ...]] = {}


def layer_block(dims, x, h, layer, next_norm, state, cache, bias, kv_len: int, attention: AttentionShape,
                mlp: BlockShape, *, phases: tuple[int, ...] | None = None):
    """One decode layer: (residual, next layer's normed input) from (residual, this layer's normed
    input), writing the layer's new key and value into `cache`."""
    attention.check(dims)
    plan = mlp.plan(dims.hidden, dims.intermediate)
    rows = h.shape[0]
    if rows > 128 or attention.programs != mlp.programs or not mlp.tma:
        raise ValueError("at most 128 rows, one program count, tensor descriptors for the MLP half")
    cuda = h.device.type == "cuda"
    phases = phases or ((0,) if cuda else tuple(range(1, 8)))
    n_qkv = dims.q_size + 2 * dims.kv_size
    key = (str(h.device), rows, dims, attention, plan["SPLITS"], h.dtype)
    if key not in _WORKSPACES:
        empty = {"device": h.device, "dtype": h.dtype}
        _WORKSPACES[key] = (torch.empty(attention.qkv_splits, rows, n_qkv, device=h.device, dtype=torch.float32),
                            torch.empty(rows, dims.q_size, **empty),
                            torch.empty(attention.o_splits, rows, dims.hidden, device=h.device, dtype=torch.float32),
                            torch.empty(rows, dims.hidden, **empty), torch.empty(rows, dims.hidden, **empty),
                            torch.empty(rows, dims.intermediate, **empty),
                            torch.empty(plan["SPLITS"], rows, dims.hidden, device=h.device, dtype=torch.float32),
                            torch.zeros(6, device=h.device, dtype=torch.int32))
    qkv_part, attn, o_part, x1, h1, act, d_part, sync = _WORKSPACES[key]
    x_out, h_out = torch.empty_like(x), torch.empty_like(x)
    bm, bk = max(16, triton.next_power_of_2(rows)), mlp.block_k
    from triton.tools.tensor_descriptor import TensorDescriptor

    def desc(t, block):
        return TensorDescriptor(t, list(t.shape), [t.stride(0), 1], block)

    groups = dims.heads // dims.kv_heads
    has_bias = layer.qkv_bias is not None
    args = (h.contiguous(), layer.qkv, layer.qkv_bias if has_bias else layer.qkv, qkv_part, state.cos, state.sin,
            state.positions, state.write_index, state.leaders, state.shared, cache, bias, attn, layer.o, o_part, x,
            layer.post_norm, x1, h1, desc(h1, [bm, bk]), layer.gate_up, desc(layer.gate_up, [plan["BLOCK_N"], bk]),
            act, desc(act, [bm, bk]), layer.down, desc(layer.down, [mlp.down_n, bk]), d_part, next_norm, x_out, h_out,
            sync, rows, float(dims.head_dim ** -0.5), float(dims.eps), cache.stride(0), cache.stride(1),
            cache.stride(2), bias.stride(0))
    consts = {"kv_len": kv_len, "H": dims.hidden, "I": dims.intermediate, "HEADS": dims.heads,
              "KV_HEADS": dims.kv_heads, "GROUPS": groups, "D": dims.head_dim, "P": attention.programs,
              "QKV_TILE": attention.qkv_tile, "QKV_SPLITS": attention.qkv_splits, "O_TILE": attention.o_tile,
              "O_SPLITS": attention.o_splits, "BLOCK_M": bm, "BLOCK_K": bk,
              "HEAD_ROWS": max(16, triton.next_power_of_2(groups)), "BLOCK": attention.block,
              "NORM_BLOCK": triton.next_power_of_2(dims.hidden), "HAS_BIAS": has_bias, "DOWN_N": mlp.down_n,
              "TMA": True, "F32_DOT": not cuda, "num_warps": mlp.warps, "num_stages": mlp.stages, **plan}
    if attention.block_k != mlp.block_k:
        raise ValueError("one K step for both halves")
    for phase in phases:
        launch = {"launch_cooperative_grid": True} if phase == 0 and cuda else {}
        _layer_kernel[(attention.programs,)](*args, PHASE=phase, **consts, **launch)
    return x_out, h_out
