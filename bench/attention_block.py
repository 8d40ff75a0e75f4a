"""An experiment, slower on an H200 than the fused step's kernels (docs/benchmarks.md, calls 26-28:
1.15-1.41 ms against 0.87 for 28 layers at 384 slots; its attention phase 0.70 against
rope_attention's 0.44). The attention half of a decode layer
as one persistent kernel, on trainer/mlp_block.py's pattern: q/k/v product, RoPE + cache write +
attention, o product, residual + RMSNorm in one launch a layer instead of 4-5.

    from attention_block import AttentionShape, attention_block
    x, h = attention_block(dims, x, h, layer, state, cache, bias, kv_len, shape)   # -> MLP half

Phases (one program per SM, device-wide barriers between them, cooperative launch):
1. q/k/v: split-K units (TILE_N columns x SPLITS slices of K), float32 partials [S, B, N]
   (the attention reads and sums them with the bias, as it does for triton_products' split q/k/v).
2. attention: (row, KV head) units, P at a time: the new token's RoPE'd q, key and value, the
   cache write, the online softmax over the filled slots (trainer/attention_blocks helpers), the
   output [B, heads D] bf16.
3. o: split-K units over the attention output, float32 partials [S, B, H].
4. residual + RMSNorm per row (triton_products.add_norm_row).

_attend_unit repeats fused_decode._rope_attention_kernel's body for one (row, KV head) unit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.triton_base import tl, triton


@dataclass(frozen=True)
class AttentionShape:
    programs: int
    qkv_tile: int = 64
    qkv_splits: int = 4
    o_tile: int = 64
    o_splits: int = 4
    block_k: int = 64
    block: int = 64      # cache slots per attention step
    warps: int = 4
    stages: int = 3

    def check(self, dims) -> None:
        n_qkv = dims.q_size + 2 * dims.kv_size
        for n, k, tile, splits in ((n_qkv, dims.hidden, self.qkv_tile, self.qkv_splits),
                                   (dims.hidden, dims.q_size, self.o_tile, self.o_splits)):
            if n % tile or k % (splits * self.block_k):
                raise ValueError(f"{self} does not tile {n} x {k}")


if triton is not None:
    from trainer.attention_blocks import _attend_block, _new_token
    from trainer.mlp_block import SPIN_LIMIT, _dot
    from trainer.triton_products import add_norm_row

    @triton.jit
    def _split_unit(x_ptr, w_ptr, part_ptr, unit, rows, N: tl.constexpr, K: tl.constexpr, TILE_N: tl.constexpr,
                    SPLITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, F32_DOT: tl.constexpr):
        # One (column tile, K slice) of x [rows, K] @ w [N, K]^T into the float32 partial
        # part[split] [rows, N]; x may have been written by other programs of this kernel (.cg).
        TILES: tl.constexpr = N // TILE_N
        CHUNK: tl.constexpr = K // SPLITS
        if unit < TILES * SPLITS:
            tile = unit % TILES
            split = unit // TILES
            m = tl.arange(0, BLOCK_M)
            live = m < rows
            ks = tl.arange(0, BLOCK_K)
            cols = tile * TILE_N + tl.arange(0, TILE_N)
            acc = tl.zeros([BLOCK_M, TILE_N], tl.float32)
            for k in range(0, CHUNK, BLOCK_K):
                at = split * CHUNK + k + ks
                a = tl.load(x_ptr + m[:, None] * K + at[None, :], mask=live[:, None], other=0.0, cache_modifier=".cg")
                w = tl.load(w_ptr + cols[:, None] * K + at[None, :])
                acc = _dot(a, w, acc, F32_DOT)
            tl.store(part_ptr + split * rows * N + m[:, None] * N + cols[None, :], acc, mask=live[:, None])

    @triton.jit
    def _attend_unit(qkv_ptr, cos_ptr, sin_ptr, pos_ptr, write_ptr, leader_ptr, shared_ptr, cache_ptr, bias_ptr,
                     out_ptr, b, h, scale, qkv_stride_b, cache_stride_b, cache_stride_h, cache_stride_n, bias_stride_b,
                     out_stride_b, part_stride, qkv_bias_ptr, kv_len: tl.constexpr, F32_DOT: tl.constexpr,
                     HEADS: tl.constexpr, KV_HEADS: tl.constexpr, GROUPS: tl.constexpr, D: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK: tl.constexpr, PARTS: tl.constexpr, HAS_BIAS: tl.constexpr):
        # fused_decode._rope_attention_kernel's body for (row b, KV head h) (to be factored out).
        HALF: tl.constexpr = D // 2
        rows = tl.arange(0, BLOCK_M)
        halves = tl.arange(0, HALF)
        dims = tl.arange(0, D)
        heads = h * GROUPS + rows
        live_rows = rows < GROUPS
        slot = tl.load(write_ptr)
        q1, q2, k1, k2, v_new = _new_token(qkv_ptr, cos_ptr, sin_ptr, pos_ptr, b, h, qkv_stride_b, part_stride,
                                           qkv_bias_ptr, out_ptr.dtype.element_ty, HEADS, KV_HEADS, GROUPS, D,
                                           BLOCK_M, PARTS, HAS_BIAS)
        own = b * cache_stride_b + h * cache_stride_h
        entry = cache_ptr + own + slot * cache_stride_n
        shared = tl.load(shared_ptr)
        leader = tl.load(leader_ptr + b) * cache_stride_b + h * cache_stride_h
        filled = tl.minimum(slot, kv_len)
        tl.store(entry + halves, k1.to(cache_ptr.dtype.element_ty))
        tl.store(entry + HALF + halves, k2.to(cache_ptr.dtype.element_ty))
        tl.store(entry + D + dims, v_new.to(cache_ptr.dtype.element_ty))
        m_i = (tl.sum(q1.to(tl.float32) * k1.to(tl.float32)[None, :], 1)
               + tl.sum(q2.to(tl.float32) * k2.to(tl.float32)[None, :], 1)) * scale
        l_i = tl.full([BLOCK_M], 1.0, tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32) + v_new.to(tl.float32)[None, :]
        for start in range(0, kv_len if F32_DOT else filled, BLOCK):
            slots = start + tl.arange(0, BLOCK)
            inside = slots < filled
            at = cache_ptr + tl.where(slots < shared, leader, own)[:, None] + slots[:, None] * cache_stride_n
            bias = tl.load(bias_ptr + b * bias_stride_b + slots, mask=inside, other=float("-inf")).to(tl.float32)
            m_i, l_i, acc = _attend_block(q1, q2, at, inside, bias, m_i, l_i, acc, scale, D, F32_DOT)
        out = acc / l_i[:, None]
        tl.store(out_ptr + b * out_stride_b + heads[:, None] * D + dims[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=live_rows[:, None])

    @triton.jit
    def _qkv_phase(h_ptr, wqkv_ptr, qkv_part_ptr, p, rows, H: tl.constexpr, NQKV: tl.constexpr, P: tl.constexpr,
                   QKV_TILE: tl.constexpr, QKV_SPLITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                   F32_DOT: tl.constexpr):
        for start in range(0, (NQKV // QKV_TILE) * QKV_SPLITS, P):
            _split_unit(h_ptr, wqkv_ptr, qkv_part_ptr, start + p, rows, NQKV, H, QKV_TILE, QKV_SPLITS, BLOCK_M,
                        BLOCK_K, F32_DOT)

    @triton.jit
    def _attention_phase(qkv_part_ptr, qkv_bias_ptr, cos_ptr, sin_ptr, pos_ptr, write_ptr, leader_ptr, shared_ptr,
                         cache_ptr, bias_ptr, attn_ptr, p, rows, scale, cache_stride_b, cache_stride_h, cache_stride_n,
                         bias_stride_b, kv_len: tl.constexpr, HEADS: tl.constexpr, KV_HEADS: tl.constexpr,
                         GROUPS: tl.constexpr, D: tl.constexpr, P: tl.constexpr, QKV_SPLITS: tl.constexpr,
                         BLOCK_M: tl.constexpr, HEAD_ROWS: tl.constexpr, BLOCK: tl.constexpr,
                         HAS_BIAS: tl.constexpr, F32_DOT: tl.constexpr):
        NQKV: tl.constexpr = (HEADS + 2 * KV_HEADS) * D
        for start in range(0, BLOCK_M * KV_HEADS, P):
            unit = start + p
            if unit < rows * KV_HEADS:
                _attend_unit(qkv_part_ptr, cos_ptr, sin_ptr, pos_ptr, write_ptr, leader_ptr, shared_ptr, cache_ptr,
                             bias_ptr, attn_ptr, unit // KV_HEADS, unit % KV_HEADS, scale, NQKV, cache_stride_b,
                             cache_stride_h, cache_stride_n, bias_stride_b, HEADS * D, rows * NQKV, qkv_bias_ptr,
                             kv_len, F32_DOT, HEADS, KV_HEADS, GROUPS, D, HEAD_ROWS, BLOCK, QKV_SPLITS, HAS_BIAS)

    @triton.jit
    def _o_phase(attn_ptr, wo_ptr, o_part_ptr, p, rows, H: tl.constexpr, Q: tl.constexpr, P: tl.constexpr,
                 O_TILE: tl.constexpr, O_SPLITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                 F32_DOT: tl.constexpr):
        for start in range(0, (H // O_TILE) * O_SPLITS, P):
            _split_unit(attn_ptr, wo_ptr, o_part_ptr, start + p, rows, H, Q, O_TILE, O_SPLITS, BLOCK_M, BLOCK_K,
                        F32_DOT)

    @triton.jit
    def _norm_phase(part_ptr, x_ptr, norm_ptr, x_out_ptr, h_out_ptr, p, rows, eps, H: tl.constexpr, P: tl.constexpr,
                    SPLITS: tl.constexpr, BLOCK_M: tl.constexpr, NORM_BLOCK: tl.constexpr):
        for start in range(0, BLOCK_M, P):
            if start + p < rows:
                add_norm_row(part_ptr, rows * H, x_ptr, norm_ptr, x_out_ptr, h_out_ptr, start + p, H, eps, SPLITS,
                             NORM_BLOCK)

    @triton.jit
    def _sync(count_ptr, failed_ptr, k, P: tl.constexpr, TMA: tl.constexpr):
        # Barrier k (1, 2, ...) of one launch on one counter: every program adds 1 and waits until
        # k * P have arrived (no program reaches barrier k + 1 before all passed k, so k * P
        # arrivals mean all P reached k). Reset by the last program out (`_leave`).
        tl.debug_barrier()
        tl.atomic_add(count_ptr, 1, sem="release", scope="gpu")
        reads = 0
        while (tl.atomic_add(count_ptr, 0, sem="acquire", scope="gpu") < k * P) & (reads < SPIN_LIMIT):
            reads += 1
        if reads >= SPIN_LIMIT:
            tl.atomic_xchg(failed_ptr, 1)
        tl.debug_barrier()
        if TMA:
            tl.inline_asm_elementwise("fence.proxy.async.global; mov.u32 $0, 0;", "=r", [], dtype=tl.int32,
                                      is_pure=False, pack=1)

    @triton.jit
    def _leave(count_ptr, ticket_ptr, P: tl.constexpr):
        # After the last barrier: the last program to draw a ticket puts both counters back to 0.
        if tl.atomic_add(ticket_ptr, 1, sem="acq_rel", scope="gpu") == P - 1:
            tl.atomic_xchg(count_ptr, 0)
            tl.atomic_xchg(ticket_ptr, 0)

    @triton.jit
    def _attention_kernel(h_ptr, wqkv_ptr, qkv_bias_ptr, qkv_part_ptr, cos_ptr, sin_ptr, pos_ptr, write_ptr,
                          leader_ptr, shared_ptr, cache_ptr, bias_ptr, attn_ptr, wo_ptr, o_part_ptr, x_ptr,
                          norm_ptr, x_out_ptr, h_out_ptr, sync_ptr, rows, scale, eps, cache_stride_b,
                          cache_stride_h, cache_stride_n, bias_stride_b, kv_len: tl.constexpr, H: tl.constexpr,
                          HEADS: tl.constexpr, KV_HEADS: tl.constexpr, GROUPS: tl.constexpr, D: tl.constexpr,
                          P: tl.constexpr, QKV_TILE: tl.constexpr, QKV_SPLITS: tl.constexpr, O_TILE: tl.constexpr,
                          O_SPLITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                          HEAD_ROWS: tl.constexpr, BLOCK: tl.constexpr, NORM_BLOCK: tl.constexpr,
                          HAS_BIAS: tl.constexpr, PHASE: tl.constexpr, F32_DOT: tl.constexpr):
        p = tl.program_id(0)
        Q: tl.constexpr = HEADS * D
        NQKV: tl.constexpr = (HEADS + 2 * KV_HEADS) * D
        if PHASE == 0 or PHASE == 1:
            _qkv_phase(h_ptr, wqkv_ptr, qkv_part_ptr, p, rows, H, NQKV, P, QKV_TILE, QKV_SPLITS, BLOCK_M, BLOCK_K,
                       F32_DOT)
        if PHASE == 0:
            _sync(sync_ptr, sync_ptr + 5, 1, P, False)
        if PHASE == 0 or PHASE == 2:
            _attention_phase(qkv_part_ptr, qkv_bias_ptr, cos_ptr, sin_ptr, pos_ptr, write_ptr, leader_ptr, shared_ptr,
                             cache_ptr, bias_ptr, attn_ptr, p, rows, scale, cache_stride_b, cache_stride_h,
                             cache_stride_n, bias_stride_b, kv_len, HEADS, KV_HEADS, GROUPS, D, P, QKV_SPLITS,
                             BLOCK_M, HEAD_ROWS, BLOCK, HAS_BIAS, F32_DOT)
        if PHASE == 0:
            _sync(sync_ptr, sync_ptr + 5, 2, P, False)
        if PHASE == 0 or PHASE == 3:
            _o_phase(attn_ptr, wo_ptr, o_part_ptr, p, rows, H, Q, P, O_TILE, O_SPLITS, BLOCK_M, BLOCK_K, F32_DOT)
        if PHASE == 0:
            _sync(sync_ptr, sync_ptr + 5, 3, P, False)
            _leave(sync_ptr, sync_ptr + 1, P)
        if PHASE == 0 or PHASE == 4:
            _norm_phase(o_part_ptr, x_ptr, norm_ptr, x_out_ptr, h_out_ptr, p, rows, eps, H, P, O_SPLITS, BLOCK_M,
                        NORM_BLOCK)


_WORKSPACES: dict[tuple, tuple[torch.Tensor, ...]] = {}


def attention_block(dims, x, h, layer, state, cache, bias, kv_len: int, shape: AttentionShape, *,
                    phases: tuple[int, ...] | None = None):
    """(x + o(attention(q/k/v(h))), RMSNorm of it with layer.post_norm); writes the new key and
    value into `cache` [B, kv_heads, capacity, 2D] at state.write_index, as the fused step's q/k/v
    product, rope_attention, o product and add_norm do."""
    shape.check(dims)
    rows = h.shape[0]
    if rows > 128:
        raise ValueError("at most 128 rows")
    cuda = h.device.type == "cuda"
    phases = phases or ((0,) if cuda else (1, 2, 3, 4))
    n_qkv = dims.q_size + 2 * dims.kv_size
    key = (str(h.device), rows, dims, shape.qkv_splits, shape.o_splits, h.dtype)
    if key not in _WORKSPACES:
        _WORKSPACES[key] = (torch.empty(shape.qkv_splits, rows, n_qkv, device=h.device, dtype=torch.float32),
                            torch.empty(rows, dims.q_size, device=h.device, dtype=h.dtype),
                            torch.empty(shape.o_splits, rows, dims.hidden, device=h.device, dtype=torch.float32),
                            torch.zeros(6, device=h.device, dtype=torch.int32))
    qkv_part, attn, o_part, sync = _WORKSPACES[key]
    x_out, h_out = torch.empty_like(x), torch.empty_like(x)
    groups = dims.heads // dims.kv_heads
    has_bias = layer.qkv_bias is not None
    args = (h.contiguous(), layer.qkv, layer.qkv_bias if has_bias else layer.qkv, qkv_part, state.cos, state.sin,
            state.positions, state.write_index, state.leaders, state.shared, cache, bias, attn, layer.o, o_part, x,
            layer.post_norm, x_out, h_out, sync, rows, float(dims.head_dim ** -0.5), float(dims.eps),
            cache.stride(0), cache.stride(1), cache.stride(2), bias.stride(0))
    consts = {"kv_len": kv_len, "H": dims.hidden, "HEADS": dims.heads, "KV_HEADS": dims.kv_heads, "GROUPS": groups,
              "D": dims.head_dim, "P": shape.programs, "QKV_TILE": shape.qkv_tile, "QKV_SPLITS": shape.qkv_splits,
              "O_TILE": shape.o_tile, "O_SPLITS": shape.o_splits, "BLOCK_M": max(16, triton.next_power_of_2(rows)),
              "BLOCK_K": shape.block_k, "HEAD_ROWS": max(16, triton.next_power_of_2(groups)), "BLOCK": shape.block,
              "NORM_BLOCK": triton.next_power_of_2(dims.hidden), "HAS_BIAS": has_bias, "F32_DOT": not cuda,
              "num_warps": shape.warps, "num_stages": shape.stages}
    for phase in phases:
        launch = {"launch_cooperative_grid": True} if phase == 0 and cuda else {}
        _attention_kernel[(shape.programs,)](*args, PHASE=phase, **consts, **launch)
    return x_out, h_out
