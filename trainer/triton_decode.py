"""Decode attention in one Triton kernel: each program serves one cache row's KV head and the
query heads that share it (grouped-query attention), reading the joint key|value cache in place.

    from trainer.triton_decode import available, decode_attention
    out = decode_attention(q, live, bias, scale)   # q [B, heads, D], live [B, kv_heads, L, 2D] -> [B, heads * D]

Qwen2.5-1.5B decodes with 12 query heads over 2 KV heads. cuDNN's kernel behind
scaled_dot_product_attention treats a decode step as 1,536 one-query problems and needs copies
of the key and value halves; here the 6 query heads of a KV head are the rows of one tensor-core
product against each block of cached keys, the cache is read once per KV head, and the additive
mask (0 or -inf per slot) is read as given. Online softmax in float32, as flash attention. The
attention length is a compile-time constant: one kernel per attention-length bucket.

Optional: used by trainer/qwen2_decode.py when Triton is importable on CUDA (or in Triton's
interpreter for the tests) and `RLTUI_DECODE_ATTENTION` does not ask for another kernel; any
failure at graph capture falls back to SDPA.
"""

from __future__ import annotations

import torch

from trainer.triton_base import runs_on, tl, triton

BLOCK_N = 64


def available(device: torch.device) -> bool:
    return runs_on(device)


if triton is not None:
    @triton.jit
    def _decode_attention_kernel(q_ptr, cache_ptr, bias_ptr, out_ptr, scale,
                                 q_stride_b, cache_stride_b, cache_stride_h, cache_stride_n, bias_stride_b,
                                 out_stride_b, kv_len: tl.constexpr, F32_DOT: tl.constexpr, GROUPS: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr,
                                 BLOCK: tl.constexpr):
        b = tl.program_id(0)
        h = tl.program_id(1)
        rows = tl.arange(0, BLOCK_M)
        dims = tl.arange(0, D)
        heads = h * GROUPS + rows
        live_rows = rows < GROUPS
        q = tl.load(q_ptr + b * q_stride_b + heads[:, None] * D + dims[None, :], mask=live_rows[:, None], other=0.0)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        base = cache_ptr + b * cache_stride_b + h * cache_stride_h
        for start in range(0, kv_len, BLOCK):
            slots = start + tl.arange(0, BLOCK)
            inside = slots < kv_len
            k = tl.load(base + slots[:, None] * cache_stride_n + dims[None, :], mask=inside[:, None], other=0.0)
            v = tl.load(base + slots[:, None] * cache_stride_n + D + dims[None, :], mask=inside[:, None], other=0.0)
            bias = tl.load(bias_ptr + b * bias_stride_b + slots, mask=inside, other=float("-inf")).to(tl.float32)
            if F32_DOT:  # Triton's interpreter multiplies bf16 tiles wrongly: the tests use float32
                s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32))) * scale + bias[None, :]
            else:
                s = tl.dot(q, tl.trans(k)) * scale + bias[None, :]
            m_new = tl.maximum(m_i, tl.max(s, 1))
            safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
            alpha = tl.exp(m_i - safe)
            p = tl.exp(s - safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            if F32_DOT:
                acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32))
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        out = acc / l_i[:, None]
        tl.store(out_ptr + b * out_stride_b + heads[:, None] * D + dims[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=live_rows[:, None])


def decode_attention(q: torch.Tensor, live: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    """q [B, heads, D]; live [B, kv_heads, L, 2D] (key | value, a view of the cache); bias [B, ..., L]
    additive mask (0 / -inf), contiguous in its last dimension -> [B, heads * D] in q's dtype."""
    batch, heads, d = q.shape
    kv_heads, length = live.shape[1], live.shape[2]
    groups = heads // kv_heads
    q = q.contiguous()
    bias = bias.reshape(batch, -1)[:, -length:] if bias.dim() > 2 else bias
    out = torch.empty(batch, heads * d, device=q.device, dtype=q.dtype)
    _decode_attention_kernel[(batch, kv_heads)](
        q, live, bias, out, float(scale), q.stride(0), live.stride(0), live.stride(1), live.stride(2),
        bias.stride(0), out.stride(0), kv_len=length, F32_DOT=q.device.type != "cuda", GROUPS=groups, D=d, BLOCK_M=max(16, triton.next_power_of_2(groups)), BLOCK=BLOCK_N,
        num_warps=4, num_stages=3)
    return out


@torch.no_grad()
def check_error(dims, device: torch.device, dtype: torch.dtype) -> float:
    """Relative error of this kernel against SDPA on random data of the model's attention shape."""
    import torch.nn.functional as F

    gen = torch.Generator(device=device).manual_seed(0)
    batch, length = 4, 200
    q = torch.randn(batch, dims.heads, dims.head_dim, device=device, dtype=dtype, generator=gen)
    live = torch.randn(batch, dims.kv_heads, length + 56, 2 * dims.head_dim, device=device, dtype=dtype,
                       generator=gen)[:, :, :length]
    valid = torch.rand(batch, length, device=device, generator=gen) > 0.3
    valid[:, 0] = True
    bias = torch.zeros(batch, 1, length, device=device, dtype=dtype).masked_fill_(~valid[:, None], float("-inf"))
    d = dims.head_dim  # the reference: qwen2_decode's SDPA step (not imported: it imports this file)
    want = F.scaled_dot_product_attention(q[:, :, None], live[..., :d], live[..., d:], attn_mask=bias[:, None],
                                          scale=d ** -0.5, enable_gqa=True).reshape(batch, dims.q_size).float()
    got = decode_attention(q, live, bias[:, None], d ** -0.5).float()
    return float((got - want).norm() / want.norm())
