"""The decode step's skinny products (a batch of rows times a weight) as split-K Triton kernels.

    from trainer.triton_products import DecodeProducts
    products = DecodeProducts.tuned(weights, batch)      # CUDA: times cuBLAS and candidates per kind
    y = products.apply("qkv", h, layer.qkv, layer.qkv_bias)
    # bf16 [B, N] (cuBLAS, or one split), or float32 partial sums [S, B, N] for the consumer to add

At batch 128 an H200 runs the q/k/v and o products of Qwen2.5-1.5B (6.3 and 4.7 MB of weights)
at 0.8-1.0 TB/s with cuBLAS: a 128 x 64 output tile per block gives 24-32 blocks for 132
multiprocessors, and each kernel's start-up is most of its time. Split along K, the same product
runs on ~128 blocks, each writing a float32 partial sum of its slice; the kernel that reads the
product anyway (the attention kernel for q/k/v, residual + RMSNorm for o and down: see
trainer/fused_decode.py) adds the partials in a fixed order, so there is no reduction kernel and
no atomic, and the result is the same on every run.

Which kind uses which kernel is measured, not assumed: `tuned` captures each candidate (cuBLAS
and a few tile / split shapes) for all layers' weights of a kind in a CUDA graph and keeps the
fastest, and the engine then times the whole step with and without them.

Off unless `RLTUI_DECODE_PRODUCTS=1`: on an H200 (docs/benchmarks.md, issue 18) the split
products were no faster than cuBLAS's (q/k/v 0.175 against 0.178 ms for 28 layers, down 0.361
against 0.370; o and gate/up slower), and the whole step with them replayed in 1.958 ms against
1.929 ms without. Each of these kernels, cuBLAS's too, spends ~5-6 us however few bytes it reads:
what is left to win is in fewer kernels, not in faster ones. Triton's interpreter runs the kernels
on a CPU for the tests (float32 tiles: it multiplies bf16 tiles wrongly).

The chained step's products (`DecodeProducts.chained`, off unless `RLTUI_DECODE_CHAIN=1`): the
same kernels launched with programmatic dependent launch (`pdl`), optionally reading through
tensor descriptors (`Split.tma`) and prefetching their first weight columns into L2 before they
wait (`Split.prefetch`), gate/up with SiLU x up in the epilogue (`swiglu`). On an H200 they made
the small products faster (q/k/v 0.138 against cuBLAS's 0.180 ms a step) but not gate/up (0.62
against 0.52 + 0.07 for SiLU x up), and the whole step no faster (2.009 ms both).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from trainer.triton_base import runs_on, tl, triton

if TYPE_CHECKING:  # mlp_block imports this module's kernels
    from trainer.gluon_stream import StreamVariant
    from trainer.mlp_block import BlockShape

ENV = "RLTUI_DECODE_PRODUCTS"
KINDS = ("qkv", "o", "gate_up", "down")


@dataclass(frozen=True)
class Split:
    """One kernel shape: output columns and K per block step, K slices, warps, pipeline stages."""

    block_n: int
    block_k: int
    splits: int
    warps: int = 4
    stages: int = 3
    # Chained step only (launched with PDL): K columns of each weight row this block asks the L2
    # to fetch before it waits for the kernel before it; 0 for none.
    prefetch: int = 0
    tma: bool = False  # x and the weight read through tensor descriptors (_product_tma_kernel)
    # trainer/gluon_products.py's kernel instead (its K step is its own; block_k, warps, stages
    # and prefetch unused): the whole weight tile in shared memory before the wait, float32
    # partials out for the consumer to add
    gluon: bool = False
    early: bool = True  # (Gluon, with PDL) let the next grid start once x's loads are issued; False: at the end

    def fits(self, n: int, k: int) -> bool:
        return n % self.block_n == 0 and k % (self.splits * self.block_k) == 0


def available(device: torch.device) -> bool:
    return runs_on(device, ENV)


if triton is not None:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

    @triton.jit
    def _prefetch_l2(rows_at, PREFETCH: tl.constexpr, LINES: tl.constexpr):
        # Ask the L2 for the first PREFETCH (2-byte) elements of each row: one 128-byte line per
        # element of the tile; lines past PREFETCH repeat its last line (a no-op, not a mask).
        lines = tl.minimum(tl.arange(0, LINES) * 64, PREFETCH - 64)
        tl.inline_asm_elementwise("prefetch.global.L2::evict_last [$1]; // dummy $0", "=r,l",
                                  [rows_at[:, None] + lines[None, :]], dtype=tl.int32, is_pure=False, pack=1)

    @triton.jit
    def _enter(w_rows, up_offset, PDL: tl.constexpr, PREFETCH: tl.constexpr, LINES: tl.constexpr,
               SWIGLU: tl.constexpr):
        # Launched with PDL: the weights are not written during a step, so fetch this block's
        # into L2 while the kernel before still runs, then wait for it (its output is x), then
        # let the next kernel start. Without PDL: nothing.
        if PDL:
            if PREFETCH > 0:
                _prefetch_l2(w_rows, PREFETCH, LINES)
                if SWIGLU:
                    _prefetch_l2(w_rows + up_offset, PREFETCH, LINES)
            gdc_wait()
            gdc_launch_dependents()

    @triton.jit
    def _product_kernel(x_ptr, w_ptr, bias_ptr, out_ptr, rows, x_stride, w_stride, out_split_stride,
                        out_stride, up_rows, K_CHUNK: tl.constexpr, HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr,
                        F32_DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        PDL: tl.constexpr = False, PREFETCH: tl.constexpr = 0, LINES: tl.constexpr = 1,
                        SWIGLU: tl.constexpr = False):
        # x [rows, K] @ w[N, K]^T for one BLOCK_N slice of the columns and one K slice. SWIGLU:
        # w is gate | up stacked (up from row `up_rows`): SiLU(x @ gate^T) * (x @ up^T), each
        # product rounded to the output's dtype first, as the plain step's two kernels do.
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        split = tl.program_id(1)
        m = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
        ks = tl.arange(0, BLOCK_K)
        live = m < rows
        first = split * K_CHUNK
        w_rows = w_ptr + cols * w_stride + first
        _enter(w_rows, up_rows * w_stride, PDL, PREFETCH, LINES, SWIGLU)
        x_at = x_ptr + m[:, None] * x_stride + first + ks[None, :]
        w_at = w_rows[:, None] + ks[None, :]
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        acc_up = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k in range(0, K_CHUNK, BLOCK_K):
            x = tl.load(x_at + k, mask=live[:, None], other=0.0)
            w = tl.load(w_at + k)
            if F32_DOT:
                acc += tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)))
            else:
                acc += tl.dot(x, tl.trans(w))
            if SWIGLU:
                u = tl.load(w_at + up_rows * w_stride + k)
                if F32_DOT:
                    acc_up += tl.dot(x.to(tl.float32), tl.trans(u.to(tl.float32)))
                else:
                    acc_up += tl.dot(x, tl.trans(u))
        _store_product(acc, acc_up, bias_ptr, out_ptr, m, cols, live, split, out_split_stride, out_stride,
                       HAS_BIAS, PARTIAL, SWIGLU)

    @triton.jit
    def _product_tma_kernel(x_desc, w_desc, w_ptr, bias_ptr, out_ptr, rows, w_stride, out_split_stride,
                            out_stride, up_rows, K_CHUNK: tl.constexpr, HAS_BIAS: tl.constexpr,
                            PARTIAL: tl.constexpr, F32_DOT: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr = False,
                            PREFETCH: tl.constexpr = 0, LINES: tl.constexpr = 1, SWIGLU: tl.constexpr = False):
        # As _product_kernel, with x and w read through tensor descriptors (the copy engine of
        # Hopper's multiprocessors, TMA: one request per tile instead of one per thread).
        first_col = tl.program_id(0) * BLOCK_N
        cols = first_col + tl.arange(0, BLOCK_N)
        split = tl.program_id(1)
        first_row = tl.program_id(2) * BLOCK_M
        m = first_row + tl.arange(0, BLOCK_M)
        live = m < rows
        first = split * K_CHUNK
        _enter(w_ptr + cols * w_stride + first, up_rows * w_stride, PDL, PREFETCH, LINES, SWIGLU)
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        acc_up = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k in range(0, K_CHUNK, BLOCK_K):
            x = x_desc.load([first_row, first + k])
            w = w_desc.load([first_col, first + k])
            if F32_DOT:
                acc += tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)))
            else:
                acc = tl.dot(x, tl.trans(w), acc)
            if SWIGLU:
                u = w_desc.load([up_rows + first_col, first + k])
                if F32_DOT:
                    acc_up += tl.dot(x.to(tl.float32), tl.trans(u.to(tl.float32)))
                else:
                    acc_up = tl.dot(x, tl.trans(u), acc_up)
        _store_product(acc, acc_up, bias_ptr, out_ptr, m, cols, live, split, out_split_stride, out_stride,
                       HAS_BIAS, PARTIAL, SWIGLU)

    @triton.jit
    def swiglu_tile(acc, acc_up, dtype):
        # SiLU(gate) * up from the float32 sums of both products, each rounded to `dtype` first
        # and SiLU's result too, as the plain step's kernels do.
        gate = acc.to(dtype).to(tl.float32)
        silu = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
        return (silu * acc_up.to(dtype).to(tl.float32)).to(dtype)

    @triton.jit
    def _store_product(acc, acc_up, bias_ptr, out_ptr, m, cols, live, split, out_split_stride, out_stride,
                       HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr, SWIGLU: tl.constexpr):
        # float32 partials [S, B, N]; or SiLU(gate) * up; or the product (+ bias), in out's dtype.
        dtype = out_ptr.dtype.element_ty
        if PARTIAL:
            tl.store(out_ptr + split * out_split_stride + m[:, None] * out_stride + cols[None, :], acc,
                     mask=live[:, None])
        elif SWIGLU:
            tl.store(out_ptr + m[:, None] * out_stride + cols[None, :], swiglu_tile(acc, acc_up, dtype),
                     mask=live[:, None])
        else:
            if HAS_BIAS:
                acc += tl.load(bias_ptr + cols).to(tl.float32)[None, :]
            tl.store(out_ptr + m[:, None] * out_stride + cols[None, :], acc.to(dtype), mask=live[:, None])

    @triton.jit
    def _add_norm_kernel(part_ptr, part_stride, x_ptr, w_ptr, x_out_ptr, h_out_ptr, n, eps,
                         PARTS: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr = False):
        # One row: y = sum of the partials, rounded as the product's output would be; x + y; RMSNorm.
        if PDL:
            gdc_wait()
            gdc_launch_dependents()
        add_norm_row(part_ptr, part_stride, x_ptr, w_ptr, x_out_ptr, h_out_ptr, tl.program_id(0), n, eps, PARTS,
                     BLOCK)

    @triton.jit
    def add_norm_row(part_ptr, part_stride, x_ptr, w_ptr, x_out_ptr, h_out_ptr, row, n, eps, PARTS: tl.constexpr,
                     BLOCK: tl.constexpr):
        # Row `row`: y = the sum of PARTS float32 partials [S, rows, n] (read past the L1, which
        # another program's writes in the same kernel may not have reached), rounded as the
        # product's output would be; x + y; RMSNorm with weight w.
        cols = tl.arange(0, BLOCK)
        inside = cols < n
        y = tl.zeros([BLOCK], tl.float32)
        for s in tl.static_range(PARTS):
            y += tl.load(part_ptr + s * part_stride + row * n + cols, mask=inside, other=0.0, cache_modifier=".cg")
        dtype = x_out_ptr.dtype.element_ty
        x = (tl.load(x_ptr + row * n + cols, mask=inside, other=0.0).to(tl.float32)
             + y.to(dtype).to(tl.float32)).to(dtype)
        tl.store(x_out_ptr + row * n + cols, x, mask=inside)
        xf = x.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, 0) / n + eps)
        normed = (xf * rstd).to(dtype).to(tl.float32)
        weight = tl.load(w_ptr + cols, mask=inside, other=0.0).to(tl.float32)
        tl.store(h_out_ptr + row * n + cols, (weight * normed).to(dtype), mask=inside)


def block_m(rows: int) -> int:
    return min(128, max(16, triton.next_power_of_2(rows)))


def product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, split: Split, *,
            pdl: bool = False, swiglu: bool = False) -> torch.Tensor:
    """x [B, K] @ weight[N, K]^T (+ bias): bf16 [B, N] for one split, else float32 partials [S, B, N]
    (the bias, if any, is left to the consumer: see `bias_of`).

    `swiglu`: weight is gate | up stacked [2I, K] and the result SiLU(gate) * up, bf16 [B, I] (one
    split only). `pdl`: launched with programmatic dependent launch (CUDA, Hopper on): the kernel
    fetches `split.prefetch` columns of its weights into L2, waits for the kernel before it, and
    lets the next one start; without PDL support the wait is a no-op."""
    rows, k = x.shape
    pdl = pdl and x.device.type == "cuda"  # Triton's interpreter has no grid dependency control
    if split.gluon:
        if swiglu:
            raise ValueError(f"{split}: a Gluon product has no SiLU x up")
        from trainer import gluon_products

        return gluon_products.product(x, weight, block_n=split.block_n, splits=split.splits, pdl=pdl,
                                      early=split.early)
    n = weight.shape[0] // 2 if swiglu else weight.shape[0]
    if not split.fits(n, k) or (swiglu and split.splits > 1):
        raise ValueError(f"{split} does not tile a {n} x {k} weight{' (SiLU x up: one split)' if swiglu else ''}")
    x = x if x.stride(1) == 1 else x.contiguous()
    partial = split.splits > 1
    if partial:
        out = torch.empty(split.splits, rows, n, device=x.device, dtype=torch.float32)
    else:
        out = torch.empty(rows, n, device=x.device, dtype=x.dtype)
    bm = block_m(rows)
    grid = (n // split.block_n, split.splits, triton.cdiv(rows, bm))
    chunk = k // split.splits
    prefetch = min(split.prefetch, chunk) if pdl else 0
    shared = {"K_CHUNK": chunk, "HAS_BIAS": bias is not None and not partial and not swiglu, "PARTIAL": partial,
              "F32_DOT": x.device.type != "cuda", "BLOCK_M": bm, "BLOCK_N": split.block_n, "BLOCK_K": split.block_k,
              "PDL": pdl, "PREFETCH": prefetch, "LINES": triton.next_power_of_2(max(1, prefetch // 64)),
              "SWIGLU": swiglu, "num_warps": split.warps, "num_stages": split.stages, "launch_pdl": pdl}
    strides = (out.stride(0) if partial else 0, out.stride(-2), n if swiglu else 0)
    bias_arg = bias if bias is not None else weight
    if split.tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        x_desc = TensorDescriptor(x, [rows, k], [x.stride(0), 1], [bm, split.block_k])
        w_desc = TensorDescriptor(weight, list(weight.shape), [weight.stride(0), 1], [split.block_n, split.block_k])
        _product_tma_kernel[grid](x_desc, w_desc, weight, bias_arg, out, rows, weight.stride(0), *strides, **shared)
    else:
        _product_kernel[grid](x, weight, bias_arg, out, rows, x.stride(0), weight.stride(0), *strides, **shared)
    return out


def add_norm(partials: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, eps: float, *, pdl: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + sum of partials, RMSNorm of that) in one kernel; as fused_decode's add_norm on the
    bf16 product (partials [S, B, N] float32, or the bf16 product itself as [1, B, N])."""
    parts, rows, n = partials.shape
    pdl = pdl and x.device.type == "cuda"
    x_out, h_out = torch.empty_like(x), torch.empty_like(x)
    _add_norm_kernel[(rows,)](partials, partials.stride(0), x, weight, x_out, h_out, n, float(eps), PARTS=parts,
                              BLOCK=triton.next_power_of_2(n), PDL=pdl, num_warps=8 if n > 2048 else 4,
                              launch_pdl=pdl)
    return x_out, h_out


