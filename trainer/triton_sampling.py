"""Sampling a token per row on CUDA: the exponential race with its noise drawn in-kernel, or an
inverse CDF with one uniform per row.

    from trainer.triton_sampling import available, cdf_sample, race_sample, sampler
    tokens = race_sample(logits, inv_temperature, generator, banned)   # [B] int64
    tokens = cdf_sample(logits, inv_temperature, generator, banned)    # same contract

trainer.fast_generation.sample_tokens draws token i with probability softmax(logits / T)_i as the
argmax of logits_i / T - log(E_i), E_i ~ Exp(1). Done with torch, that writes a float32 noise
tensor as large as the logits (128 x 151,936 floats per decode step for the benchmark's rollout)
and reads it back: ~0.15 ms per token on an H200. Here one Triton kernel reads the bf16 logits
once, draws E_i = -log(U_i) from Philox (seeded per call from `generator`; each Philox call's four
outputs serve four columns), and keeps the running best per slice of the vocabulary; a torch
argmax over the slices finishes it. Same distribution, another random stream. Banned ids (EOS before min_new_tokens) never win.

`cdf_sample` (same contract and distribution) does about one exp per element and no noise per
element: an inverse CDF in two kernels. The first, per slice of the vocabulary, keeps the slice's
max of x / T and its sum of exp(x / T - max) (banned, -inf and beyond-V columns excluded). The
second, per row, combines the slices (log-sum-exp), draws one uniform u (torch.rand on
`generator`), walks the slices' cumulative mass to the one holding u * total, then recomputes that
slice's weights and takes the first positive-weight column whose cumulative weight exceeds the
remainder; where float rounding leaves none, the last positive-weight column of the slice (or of
the row) is taken, so a zero-weight column is never returned. u and the sums are float32: a token
whose probability is below ~1e-7 of the row's mass is drawn with that relative error.
A row with no finite column (all -inf or banned) gives token 0, as race_sample does; NaN or +inf
logits are not supported (race_sample's answer for them is arbitrary too).

`sampler()` picks the kernel by `RLTUI_TRITON_SAMPLING`: "race" the race, anything else (unset,
"cdf", "1") the inverse CDF, which an H200 runs in ~28-31 us per 128 x 151,936 draw against the
race's ~84 us (bench/gpu_sampling.py, docs/benchmarks.md). With "0", or without Triton,
`available()` is False and the torch race is used. Triton's interpreter (TRITON_INTERPRET=1) runs both on a CPU for the tests.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from trainer.triton_base import runs_on, tl, triton

ENV = "RLTUI_TRITON_SAMPLING"
COLUMNS_PER_PROGRAM = 8192
BLOCK = 1024
CDF_COLUMNS_PER_PROGRAM = 2048  # a slice: one program of the first kernel, the second's walk (powers of 2)
CDF_BLOCK = 1024
CDF_WARPS = 4


def available(device: torch.device) -> bool:
    return runs_on(device, ENV)


def sampler() -> Callable[..., torch.Tensor]:
    """The kernel `RLTUI_TRITON_SAMPLING` asks for: race_sample for "race", cdf_sample otherwise."""
    return race_sample if os.environ.get(ENV) == "race" else cdf_sample


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


if triton is not None:
    @triton.jit
    def _scaled(logits_ptr, row, row_stride, banned_ptr, vocab, inv_temperature, cols, N_BANNED: tl.constexpr):
        """x / T per column; -inf where banned or beyond the vocabulary."""
        inside = cols < vocab
        x = tl.load(logits_ptr + row * row_stride + cols, mask=inside, other=float("-inf")).to(tl.float32)
        scaled = x * inv_temperature
        for j in tl.static_range(N_BANNED):
            scaled = tl.where(cols == tl.load(banned_ptr + j), float("-inf"), scaled)
        return scaled

    @triton.jit
    def _slice_mass_kernel(logits_ptr, row_stride, banned_ptr, high_ptr, mass_ptr, vocab, inv_temperature, parts,
                           N_BANNED: tl.constexpr, COLUMNS: tl.constexpr, BLOCK_SIZE: tl.constexpr):
        # Per slice: its max of x / T and its sum of exp(x / T - max), one exp per column.
        row = tl.program_id(0)
        part = tl.program_id(1)
        lanes = tl.arange(0, BLOCK_SIZE)
        high = float("-inf")
        mass = 0.0
        for offset in range(0, COLUMNS, BLOCK_SIZE):
            scaled = _scaled(logits_ptr, row, row_stride, banned_ptr, vocab, inv_temperature,
                             part * COLUMNS + offset + lanes, N_BANNED)
            new_high = tl.maximum(high, tl.max(scaled, axis=0))
            shift = tl.where(new_high == float("-inf"), 0.0, new_high)  # an empty block: exp(-inf) = 0, no NaN
            mass = mass * tl.exp(high - shift) + tl.sum(tl.exp(scaled - shift), axis=0)
            high = new_high
        tl.store(high_ptr + row * parts + part, high)
        tl.store(mass_ptr + row * parts + part, mass)

    @triton.jit
    def _cdf_pick_kernel(logits_ptr, row_stride, banned_ptr, high_ptr, mass_ptr, uniform_ptr, token_ptr, vocab,
                         inv_temperature, parts, N_BANNED: tl.constexpr, COLUMNS: tl.constexpr,
                         BLOCK_SIZE: tl.constexpr, PARTS: tl.constexpr):
        NOWHERE: tl.constexpr = 1 << 30
        row = tl.program_id(0)
        slots = tl.arange(0, PARTS)
        highs = tl.load(high_ptr + row * parts + slots, mask=slots < parts, other=float("-inf"))
        masses = tl.load(mass_ptr + row * parts + slots, mask=slots < parts, other=0.0)
        top = tl.max(highs, axis=0)
        weights = masses * tl.exp(highs - tl.where(top == float("-inf"), 0.0, top))  # 0 for an empty slice
        target = tl.load(uniform_ptr + row) * tl.sum(weights, axis=0)
        # The first slice whose cumulative mass exceeds the target; rounding past the end: the last
        # slice with mass. A crossing slice has mass (the cumulative sum grew there).
        crossing = tl.min(tl.where((tl.cumsum(weights, axis=0) > target) & (weights > 0), slots, NOWHERE), axis=0)
        part = tl.where(crossing < NOWHERE, crossing, tl.max(tl.where(weights > 0, slots, -1), axis=0))
        part = tl.maximum(part, 0)  # an empty row: slice 0, where nothing is positive either
        before = tl.sum(tl.where(slots < part, weights, 0.0), axis=0)
        high = tl.load(high_ptr + row * parts + part)
        mass = tl.load(mass_ptr + row * parts + part)
        weight = mass * tl.exp(high - tl.where(top == float("-inf"), 0.0, top))
        high = tl.where(high == float("-inf"), 0.0, high)
        # The remainder in the slice's own units (weights exp(x / T - high), as the first kernel summed).
        remainder = tl.where(weight > 0, (target - before) / weight, 0.0) * mass
        # Per lane, the first column past the remainder and the last positive one; columns grow
        # with the block, so the smallest crossing over all blocks is the first.
        lanes = tl.arange(0, BLOCK_SIZE)
        carried = 0.0
        first_hit = tl.full([BLOCK_SIZE], NOWHERE, tl.int32)
        last = tl.full([BLOCK_SIZE], -1, tl.int32)
        for offset in range(0, COLUMNS, BLOCK_SIZE):
            cols = part * COLUMNS + offset + lanes
            w = tl.exp(_scaled(logits_ptr, row, row_stride, banned_ptr, vocab, inv_temperature, cols, N_BANNED) - high)
            hit = (carried + tl.cumsum(w, axis=0) > remainder) & (w > 0)
            first_hit = tl.minimum(first_hit, tl.where(hit, cols, NOWHERE))
            last = tl.where(w > 0, cols, last)
            carried = carried + tl.sum(w, axis=0)
        # Rounding past the slice's end: its last positive column. A row with no finite column: 0.
        token = tl.min(first_hit, axis=0)
        token = tl.where(token < NOWHERE, token, tl.maximum(tl.max(last, axis=0), 0))
        tl.store(token_ptr + row, token.to(tl.int64))


def inverse_cdf(logits: torch.Tensor, inv_temperature: float, uniforms: torch.Tensor,
                banned: torch.Tensor | None) -> torch.Tensor:
    """Per row, the token where the cumulative mass of softmax(logits * inv_temperature) (banned ids
    excluded) first exceeds uniforms[row] (float32 [B], in [0, 1)) of the total: int64 [B]."""
    rows, vocab = logits.shape
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    columns, block = CDF_COLUMNS_PER_PROGRAM, min(CDF_BLOCK, CDF_COLUMNS_PER_PROGRAM)
    parts = triton.cdiv(vocab, columns)
    if banned is None or banned.numel() == 0:
        banned = torch.full((1,), -1, device=logits.device, dtype=torch.int64)
    highs = torch.empty(rows, parts, device=logits.device, dtype=torch.float32)
    masses = torch.empty(rows, parts, device=logits.device, dtype=torch.float32)
    tokens = torch.empty(rows, device=logits.device, dtype=torch.int64)
    uniforms = uniforms.to(device=logits.device, dtype=torch.float32).contiguous()
    _slice_mass_kernel[(rows, parts)](logits, logits.stride(0), banned, highs, masses, vocab, float(inv_temperature),
                                      parts, N_BANNED=banned.numel(), COLUMNS=columns, BLOCK_SIZE=block,
                                      num_warps=CDF_WARPS)
    _cdf_pick_kernel[(rows,)](logits, logits.stride(0), banned, highs, masses, uniforms, tokens, vocab,
                              float(inv_temperature), parts, N_BANNED=banned.numel(), COLUMNS=columns,
                              BLOCK_SIZE=block, PARTS=triton.next_power_of_2(parts), num_warps=4)
    return tokens


def cdf_sample(logits: torch.Tensor, inv_temperature: float, generator: torch.Generator | None,
               banned: torch.Tensor | None) -> torch.Tensor:
    """One token per row of `logits` [B, V], distributed as softmax(logits * inv_temperature), by
    inverse CDF: one uniform per row from `generator`, about one exp per logit."""
    uniforms = torch.rand(logits.shape[0], device=logits.device, dtype=torch.float32, generator=generator)
    return inverse_cdf(logits, inv_temperature, uniforms, banned)
