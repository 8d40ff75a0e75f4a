"""Fold a LoRA adapter into a decode weight in one pass: out = bf16(W + scaling * B @ A), in float32.

    from trainer.triton_fold import fold_into
    fold_into(dest, weight, lora_b, lora_a, scaling)     # dest: a slice of the fused decode buffer

trainer/qwen2_decode.effective_linear forms the same sum with torch (W upcast to float32, one
addmm, a cast, then a copy into the fused buffer): five passes over float32 or bf16 copies of
every weight, ~16 ms per rollout for Qwen2.5-1.5B on an H200. Here one kernel reads W, B and A
and writes the bf16 result where the decode step reads it: the rank-r product is summed in
float32 (r multiply-adds per element, in order), added to W in float32 and rounded once, so the
result is the adapter-on weight up to one rounding, as before.

Optional: DecodeWeights.refresh uses it on CUDA for a single plain adapter after `check` found it
within one bf16 rounding of the torch sum on the model's own first projection, random B and A;
else (and on a CPU) the torch path. Triton's interpreter runs it on a CPU for the tests.
"""

from __future__ import annotations

import torch

from trainer.triton_base import runs_on, tl, triton

BLOCK_N, BLOCK_K = 32, 128


def available(device: torch.device) -> bool:
    return runs_on(device, "RLTUI_TRITON_FOLD")


if triton is not None:
    @triton.jit
    def _fold_kernel(w_ptr, b_ptr, a_ptr, out_ptr, scaling, n, k, w_stride, b_stride, a_stride, out_stride,
                     RANK: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        cols = tl.program_id(1) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
        row_in = rows < n
        col_in = cols < k
        acc = tl.zeros([BLOCK_ROWS, BLOCK_COLS], tl.float32)
        for r in tl.static_range(RANK):
            b = tl.load(b_ptr + rows * b_stride + r, mask=row_in, other=0.0).to(tl.float32)
            a = tl.load(a_ptr + r * a_stride + cols, mask=col_in, other=0.0).to(tl.float32)
            acc += b[:, None] * a[None, :]
        inside = row_in[:, None] & col_in[None, :]
        w = tl.load(w_ptr + rows[:, None] * w_stride + cols[None, :], mask=inside, other=0.0).to(tl.float32)
        out = w + scaling * acc
        tl.store(out_ptr + rows[:, None] * out_stride + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=inside)


def fold_into(dest: torch.Tensor, weight: torch.Tensor, lora_b: torch.Tensor, lora_a: torch.Tensor,
              scaling: float) -> None:
    """dest [n, k] <- weight [n, k] + scaling * lora_b [n, r] @ lora_a [r, k], float32 sum, one rounding."""
    n, k = weight.shape
    rank = lora_a.shape[0]
    assert dest.shape == weight.shape and lora_b.shape == (n, rank) and lora_a.shape == (rank, k)
    weight = weight if weight.stride(1) == 1 else weight.contiguous()
    lora_b = lora_b if lora_b.stride(1) == 1 else lora_b.contiguous()
    lora_a = lora_a if lora_a.stride(1) == 1 else lora_a.contiguous()
    assert dest.stride(1) == 1
    grid = (triton.cdiv(n, BLOCK_N), triton.cdiv(k, BLOCK_K))
    _fold_kernel[grid](weight, lora_b, lora_a, dest, float(scaling), n, k, weight.stride(0), lora_b.stride(0),
                       lora_a.stride(0), dest.stride(0), RANK=rank, BLOCK_ROWS=BLOCK_N, BLOCK_COLS=BLOCK_K,
                       num_warps=4)


def single_adapter(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """(B, A, scaling) of a LoRA layer's one active plain adapter, or None (no adapter, several,
    merged, disabled, or a kind effective_linear refuses: it then raises as before)."""
    if getattr(module, "base_layer", None) is None or module.disable_adapters or module.merged:
        return None
    active = [name for name in module.active_adapters if name in module.lora_A]
    if len(active) != 1:
        return None
    name = active[0]
    if name in getattr(module, "lora_variant", {}) or getattr(module, "fan_in_fan_out", False) \
            or module.lora_B[name].bias is not None:
        return None
    return module.lora_B[name].weight, module.lora_A[name].weight, float(module.scaling[name])


@torch.no_grad()
def check(weight: torch.Tensor, rank: int = 16, scaling: float = 2.0, seed: int = 0) -> dict[str, float]:
    """This fold against torch's (W in float32 + scaling * B @ A by addmm, cast once) for random B, A
    of `rank` on `weight`'s shape and device: the largest difference in bf16 steps of the value,
    and the fraction of elements that differ by a bf16 rounding flip."""
    gen = torch.Generator(device=weight.device).manual_seed(seed)
    n, k = weight.shape
    b = torch.randn(n, rank, device=weight.device, generator=gen) * 0.02
    a = torch.randn(rank, k, device=weight.device, generator=gen) * 0.02
    want = torch.addmm(weight.float(), b, a, alpha=scaling) if weight.is_cuda else weight.float() + scaling * (b @ a)
    want = want.to(weight.dtype).float()
    got = torch.empty_like(weight)
    fold_into(got, weight, b, a, scaling)
    step = want.abs().clamp_min(torch.finfo(torch.float32).tiny) * 2.0 ** -7  # one bf16 step or more
    diff = (got.float() - want).abs()
    # "differing": by a bf16 rounding flip (a float32 weight's last-bit differences do not count)
    return {"max_steps": float((diff / step).max()), "fraction_differing": float((diff > step / 4).float().mean())}


def passes(found: dict[str, float]) -> bool:
    """Summation order only: at most one bf16 step anywhere, and rarely."""
    return found["max_steps"] <= 1.01 and found["fraction_differing"] < 0.01
