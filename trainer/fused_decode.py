"""A decode step with fewer kernels: RoPE, the cache write and attention in one Triton kernel, the
residual add fused with the next RMSNorm, SiLU x up on its own.

    from trainer.fused_decode import fused_decode_step, element_fns, check_error
    logits = fused_decode_step(weights, state, kv_len, element_fns(dims))  # as qwen2_decode.decode_step

The plain step (trainer/qwen2_decode.py) runs 14 kernels per layer on an H200 at batch 128, six
of them element-wise (two RMSNorms, two RoPE halves, the cache's index_copy, SiLU x up) plus the
two copies cuBLAS makes to add the residual in its epilogue; each costs 1.3-3 us, mostly
start-up, not bytes. Here a layer is: q/k/v product, `rope_attention` (RoPE on q and the new key
from the product's output, the new key and value written to the cache slot, attention over the
cached slots plus the new one), o product, residual + RMSNorm (one kernel writing both), gate/up
product, SiLU x up, down product, residual + the next layer's RMSNorm: 9 kernels (10 with the
down product's split-K reduce). Same arithmetic as the plain step up to bf16 rounding order:
the RoPE'd q and key are rounded to bf16 once (as the compiled plain step does), the products
and sums are unchanged.

Optional: trainer/fast_generation.py uses it on CUDA only after `check_error` agrees with the
plain step on the model's own weights, and (by default) only when its captured graph replays
faster than the plain one; any failure keeps the plain step. Triton's interpreter runs the
kernel on a CPU for the tests.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from trainer import triton_products
from trainer.attention_blocks import BLOCK_N, autotuned, launch
from trainer.mlp_block import failed as mlp_block_failed
from trainer.mlp_block import mlp_block
from trainer.qwen2_decode import DecodeState, DecodeWeights, ModelDims, rms_norm
from trainer.triton_base import compile_options, repeatable, runs_on, tl, triton
from trainer.triton_products import DecodeProducts

if TYPE_CHECKING:  # (Gluon imported only where the stream step is asked for)
    from trainer.gluon_stream import LayerStream, StreamVariant

SPLITS_ENV = "RLTUI_DECODE_ATTENTION_SPLITS"


def available(device: torch.device) -> bool:
    return runs_on(device)


def fits(dims: ModelDims, device: torch.device) -> bool:
    """Whether the fused step's attention takes these heads here: it multiplies each half of a
    head (RoPE's halves) as its own dot, and on CUDA Triton's dot needs at least 16 along it, a
    power of two (the interpreter's float32 dots take any). Real models' heads (64, 128) do; the
    built-in tiny model's 16 do not (halves of 8): the plain step serves it on a GPU, quietly,
    where the fused step's check used to print a compile error into every job's log."""
    half = dims.head_dim // 2
    return device.type != "cuda" or (half >= 16 and half & (half - 1) == 0)


if triton is not None:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

    from trainer.attention_blocks import _attend_block, _new_token

    @triton.jit
    def _rope_attention_kernel(qkv_ptr, cos_ptr, sin_ptr, pos_ptr, write_ptr, leader_ptr, shared_ptr, cache_ptr,
                               bias_ptr, out_ptr, scale, batch, qkv_stride_b, cache_stride_b, cache_stride_h, cache_stride_n,
                               bias_stride_b, out_stride_b, part_stride, qkv_bias_ptr, kv_len: tl.constexpr,
                               F32_DOT: tl.constexpr, HEADS: tl.constexpr, KV_HEADS: tl.constexpr,
                               GROUPS: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK: tl.constexpr,
                               PARTS: tl.constexpr, HAS_BIAS: tl.constexpr, PDL: tl.constexpr = False,
                               MASK_AHEAD: tl.constexpr = True):
        HALF: tl.constexpr = D // 2
        if PDL:  # the chained step: everything read below may come from the kernel before
            gdc_wait()
            gdc_launch_dependents()
        b = tl.program_id(0)
        h = tl.program_id(1)
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
        # The first `shared` slots (the prompt, written by the prefill) are the same in every row
        # of a group: read them from the group's first row, so the group's other rows find them
        # in L2 instead of reading their own copies from memory.
        shared = tl.load(shared_ptr)
        leader = tl.load(leader_ptr + b) * cache_stride_b + h * cache_stride_h
        # Slots at or past this step's are not filled yet (the new one is handled here): the loop
        # stops at the last filled slot, not at the end of the attention bucket.
        filled = tl.minimum(slot, kv_len)
        tl.store(entry + halves, k1.to(cache_ptr.dtype.element_ty))
        tl.store(entry + HALF + halves, k2.to(cache_ptr.dtype.element_ty))
        tl.store(entry + D + dims, v_new.to(cache_ptr.dtype.element_ty))
        # The new token first (always visible): the running max starts finite, no empty rows.
        m_i = (tl.sum(q1.to(tl.float32) * k1.to(tl.float32)[None, :], 1)
               + tl.sum(q2.to(tl.float32) * k2.to(tl.float32)[None, :], 1)) * scale
        l_i = tl.full([BLOCK_M], 1.0, tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32) + v_new.to(tl.float32)[None, :]
        # The mask's block is read one block ahead (MASK_AHEAD): its 2-byte loads are not among
        # the ones Triton's pipeline copies ahead into shared memory, and read in the block that
        # adds them, every block waited on them (a fifth of the kernel's warp samples on an H200,
        # docs/benchmarks.md, call 75).
        mask_row = bias_ptr + b * bias_stride_b
        first = tl.arange(0, BLOCK)
        bias_next = tl.load(mask_row + first, mask=first < filled, other=float("-inf"))
        # (Triton's interpreter cannot bound a loop by a loaded value: there, masks alone stop it.)
        for start in range(0, kv_len if F32_DOT else filled, BLOCK):
            slots = start + tl.arange(0, BLOCK)
            inside = slots < filled  # the slot written above is not read back
            at = cache_ptr + tl.where(slots < shared, leader, own)[:, None] + slots[:, None] * cache_stride_n
            if MASK_AHEAD:
                bias = bias_next.to(tl.float32)
                after = slots + BLOCK
                bias_next = tl.load(mask_row + after, mask=after < filled, other=float("-inf"))
            else:
                bias = tl.load(mask_row + slots, mask=inside, other=float("-inf")).to(tl.float32)
            m_i, l_i, acc = _attend_block(q1, q2, at, inside, bias, m_i, l_i, acc, scale, D, F32_DOT)
        out = acc / l_i[:, None]
        tl.store(out_ptr + b * out_stride_b + heads[:, None] * D + dims[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=live_rows[:, None])


_TUNED: list = []


def _tuned():
    if not _TUNED:
        _TUNED.append(autotuned(_rope_attention_kernel, ["kv_len", "batch"]))
    return _TUNED[0]


def tuned_configs() -> dict[str, str]:
    """The configuration the autotuner picked per (attention length, batch, ...), for the notes."""
    return {str(key): str(config) for key, config in (_TUNED[0].cache.items() if _TUNED else ())}


def rope_attention(dims: ModelDims, qkv: torch.Tensor, state: DecodeState, cache: torch.Tensor,
                   bias: torch.Tensor, kv_len: int, qkv_bias: torch.Tensor | None = None, *,
                   pdl: bool = False, mask_ahead: bool = True) -> torch.Tensor:
    """qkv [B, (heads + 2 kv_heads) D] (the fused product, bias added) -> attention output [B, heads D].
    Or qkv as float32 partial sums [S, B, ...] of a split product (trainer/triton_products.py)
    with its `qkv_bias` not yet added: the kernel adds both.

    Applies RoPE at `state.positions` to q and the new key, writes key | value into `cache`
    [B, kv_heads, capacity, 2D] at `state.write_index`, and attends over the slots before it
    (at most `kv_len`) under the additive mask `bias` [B, >= kv_len] (0 / -inf), the new slot
    always included. The first `state.shared` slots are read from row `state.leaders[b]` (the
    prompt a group's rows share; each row also holds a copy, which the plain step reads).
    `pdl`: launched with programmatic dependent launch (the chained step). `mask_ahead` False
    (bench/gpu_attention_mask.py): each block's mask read in that block, as before call 76."""
    return launch(_rope_attention_kernel, _tuned, dims, qkv, state, cache, bias, kv_len, qkv_bias, pdl,
                  constants={} if mask_ahead else {"MASK_AHEAD": False})


def attention_splits() -> int:
    """RLTUI_DECODE_ATTENTION_SPLITS: programs per (row, kv head) of the fused step's attention
    (trainer/split_attention.py); 0 (default) or unset: one (rope_attention), which was faster on
    an H200 at the benchmark's lengths."""
    value = os.environ.get(SPLITS_ENV, "0").strip() or "0"
    if not value.isdigit() or int(value) > 16:
        warnings.warn(f"{SPLITS_ENV} must be a whole number from 0 to 16, not {value!r}; using 0", stacklevel=2)
        return 0
    return int(value)


def decode_attention(dims: ModelDims, qkv: torch.Tensor, state: DecodeState, cache: torch.Tensor,
                     bias: torch.Tensor, kv_len: int, qkv_bias: torch.Tensor | None,
                     products: DecodeProducts) -> torch.Tensor:
    """rope_attention, or its split-over-slots form when `products.attention_splits` asks for it;
    launched with PDL in the chained step."""
    if products.attention_splits:
        from trainer.split_attention import rope_attention_split

        return rope_attention_split(dims, qkv, state, cache, bias, kv_len, qkv_bias,
                                    splits=products.attention_splits, pdl=products.pdl)
    return rope_attention(dims, qkv, state, cache, bias, kv_len, qkv_bias, pdl=products.pdl)


ElementFns = tuple[Callable, Callable, Callable]
_COMPILED: dict[tuple[float, bool, bool], ElementFns] = {}


def element_fns(dims: ModelDims, compiled: bool) -> ElementFns:
    """(norm, add_norm, silu_mul); compiled once per eps on CUDA (one kernel each)."""
    eps = dims.eps

    def norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, weight, eps)

    def add_norm(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x + y
        return x, rms_norm(x, weight, eps)

    def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up

    key = (eps, compiled, repeatable())
    if key not in _COMPILED:
        fns: ElementFns = (norm, add_norm, silu_mul)
        if compiled:
            fns = tuple(torch.compile(fn, fullgraph=True, dynamic=False, **compile_options()) for fn in fns)
        _COMPILED[key] = fns
    return _COMPILED[key]


def step_bias(state: DecodeState, kv_len: int, dtype: torch.dtype) -> torch.Tensor:
    """Mark the slot being written valid; the additive mask [B, kv_len] every layer shares."""
    state.valid.index_fill_(1, state.write_index, True)
    bias = torch.zeros(state.valid.shape[0], kv_len, device=state.valid.device, dtype=dtype)
    return bias.masked_fill_(~state.valid[:, :kv_len], float("-inf"))


def fused_decode_step(weights: DecodeWeights, state: DecodeState, kv_len: int, fns: ElementFns,
                      products: DecodeProducts | None = None) -> torch.Tensor:
    """Same contract as qwen2_decode.decode_step: feed `state.tokens`, return next-token logits.
    `products` (trainer/triton_products.py) may run some projections as split-K Triton kernels
    whose partial sums the attention kernel and residual + RMSNorm kernel add up.

    `products.pdl`, the chained step: every kernel of the layers that we launch (the Triton
    products, attention, residual + RMSNorm, gate/up with SiLU x up in its epilogue) is launched
    with programmatic dependent launch, 7 kernels a layer. Each one's blocks start while the
    kernel before still runs, fetch their weights into L2 (the weights are not written during a
    step), and wait for it only before reading what it wrote; a product left to cuBLAS (None)
    runs as in the fused step, gate/up's then followed by SiLU x up.

    `products.stream`: each layer after its attention as one kernel (trainer/gluon_stream.py)."""
    products = products or DecodeProducts()
    if products.stream is not None:
        return stream_step(weights, state, kv_len, products.stream)
    dims = weights.dims
    norm, add_norm, silu_mul = fns
    x = F.embedding(state.tokens, weights.embed)
    bias = step_bias(state, kv_len, x.dtype)
    h = norm(x, weights.layers[0].input_norm)
    last = len(weights.layers) - 1
    swiglu_in_product = products.pdl and products.chosen.get("gate_up") is not None

    def add_product_norm(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor):
        if products.pdl or y.dim() == 3:
            return triton_products.add_norm(y if y.dim() == 3 else y[None], x, weight, dims.eps, pdl=products.pdl)
        return add_norm(x, y, weight)

    for index, layer in enumerate(weights.layers):
        qkv = products.apply("qkv", h, layer.qkv, layer.qkv_bias)
        attn = decode_attention(dims, qkv, state, state.kv_cache[index], bias, kv_len, layer.qkv_bias, products)
        x, h = add_product_norm(x, products.apply("o", attn, layer.o), layer.post_norm)
        following = weights.norm if index == last else weights.layers[index + 1].input_norm
        if products.mlp is not None:
            x, h = mlp_block(x, h, layer.gate_up, layer.down, following, dims.eps, products.mlp)
            continue
        up = products.apply("gate_up", h, layer.gate_up)
        up = up if swiglu_in_product else silu_mul(up)
        x, h = add_product_norm(x, products.apply("down", up, layer.down), following)
    logits = F.linear(h, weights.lm_head)
    state.positions.add_(1)
    state.write_index.add_(1)
    return logits


def stream_step(weights: DecodeWeights, state: DecodeState, kv_len: int, variant: StreamVariant,
                work: LayerStream | None = None) -> torch.Tensor:
    """qwen2_decode.decode_step's contract: feed state.tokens, return the logits [B, vocab],
    advance the slot and positions; the layers as rope_attention + trainer/gluon_stream.py's
    layer kernel (or its reference), in `work` (default: the workspace for this model, batch and
    device)."""
    from trainer.gluon_stream import programs_on, workspace

    dims = weights.dims
    x = F.embedding(state.tokens, weights.embed)
    if work is None:
        work = workspace(dims, x.shape[0], x.device, x.dtype, programs_on(x.device, variant))
    launch = work.reference if variant.reference else work.launch
    work.count[:work.flag].zero_()  # (then the spin limit's flag, kept until `failed` reads it)
    bias = step_bias(state, kv_len, x.dtype)
    work.x.copy_(x)
    first = weights.layers[0]
    qkv = F.linear(rms_norm(x, first.input_norm, dims.eps), first.qkv, first.qkv_bias)
    last = len(weights.layers) - 1
    for index, layer in enumerate(weights.layers):
        # (with PDL the attention kernel itself waits for the layer kernel before it, as in the
        # chained step, and lets the next layer kernel start as its programs begin)
        attn = rope_attention(dims, qkv, state, state.kv_cache[index], bias, kv_len,
                              None if index == 0 else layer.qkv_bias, pdl=variant.pdl)
        following = weights.layers[index + 1] if index < last else None
        if variant.trace:  # the marks are this layer's
            work.count[work.flag + 1:].zero_()
        launch(index, attn, layer, following, layer.post_norm,
               following.input_norm if following is not None else weights.norm, variant)
        qkv = work.qkv_part
    logits = F.linear(work.h, weights.lm_head)
    state.positions.add_(1)
    state.write_index.add_(1)
    return logits


@torch.no_grad()
def check_error(weights: DecodeWeights, attention, seed: int = 0,
                products: DecodeProducts | None = None) -> dict[str, float]:
    """The fused step against the plain eager one on the model's own weights, from the same random
    cache: relative error of the attention layer's output and of the step's logits, and the
    largest difference in the cache slot each wrote. Small batch, two attention buckets' worth of
    slots, some of them masked."""
    from trainer.qwen2_decode import _attend, attention_inputs, decode_step

    dims, ref = weights.dims, weights.layers[0].qkv
    device, dtype = ref.device, ref.dtype
    gen = torch.Generator(device=device).manual_seed(seed)
    batch, capacity, written = 3, 2 * BLOCK_N + 16, BLOCK_N + 37
    states = []
    for _ in range(2):
        s = DecodeState.allocate(dims, batch, capacity, device, dtype)
        states.append(s)
    cache = torch.randn(states[0].kv_cache.shape, device=device, generator=gen, dtype=torch.float32).to(dtype)
    valid = torch.rand(batch, capacity, device=device, generator=gen) > 0.3
    valid[:, written:] = False
    valid[0, :40] = False  # left padding
    tokens = torch.randint(0, dims.vocab, (batch,), device=device, generator=gen)
    for s in states:
        s.kv_cache.copy_(cache)
        s.valid.copy_(valid)
        s.tokens.copy_(tokens)
        s.positions.copy_(torch.tensor([written - 40, written, written - 3], device=device))
        s.write_index.fill_(written)
    kv_len = capacity
    # One layer's attention alone, on a random hidden state.
    x = torch.randn(batch, dims.hidden, device=device, generator=gen, dtype=torch.float32).to(dtype)
    layer = weights.layers[0]
    plain, fused = states
    cos = plain.cos.index_select(0, plain.positions)
    sin = plain.sin.index_select(0, plain.positions)
    q, entry = attention_inputs(dims, x, layer.input_norm, layer.qkv, layer.qkv_bias, cos, sin)
    plain_cache = plain.kv_cache[0].clone()
    plain_cache.index_copy_(2, plain.write_index, entry[:, :, None])
    plain.valid.index_fill_(1, plain.write_index, True)
    bias = torch.zeros(batch, 1, kv_len, device=device, dtype=dtype).masked_fill_(
        ~plain.valid[:, None, :kv_len], float("-inf"))
    want = _attend(dims, q, plain_cache[:, :, :kv_len], bias[:, None], attention).float()
    fused_cache = fused.kv_cache[0].clone()
    qkv = (products or DecodeProducts()).apply("qkv", rms_norm(x, layer.input_norm, dims.eps), layer.qkv,
                                               layer.qkv_bias)
    got = decode_attention(dims, qkv, fused, fused_cache, step_bias(fused, kv_len, dtype), kv_len, layer.qkv_bias,
                           products or DecodeProducts()).float()
    slot = int(written)
    found = {
        "attention_rel_error": float((got - want).norm() / want.norm()),
        "cache_slot_rel_max_diff": float((fused_cache[:, :, slot].float() - plain_cache[:, :, slot].float()).abs().max()
                                         / plain_cache[:, :, slot].float().abs().max()),
        "cache_other_slots_equal": bool(torch.equal(
            torch.cat((fused_cache[:, :, :slot], fused_cache[:, :, slot + 1:]), 2),
            torch.cat((plain_cache[:, :, :slot], plain_cache[:, :, slot + 1:]), 2))),
    }
    plain.valid.copy_(valid)
    fused.valid.copy_(valid)
    want = decode_step(weights, plain, kv_len, None, attention).float()
    got = fused_decode_step(weights, fused, kv_len, element_fns(dims, compiled=False), products).float()
    found["logits_rel_error"] = float((got - want).norm() / want.norm())
    found["cache_rel_error"] = float((fused.kv_cache.float() - plain.kv_cache.float()).norm()
                                     / plain.kv_cache.float().norm())
    found["positions_equal"] = bool(torch.equal(fused.positions, plain.positions)
                                    and torch.equal(fused.write_index, plain.write_index))
    return found


def check_passes(found: dict[str, float]) -> bool:
    """bf16 rounding-order differences only: attention output as the Triton/SDPA check (2%), the
    new cache entry within a few bf16 steps (relative to its largest value), the step's logits within
    a few times transformers' own bf16 error on random weights (~3.5%); a wrong index, sign or
    weight is off by tens of percent (the CPU tests check the same code to float32 rounding)."""
    return (found["attention_rel_error"] < 0.02 and found["cache_other_slots_equal"]
            and found["cache_slot_rel_max_diff"] < 0.02 and found["logits_rel_error"] < 0.1
            and found["cache_rel_error"] < 0.02 and found["positions_equal"])


_FUSED_CHECKED: dict[tuple, bool] = {}


def fused_choice(weights: DecodeWeights, attention, graphs: bool, env: str,
                 products: DecodeProducts | None = None) -> bool | None:
    """False unless the variable `env` (RLTUI_DECODE_FUSED) allows the fused step, Triton runs here and the step agrees
    with the plain one on these weights (checked once per model shape, dtype and product choice);
    then True for "1", else None (decide by timing) when graphs are on and False when they are off.
    When the step fails its check with Triton `products`, they are dropped (cuBLAS for every
    product, mutated in place) and the step is checked again."""
    mode = os.environ.get(env, "auto")
    ref = weights.layers[0].qkv
    if mode == "0" or not available(ref.device) or not fits(weights.dims, ref.device):
        return False
    if ref.device.type != "cuda" and mode != "1":
        return False  # the interpreter is for tests that ask for it
    ok = fused_checked(weights, attention, products)
    if not ok and products is not None and any(products.chosen.values()):
        products.chosen.clear()
        ok = fused_checked(weights, attention, products)
    if not ok:
        return False
    if mode == "1":
        return True
    return None if graphs else False  # ungraphed, the plain step is faster (fewer host launches)


def fused_checked(weights: DecodeWeights, attention, products: DecodeProducts | None) -> bool:
    """Whether the fused step with these products agrees with the plain one (checked once per
    model shape, device, dtype, attention and products)."""
    ref = weights.layers[0].qkv
    chosen = tuple(sorted((k, v) for k, v in (products.chosen.items() if products else ()) if v is not None))
    key = (weights.dims, str(ref.device), ref.dtype, attention, chosen, bool(products and products.pdl),
           products.attention_splits if products else 0, products.mlp if products else None,
           products.stream if products else None)
    if key not in _FUSED_CHECKED:
        _FUSED_CHECKED[key] = False
        what = f"fused decode step (Triton products {dict(chosen)})" if chosen else "fused decode step"
        what = f"chained {what}" if products and products.pdl else what
        what = f"{what} ({products.stream})" if products and products.stream else what
        try:
            found = check_error(weights, attention, products=products)
            if products is not None and products.mlp is not None and mlp_block_failed(ref.device):
                found["mlp_block_barrier_gave_up"] = True  # its numbers are not to be trusted
            if products is not None and products.stream is not None:
                # (Gluon imported only where asked for)
                from trainer.gluon_stream import failed as stream_failed

                found["stream_barrier_gave_up"] = stream_failed(ref.device)
            if check_passes(found) and not found.get("mlp_block_barrier_gave_up") and not found.get(
                    "stream_barrier_gave_up"):
                _FUSED_CHECKED[key] = True
            else:
                warnings.warn(f"{what} differs from the plain one ({found}); not used", stacklevel=4)
        except Exception as exc:  # noqa: BLE001 - the plain step stays
            warnings.warn(f"{what} failed its check ({exc!r:.300}); not used", stacklevel=4)
    return _FUSED_CHECKED[key]
