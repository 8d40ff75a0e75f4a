"""One-pass sampling of a token per row on CUDA: the exponential race with its noise drawn in-kernel.

    from trainer.triton_sampling import race_sample, available
    tokens = race_sample(logits, inv_temperature, generator, banned)   # [B] int64

trainer.fast_generation.sample_tokens draws token i with probability softmax(logits / T)_i as the
argmax of logits_i / T - log(E_i), E_i ~ Exp(1). Done with torch, that writes a float32 noise
tensor as large as the logits (128 x 151,936 floats per decode step for the benchmark's rollout)
and reads it back: ~0.15 ms per token on an H200. Here one Triton kernel reads the bf16 logits
once, draws E_i = -log(U_i) from Philox (seeded per call from `generator`; each Philox call's four
outputs serve four columns), and keeps the running best per slice of the vocabulary; a torch argmax over the slices finishes it. Same distribution,
another random stream. Banned ids (EOS before min_new_tokens) never win.

Optional: without Triton, or when `RLTUI_TRITON_SAMPLING=0`, `available()` is False and the torch
race is used. Triton's interpreter (TRITON_INTERPRET=1) runs it on a CPU for the tests.
"""

from __future__ import annotations

import torch

from trainer.triton_base import runs_on, tl, triton

ENV = "RLTUI_TRITON_SAMPLING"
COLUMNS_PER_PROGRAM = 8192
BLOCK = 1024


def available(device: torch.device) -> bool:
    return runs_on(device, ENV)


if triton is not None:
    @triton.jit
    def _race_update(logits_ptr, row, row_stride, banned_ptr, vocab, inv_temperature, cols, u, best_value,
                     best_index, N_BANNED: tl.constexpr):
        inside = cols < vocab
        x = tl.load(logits_ptr + row * row_stride + cols, mask=inside, other=0.0).to(tl.float32)
        # -log(E) with E = -log(U): U = 0 gives E = inf and a score of -inf (never wins).
        score = x * inv_temperature - tl.log(-tl.log(u))
        for j in tl.static_range(N_BANNED):
            score = tl.where(cols == tl.load(banned_ptr + j), float("-inf"), score)
        score = tl.where(inside, score, float("-inf"))
        better = score > best_value
        return tl.where(better, score, best_value), tl.where(better, cols, best_index)

    @triton.jit
    def _race_kernel(logits_ptr, row_stride, seed_ptr, banned_ptr, best_value_ptr, best_index_ptr,
                     vocab, inv_temperature, parts, N_BANNED: tl.constexpr, COLUMNS: tl.constexpr,
                     BLOCK_SIZE: tl.constexpr):
        # Philox gives four independent uniforms per counter: one counter per four columns, a
        # quarter of the generator's integer work (which, not the logits' bytes, bounded the
        # one-uniform-per-column version: ~0.1 ms per 128 x 151,936 draw on an H200).
        QUARTER: tl.constexpr = BLOCK_SIZE // 4
        row = tl.program_id(0)
        part = tl.program_id(1)
        seed = tl.load(seed_ptr)
        lanes = tl.arange(0, QUARTER)
        best_value = tl.full([QUARTER], float("-inf"), tl.float32)
        best_index = tl.zeros([QUARTER], tl.int32)
        first = part * COLUMNS
        for offset in range(0, COLUMNS, BLOCK_SIZE):
            base = first + offset + lanes
            u0, u1, u2, u3 = tl.rand4x(seed, row * vocab + base)
            best_value, best_index = _race_update(logits_ptr, row, row_stride, banned_ptr, vocab, inv_temperature,
                                                  base, u0, best_value, best_index, N_BANNED)
            best_value, best_index = _race_update(logits_ptr, row, row_stride, banned_ptr, vocab, inv_temperature,
                                                  base + QUARTER, u1, best_value, best_index, N_BANNED)
            best_value, best_index = _race_update(logits_ptr, row, row_stride, banned_ptr, vocab, inv_temperature,
                                                  base + 2 * QUARTER, u2, best_value, best_index, N_BANNED)
            best_value, best_index = _race_update(logits_ptr, row, row_stride, banned_ptr, vocab, inv_temperature,
                                                  base + 3 * QUARTER, u3, best_value, best_index, N_BANNED)
        winner = tl.argmax(best_value, axis=0)
        value = tl.max(best_value, axis=0)
        index = tl.sum(tl.where(lanes == winner, best_index, 0), axis=0)
        tl.store(best_value_ptr + row * parts + part, value)
        tl.store(best_index_ptr + row * parts + part, index)


def race_sample(logits: torch.Tensor, inv_temperature: float, generator: torch.Generator | None,
                banned: torch.Tensor | None) -> torch.Tensor:
    """One token per row of `logits` [B, V], distributed as softmax(logits * inv_temperature)."""
    rows, vocab = logits.shape
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    parts = triton.cdiv(vocab, COLUMNS_PER_PROGRAM)
    seed = torch.randint(0, 2**31 - 1, (1,), device=logits.device, dtype=torch.int32, generator=generator)
    if banned is None or banned.numel() == 0:
        banned = torch.full((1,), -1, device=logits.device, dtype=torch.int64)
    best_value = torch.empty(rows, parts, device=logits.device, dtype=torch.float32)
    best_index = torch.empty(rows, parts, device=logits.device, dtype=torch.int32)
    _race_kernel[(rows, parts)](logits, logits.stride(0), seed, banned, best_value, best_index, vocab,
                                float(inv_temperature), parts, N_BANNED=banned.numel(),
                                COLUMNS=COLUMNS_PER_PROGRAM, BLOCK_SIZE=BLOCK, num_warps=4)
    return best_index.gather(1, best_value.argmax(1, keepdim=True)).squeeze(1).long()