def candidates(n: int, k: int, rows: int, sms: int) -> list[Split]:
    """A few shapes per product: for each tile width and K step, the K splits that fill the
    multiprocessors once or twice (or none, if the tiles already do), as deep a pipeline as fits."""
    found = []
    for block_n in (64, 128):
        if n % block_n:
            continue
        tiles = (n // block_n) * triton.cdiv(rows, block_m(rows))
        for block_k in (64, 128):
            fitting = [s for s in range(1, 17) if Split(block_n, block_k, s).fits(n, k) and tiles * s <= 2 * sms]
            picked = {min(fitting, key=lambda s: abs(tiles * s - waves * sms)) for waves in (1, 2)} if fitting else set()
            stage_bytes = (block_m(rows) + block_n) * block_k * 2
            for splits in sorted(picked):
                steps = k // (splits * block_k)
                found.append(Split(block_n, block_k, splits, stages=max(2, min(4, steps, 200_000 // stage_bytes))))
    return found


def chain_candidates(kind: str, n: int, k: int, rows: int, sms: int) -> list[Split]:
    """The chained step's shapes per kind, before prefetching is tried on the fastest: gate/up
    (n: the SiLU x up width) in one split with a few tile widths, the others as `candidates`."""
    if kind != "gate_up":
        return candidates(n, k, rows, sms)
    shapes = ((64, 64, 4, 3), (32, 64, 4, 4), (64, 64, 8, 4), (128, 64, 8, 3))
    return [Split(bn, bk, 1, warps, stages) for bn, bk, warps, stages in shapes if Split(bn, bk, 1).fits(n, k)]


@dataclass
class DecodeProducts:
    """Per kind of product: None (cuBLAS) or the Split that ran fastest; `timing` for the notes.

    `pdl`: the chained step (trainer/fused_decode.py): the products with a Split are Triton kernels
    launched with programmatic dependent launch, gate/up's with SiLU x up in its epilogue; those
    without (None) stay cuBLAS's, as in the fused step."""

    chosen: dict[str, Split | None] = field(default_factory=dict)
    timing: dict[str, dict[str, float]] = field(default_factory=dict)
    pdl: bool = False
    # Decode attention split over this many programs per (row, kv head) (trainer/split_attention.py);
    # 0: one program each (fused_decode.rope_attention).
    attention_splits: int = 0
    # The MLP half of each layer as one persistent kernel (trainer/mlp_block.py: a BlockShape);
    # None: gate/up, SiLU x up, down and residual + RMSNorm as their own kernels.
    mlp: BlockShape | None = None
    # Each layer after its attention as trainer/gluon_stream.py's one kernel (the products, the MLP
    # block and the attention splits above then unused); None: the fused step's kernels.
    stream: StreamVariant | None = None

    def apply(self, kind: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
              ) -> torch.Tensor:
        split = self.chosen.get(kind)
        if split is None:  # (in the chained step, gate/up's caller then applies SiLU x up)
            return F.linear(x, weight, bias)
        return product(x, weight, bias, split, pdl=self.pdl, swiglu=self.pdl and kind == "gate_up")

    @classmethod
    def chained(cls, weights, batch: int) -> DecodeProducts:
        """The chained step's products: per kind, each candidate timed over every layer's weight in
        a CUDA graph (launched with PDL, so one product overlaps the next as in the step), then the
        fastest again with part or all of its weights prefetched into L2. Raises if a kind has no
        working candidate."""
        ref = weights.layers[0].qkv
        key = ("chained", weights.dims, batch, ref.dtype, str(ref.device), weights.layers[0].qkv_bias is not None)
        if key in _TUNED:
            return cls(chosen=dict(_TUNED[key].chosen), timing=_TUNED[key].timing, pdl=True)
        sms = torch.cuda.get_device_properties(ref.device).multi_processor_count
        found = cls(pdl=True)
        for kind, n, k, run in _by_kind(weights, batch):
            n = n // 2 if kind == "gate_up" else n
            swiglu = kind == "gate_up"
            shapes = chain_candidates(kind, n, k, batch, sms)
            shapes += [replace(s, tma=True) for s in shapes]
            timing = _time_splits(run, shapes, pdl=True, swiglu=swiglu)
            if not timing:
                raise RuntimeError(f"no Triton product ran for {kind}")
            best = min((s for s in shapes if str(s) in timing), key=lambda s: timing[str(s)])
            chunk = k // best.splits
            prefetched = [replace(best, prefetch=p) for p in sorted({chunk, max(64, chunk // 4 // 64 * 64)})]
            timing |= _time_splits(run, prefetched, pdl=True, swiglu=swiglu)
            found.chosen[kind] = min((s for s in shapes + prefetched if str(s) in timing), key=lambda s: timing[str(s)])
            found.timing[kind] = timing
        _TUNED[key] = found
        return cls(chosen=dict(found.chosen), timing=found.timing, pdl=True)

    @classmethod
    def prefetched(cls, weights, batch: int, kinds: tuple[str, ...] = ("qkv", "o")) -> DecodeProducts:
        """The chained step with `kinds` as trainer/gluon_products.py's kernels (the rest on
        cuBLAS): per kind, each shape that fits timed over every layer's weight in a CUDA graph,
        launched with PDL, and the fastest kept. Raises if a kind has none that runs."""
        from trainer import gluon_products

        ref = weights.layers[0].qkv
        if not gluon_products.supported(ref.device):
            raise RuntimeError("Gluon products need Triton's Gluon and a Hopper GPU")
        found = cls(pdl=True)
        for kind, n, k, run in _by_kind(weights, batch):
            if kind not in kinds:
                continue
            shapes = cls.gluon_shapes(weights, batch, kind)
            timing = {"cublas": _graph_ms(partial(run, F.linear))} | _time_splits(run, shapes, pdl=True)
            if len(timing) == 1:
                raise RuntimeError(f"no Gluon product ran for {kind}")
            found.chosen[kind] = min((s for s in shapes if str(s) in timing), key=lambda s: timing[str(s)])
            found.timing[kind] = timing
        return found

    @staticmethod
    def gluon_shapes(weights, batch: int, kind: str) -> list[Split]:
        """trainer/gluon_products.py's shapes for `kind`'s weight: 64 or 128 columns, K slices that
        fit and fill half to twice the multiprocessors."""
        from trainer import gluon_products

        weight = getattr(weights.layers[0], kind)
        n, k = weight.shape
        sms = torch.cuda.get_device_properties(weight.device).multi_processor_count
        return [Split(block_n, gluon_products.BLOCK_K, splits, gluon=True) for block_n in (64, 128)
                for splits in range(1, 17) if gluon_products.fits(n, k, batch, block_n, splits)
                and sms // 2 <= n // block_n * splits <= 2 * sms]

    @classmethod
    def fixed(cls, **chosen: Split | None) -> DecodeProducts:
        """Given choices (the tests, the interpreter); kinds left out use cuBLAS."""
        return cls(chosen=dict(chosen))

    @classmethod
    def tuned(cls, weights, batch: int) -> DecodeProducts:
        """Time cuBLAS and each candidate over every layer's weight of each kind, in a CUDA graph
        (no host launches in the figure), and keep the fastest per kind."""
        found = cls()
        ref = weights.layers[0].qkv
        if not available(ref.device) or ref.device.type != "cuda":
            return found
        key = (weights.dims, batch, ref.dtype, str(ref.device), weights.layers[0].qkv_bias is not None)
        if key in _TUNED:
            return cls(chosen=dict(_TUNED[key].chosen), timing=_TUNED[key].timing)
        sms = torch.cuda.get_device_properties(ref.device).multi_processor_count
        for kind, n, k, run in _by_kind(weights, batch):
            # gate/up's consumer (SiLU x up) reads the bf16 product: one split only
            shapes = [s for s in candidates(n, k, batch, sms) if s.splits == 1 or kind != "gate_up"]
            timing = {"cublas": _graph_ms(partial(run, F.linear))} | _time_splits(run, shapes)
            fastest = min(timing, key=timing.__getitem__)  # cuBLAS on a tie
            found.chosen[kind] = next((s for s in shapes if str(s) == fastest), None)
            found.timing[kind] = timing
        _TUNED[key] = found
        return cls(chosen=dict(found.chosen), timing=found.timing)

    def without(self, *kinds: str) -> DecodeProducts:
        """The same choice with `kinds` back on cuBLAS."""
        return replace(self, chosen={k: (None if k in kinds else v) for k, v in self.chosen.items()})

    def describe(self) -> dict[str, str]:
        return {kind: str(split) if split else "cublas" for kind, split in self.chosen.items()} | (
            {"pdl": "chained"} if self.pdl else {}) | (
            {"attention_splits": str(self.attention_splits)} if self.attention_splits else {}) | (
            {"mlp": str(self.mlp)} if self.mlp is not None else {}) | (
            {"stream": str(self.stream)} if self.stream is not None else {})


_TUNED: dict[tuple, DecodeProducts] = {}  # per model shape, batch, dtype and device: timed once


def _by_kind(weights, batch: int):
    """Per kind of product: (kind, N, K of its weight, run), where run(fn) applies fn(x, weight,
    bias) to every layer's weight of that kind on one random x [batch, K]."""
    ref = weights.layers[0].qkv
    for kind in KINDS:
        mats = [getattr(layer, kind) for layer in weights.layers]
        biases = [layer.qkv_bias if kind == "qkv" else None for layer in weights.layers]
        n, k = mats[0].shape
        x = torch.randn(batch, k, device=ref.device, dtype=ref.dtype)
        yield kind, n, k, partial(_each, x=x, mats=mats, biases=biases)


def _time_splits(run, splits: list[Split], **options: bool) -> dict[str, float]:
    """Milliseconds per graph replay of `run` (all layers' products of a kind) per Split, the
    product called with `options` (pdl, swiglu); a candidate that fails is left out."""
    timing = {}
    for split in splits:
        try:
            timing[str(split)] = _graph_ms(partial(run, partial(product, split=split, **options)))
        except Exception as exc:  # noqa: BLE001 - that candidate is out
            warnings.warn(f"Triton product {split} failed ({exc!r:.200})", stacklevel=3)
    return timing


def _each(fn, x: torch.Tensor, mats: list[torch.Tensor], biases: list[torch.Tensor | None]) -> list[torch.Tensor]:
    return [fn(x, w, b) for w, b in zip(mats, biases)]


def _graph_ms(run, replays: int = 10) -> float:
    """Milliseconds per replay of `run` captured in a CUDA graph (after a warm-up run)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / replays


def enabled() -> bool:
    return os.environ.get(ENV) == "1"
