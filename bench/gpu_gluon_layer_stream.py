"""The decode step as two kernels a layer: the attention, then everything after it up to the next
layer's q/k/v in one warp-specialized Gluon launch whose weights stream through its five waits.

    python bench/gpu_gluon_layer_stream.py [--out $OUT/gluon_layer_stream.json]  # GPU machine (132 SMs)
    python bench/gpu_gluon_layer_stream.py --compile-only                        # anywhere: sm_90a, no GPU
    python bench/gpu_gluon_layer_stream.py --cpu-check                           # the step around it, CPU

The fused step with the MLP block (trainer/fused_decode.py) runs five kernels a layer: q/k/v
(cuBLAS), the attention (`rope_attention`), o, residual + RMSNorm, and the MLP block with its two
barriers; every one of them and every barrier starts its weight stream afresh. Here a layer is:

    rope_attention(q/k/v partials)  ->  layer kernel: o, norm, gate/up, down, norm, next q/k/v

The layer kernel, on 132 programs (one a multiprocessor, a cooperative launch), in phases:

1. o: 24 column tiles x 5 K slices of the attention output times o's weight -> float32 partials;
2. residual + post-attention RMSNorm of row p (program p < 128), in place;
3. gate/up with SiLU x up, program p's columns of the intermediate (as the MLP block);
4. down: 24 tiles x 5 K slices -> float32 partials;
5. residual + the next layer's input RMSNorm (the final norm after the last layer), in place;
6. the next layer's q/k/v: 32 column tiles x 4 K slices -> float32 partials, which the next
   layer's `rope_attention` adds up with the bias (it takes split products' partials already).

Phases 2-6 each wait for every program to have finished the phase before (an arrival counter per
(layer, phase), arrivals by atomic add with release, waits by acquiring loads and a proxy fence).
A weight loader warp streams every phase's weight tiles into a ring of shared-memory stages and
waits only for free stages; an activation loader warp loads each phase's input tiles once its
wait has passed; the multiplying warp group (4 warps) runs the products and the norms. As in
bench/gpu_gluon_mlp_stream.py. bench/gluon_stream_model.py runs this kernel's protocol too
(`layer_phases`, one launch a layer) with random interleavings on a CPU.

Layer 0's q/k/v is cuBLAS's (bf16, bias added); the head is cuBLAS's, as in the fused step.

Variants: 6 stages with the weights streaming ahead; the same launched with programmatic dependent
launch after the attention kernel (also launched with it, as in the chained step), so that a
program can start on its multiprocessor as soon as the attention there is done and stream its o
and gate/up weights while other multiprocessors still attend; only the input loader waits for
the attention grid (griddepcontrol.wait), as trainer/gluon_products.py's o kernel does, which
gained 0.07 ms a step on an H200 so (calls 57-63); and the weights waiting at each dependency.

Each variant runs in its own process, killed after TIMEOUT_S. Side by side in it, on Qwen2.5-1.5B's
shapes with random weights (q/k/v biases), batch 128, a random cache with 8-row groups sharing a
prompt: the plain step (trainer/qwen2_decode.decode_step, SDPA), the fused step with the MLP block,
the same with o as the Gluon kernel in its two fastest shapes (`decode_graphs.prefetched_o`), and
this step, each captured in a CUDA graph (`_graph_ms`, the state's slot and positions put back
in each replay). Checked: each step's logits against the plain step's from the same state (relative
error; the fused step's own check allows 0.1, bf16 rounding orders on random weights give ~0.035),
the cache slot each wrote, and the barrier spin limit's flag; and one layer of the kernel against
`LayerStream.reference` (the same arithmetic in torch, which `--cpu-check` runs in the kernel's
place through a tiny model's step on a CPU, against the plain step), buffer by buffer.

What would decide it: the replay against the fastest fused step, the one the engine keeps (with
the MLP block and o as trainer/gluon_products.py's kernel: 1.73 ms at the first bucket in call 79;
with cuBLAS's o 1.77), both timed here in the same process.
"""

import os
import subprocess
import sys
from dataclasses import dataclass

import torch
from gluon_stream_parts import (
    BLOCK_K,
    REST,
    TILE,
    bench_main,
    compile_all,
    gl,
    gluon,
    print_row,
    row_line,
    time_into,
    tma_desc,
)

ROWS, H, I, HEADS, KV_HEADS, D, LAYERS, VOCAB = 128, 1536, 8960, 12, 2, 128, 28, 151936
QKV_N = (HEADS + 2 * KV_HEADS) * D  # 2048
PROGRAMS = 132
# o and down: 24 column tiles x 5 K slices, q/k/v 32 x 4 (`Shape.splits`)
COUNTERS = 5  # per layer: o partials, h (post-attention), act, down partials, h (next input)
TIMEOUT_S = 240
CAPACITY, FILLED, PROMPT, GROUP = 384, 250, 96, 8  # cache slots, slots filled before the step, shared prompt
# (stages, the weights wait for each phase's dependency, launched with PDL after the attention)
VARIANTS = ((6, 0, 0), (6, 0, 1), (6, 1, 0))


def label(variant) -> str:
    stages, wait, pdl = variant
    return f"layer stream s{stages} weights {'wait' if wait else 'ahead'}{', PDL' if pdl else ''}"


if gluon is not None:

    from gluon_stream_parts import (
        _add_norm,
        _arrive,
        _gate_up,
        _load_gate_up,
        _load_tiles,
        _product,
        _ring,
        _slice,
        _wait_for_all,
    )

    from trainer.gluon_products import _grid_control

    @gluon.jit
    def _weights(o_desc, gu_desc, r_desc, down_desc, qkv_desc, g_bufs, u_bufs, gr_bufs, ur_bufs, w_ready, empty,
                 count_ptr, failed_ptr, p, H: gl.constexpr, I: gl.constexpr, QKV_N: gl.constexpr, P: gl.constexpr,
                 NEXT: gl.constexpr, WAIT: gl.constexpr):
        # One warp: every phase's weight tiles in the order the multiplies take them. With WAIT,
        # each phase's only after the dependency its inputs wait for (the stream restarting).
        block_k: gl.constexpr = g_bufs.shape[2]
        tile: gl.constexpr = g_bufs.shape[1]
        o_tile, _, o_first, o_steps = _slice(p, H // block_k, H // tile, P // (H // tile))
        n = _load_tiles(o_desc, o_tile * tile, o_first, o_steps, 0, g_bufs, w_ready, empty)
        if WAIT:  # h: the post-attention norm
            _wait_for_all(count_ptr + 1, failed_ptr, P)
        n = _load_gate_up(gu_desc, r_desc, 0, p * I // P, 0, H // block_k, n, g_bufs, u_bufs, gr_bufs, ur_bufs,
                          w_ready, empty, I)
        if WAIT:  # act
            _wait_for_all(count_ptr + 2, failed_ptr, P)
        d_tile, _, d_first, d_steps = _slice(p, I // block_k, H // tile, P // (H // tile))
        n = _load_tiles(down_desc, d_tile * tile, d_first, d_steps, n, g_bufs, w_ready, empty)
        if NEXT:
            if WAIT:  # h: the next layer's input norm
                _wait_for_all(count_ptr + 4, failed_ptr, P)
            q_tile, _, q_first, q_steps = _slice(p, H // block_k, QKV_N // tile, P // (QKV_N // tile))
            n = _load_tiles(qkv_desc, q_tile * tile, q_first, q_steps, n, g_bufs, w_ready, empty)

    @gluon.jit
    def _inputs(attn_desc, h_desc, act_desc, x_bufs, x_ready, empty, count_ptr, failed_ptr, p, H: gl.constexpr,
                I: gl.constexpr, QKV_N: gl.constexpr, P: gl.constexpr, TILE: gl.constexpr, NEXT: gl.constexpr,
                PDL: gl.constexpr):
        # One warp: each phase's input tiles once its dependency has been met. The attention output
        # was written by the kernel before this launch: launched with PDL, this warp waits for that
        # kernel (griddepcontrol.wait) before its first load, while the weight loader does not.
        block_k: gl.constexpr = x_bufs.shape[2]
        if PDL:
            _grid_control("griddepcontrol.wait")
        _, _, o_first, o_steps = _slice(p, H // block_k, H // TILE, P // (H // TILE))
        n = _load_tiles(attn_desc, 0, o_first, o_steps, 0, x_bufs, x_ready, empty)
        _wait_for_all(count_ptr + 1, failed_ptr, P)
        n = _load_tiles(h_desc, 0, 0, H // block_k, n, x_bufs, x_ready, empty)
        _, _, d_first, d_steps = _slice(p, I // block_k, H // TILE, P // (H // TILE))
        if d_steps > 0:
            _wait_for_all(count_ptr + 2, failed_ptr, P)
        n = _load_tiles(act_desc, 0, d_first, d_steps, n, x_bufs, x_ready, empty)
        if NEXT:
            _, _, q_first, q_steps = _slice(p, H // block_k, QKV_N // TILE, P // (QKV_N // TILE))
            if q_steps > 0:
                _wait_for_all(count_ptr + 4, failed_ptr, P)
            n = _load_tiles(h_desc, 0, q_first, q_steps, n, x_bufs, x_ready, empty)

    @gluon.jit
    def _multiply(x_bufs, g_bufs, u_bufs, gr_bufs, ur_bufs, x_ready, w_ready, empty, o_part, d_part, qkv_part, act_ptr,
                  x_ptr, h_ptr, post_norm_ptr, next_norm_ptr, count_ptr, failed_ptr, p, rows, eps, H: gl.constexpr,
                  I: gl.constexpr, QKV_N: gl.constexpr, P: gl.constexpr, NEXT: gl.constexpr,
                  NORM_BLOCK: gl.constexpr, num_warps: gl.constexpr):
        block_k: gl.constexpr = x_bufs.shape[2]
        tile: gl.constexpr = g_bufs.shape[1]
        o_splits: gl.constexpr = P // (H // tile)
        # (1) o
        o_tile, o_split, _, o_steps = _slice(p, H // block_k, H // tile, o_splits)
        n = _product(x_bufs, g_bufs, x_ready, w_ready, empty, o_steps, 0, o_part, o_split, o_tile * tile, rows, H,
                     num_warps)
        _arrive(count_ptr)
        # (2) residual + post-attention norm
        _wait_for_all(count_ptr, failed_ptr, P)
        _add_norm(o_part, x_ptr, post_norm_ptr, h_ptr, p, rows, eps, H, o_splits, NORM_BLOCK, num_warps)
        _arrive(count_ptr + 1)
        # (3) gate/up with SiLU x up
        n = _gate_up(x_bufs, g_bufs, u_bufs, gr_bufs, ur_bufs, x_ready, w_ready, empty, n, act_ptr, p * I // P,
                     (p + 1) * I // P, rows, H, I, num_warps)
        _arrive(count_ptr + 2)
        # (4) down
        d_tile, d_split, _, d_steps = _slice(p, I // block_k, H // tile, o_splits)
        n = _product(x_bufs, g_bufs, x_ready, w_ready, empty, d_steps, n, d_part, d_split, d_tile * tile, rows, H,
                     num_warps)
        _arrive(count_ptr + 3)
        # (5) residual + the next input norm (or the final one)
        _wait_for_all(count_ptr + 3, failed_ptr, P)
        _add_norm(d_part, x_ptr, next_norm_ptr, h_ptr, p, rows, eps, H, o_splits, NORM_BLOCK, num_warps)
        _arrive(count_ptr + 4)
        # (6) the next layer's q/k/v, partials for its attention
        if NEXT:
            q_tile, q_split, _, q_steps = _slice(p, H // block_k, QKV_N // tile, P // (QKV_N // tile))
            n = _product(x_bufs, g_bufs, x_ready, w_ready, empty, q_steps, n, qkv_part, q_split, q_tile * tile, rows,
                         QKV_N, num_warps)

    @gluon.jit
    def _layer(attn_desc, h_desc, act_desc, o_desc, gu_desc, r_desc, down_desc, qkv_desc, o_part, d_part, qkv_part,
               act_ptr, x_ptr, h_ptr, post_norm_ptr, next_norm_ptr, count_ptr, failed_ptr, rows, eps,
               H: gl.constexpr, I: gl.constexpr, QKV_N: gl.constexpr, P: gl.constexpr, STAGES: gl.constexpr,
               TILE: gl.constexpr, NEXT: gl.constexpr, WAIT: gl.constexpr, NORM_BLOCK: gl.constexpr,
               num_warps: gl.constexpr, PDL: gl.constexpr = False):
        p = gl.program_id(0)
        x_bufs, g_bufs, u_bufs, gr_bufs, ur_bufs, x_ready, w_ready, empty = _ring(h_desc, gu_desc, r_desc, STAGES)
        gl.warp_specialize([
            (_multiply, (x_bufs, g_bufs, u_bufs, gr_bufs, ur_bufs, x_ready, w_ready, empty, o_part, d_part, qkv_part,
                         act_ptr, x_ptr, h_ptr, post_norm_ptr, next_norm_ptr, count_ptr, failed_ptr, p, rows, eps, H, I,
                         QKV_N, P, NEXT, NORM_BLOCK, num_warps)),
            (_weights, (o_desc, gu_desc, r_desc, down_desc, qkv_desc, g_bufs, u_bufs, gr_bufs, ur_bufs, w_ready, empty,
                        count_ptr, failed_ptr, p, H, I, QKV_N, P, NEXT, WAIT)),
            (_inputs, (attn_desc, h_desc, act_desc, x_bufs, x_ready, empty, count_ptr, failed_ptr, p, H, I, QKV_N, P,
                       TILE, NEXT, PDL)),
        ], [1, 1], [24, 24])


@dataclass(frozen=True)
class Shape:
    """The model's widths, the batch, the cache and the programs (Qwen2.5-1.5B at batch 128 on 132
    by default; `--cpu-check` uses a tiny one)."""

    rows: int = ROWS
    hidden: int = H
    intermediate: int = I
    heads: int = HEADS
    kv_heads: int = KV_HEADS
    head_dim: int = D
    layers: int = LAYERS
    vocab: int = VOCAB
    programs: int = PROGRAMS
    capacity: int = CAPACITY
    filled: int = FILLED
    prompt: int = PROMPT
    group: int = GROUP

    @property
    def qkv_n(self) -> int:
        return (self.heads + 2 * self.kv_heads) * self.head_dim

    def splits(self, n: int) -> int:
        """K slices of a product with n output columns: as many as fill the programs."""
        return self.programs // (n // TILE)

    def why_not(self) -> str | None:
        """Why the kernel's split does not take these widths, or None: the attention output as wide
        as the hidden state (o's K is the hidden width in the kernel), every product's K slices at
        least one step, every program's gate/up share a 64-column tile plus at most REST."""
        if self.heads * self.head_dim != self.hidden:
            return f"{self.heads} heads x {self.head_dim} is not the hidden width {self.hidden}"
        for name, n, k in (("o", self.hidden, self.hidden), ("down", self.hidden, self.intermediate),
                           ("q/k/v", self.qkv_n, self.hidden)):
            if n % TILE or k % BLOCK_K or not 1 <= self.splits(n) <= k // BLOCK_K:
                return f"{name} ({n} x {k}) does not split in {TILE}-column tiles on {self.programs} programs"
        shares = [(p + 1) * self.intermediate // self.programs - p * self.intermediate // self.programs
                  for p in range(self.programs)]
        if min(shares) < TILE or max(shares) > TILE + REST or self.rows > ROWS:
            return f"gate/up shares {min(shares)}-{max(shares)} columns (64 to {TILE + REST}), rows {self.rows}"
        return None


class LayerStream:
    """The layer kernel's buffers (fixed addresses: a CUDA graph replays them) and its launch."""

    def __init__(self, device, dtype=torch.bfloat16, shape: Shape = Shape(), eps: float = 1e-6):
        e = {"device": device}
        self.shape, self.eps = shape, eps
        rows, hidden = shape.rows, shape.hidden
        self.x = torch.empty(rows, hidden, dtype=dtype, **e)
        self.h = torch.empty(rows, hidden, dtype=dtype, **e)
        self.act = torch.empty(rows, shape.intermediate, dtype=dtype, **e)
        self.o_part = torch.empty(shape.splits(hidden), rows, hidden, dtype=torch.float32, **e)
        self.d_part = torch.empty(shape.splits(hidden), rows, hidden, dtype=torch.float32, **e)
        self.qkv_part = torch.empty(shape.splits(shape.qkv_n), rows, shape.qkv_n, dtype=torch.float32, **e)
        self.count = torch.zeros(COUNTERS * shape.layers + 1, dtype=torch.int32, **e)

    def args(self, index: int, attn, layer, following, post_norm, next_norm, variant) -> tuple[tuple, dict]:
        """Layer `index`'s kernel arguments: its attention output, its weights (`layer`: a
        qwen2_decode.LayerWeights), the next layer's (None after the last), the norms."""
        import triton

        why = self.shape.why_not()
        if why:
            raise ValueError(f"the layer kernel does not take {self.shape}: {why}")
        stages, wait, pdl = variant
        qkv = following.qkv if following is not None else layer.o  # (not read without NEXT)
        descs = (*(tma_desc(t, [ROWS, BLOCK_K]) for t in (attn, self.h, self.act)),
                 *(tma_desc(t, [TILE, BLOCK_K]) for t in (layer.o, layer.gate_up)), tma_desc(layer.gate_up, [REST, BLOCK_K]),
                 *(tma_desc(t, [TILE, BLOCK_K]) for t in (layer.down, qkv)))
        args = (*descs, self.o_part, self.d_part, self.qkv_part, self.act, self.x, self.h, post_norm, next_norm,
                self.count[COUNTERS * index:], self.count[-1:], self.shape.rows, self.eps)
        consts = {"H": self.shape.hidden, "I": self.shape.intermediate, "QKV_N": self.shape.qkv_n,
                  "P": self.shape.programs, "STAGES": stages, "TILE": TILE, "NEXT": following is not None,
                  "WAIT": wait, "NORM_BLOCK": triton.next_power_of_2(self.shape.hidden), "num_warps": 4, "PDL": bool(pdl)}
        return args, consts

    def launch(self, *args, **kwargs) -> None:
        args, consts = self.args(*args, **kwargs)
        _layer[(self.shape.programs,)](*args, **consts, launch_cooperative_grid=True, launch_pdl=consts["PDL"])

    def reference(self, index: int, attn, layer, following, post_norm, next_norm, variant) -> None:
        """What `launch` computes, in torch: the same K slices summed in the same order, the same
        roundings (`--cpu-check` runs the step with this in the kernel's place)."""
        dtype = self.x.dtype

        def partials(a, w, out):
            k = w.shape[1]
            steps, splits = k // BLOCK_K, out.shape[0]
            for q in range(splits):
                lo, hi = q * steps // splits * BLOCK_K, (q + 1) * steps // splits * BLOCK_K
                out[q] = a[:, lo:hi].float() @ w[:, lo:hi].float().T
            return out

        def add_norm(part, weight):  # trainer/triton_products.add_norm_row's arithmetic
            y = part[0].clone()
            for q in range(1, part.shape[0]):
                y += part[q]
            x = (self.x.float() + y.to(dtype).float()).to(dtype)
            self.x.copy_(x)
            rstd = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
            self.h.copy_((weight.float() * (x.float() * rstd).to(dtype).float()).to(dtype))

        add_norm(partials(attn, layer.o, self.o_part), post_norm)
        gate, up = (self.h.float() @ layer.gate_up.float().T).split(self.shape.intermediate, dim=1)
        g = gate.to(dtype).float()  # trainer/triton_products.swiglu_tile's roundings
        self.act.copy_(((g / (1 + torch.exp(-g))).to(dtype).float() * up.to(dtype).float()).to(dtype))
        add_norm(partials(self.act, layer.down, self.d_part), next_norm)
        if following is not None:
            partials(self.h, following.qkv, self.qkv_part)


def stream_step(weights, state, kv_len: int, work: LayerStream, variant, launch=None) -> torch.Tensor:
    """qwen2_decode.decode_step's contract: feed state.tokens, return the logits [B, vocab],
    advance the slot and positions; the layers as rope_attention + the layer kernel (`launch`:
    work.launch, or work.reference)."""
    import torch.nn.functional as F

    from trainer.fused_decode import rope_attention, step_bias
    from trainer.qwen2_decode import rms_norm

    launch = launch or work.launch
    dims = weights.dims
    work.count[:-1].zero_()  # (the last: the spin limit's flag, kept until read)
    x = F.embedding(state.tokens, weights.embed)
    bias = step_bias(state, kv_len, x.dtype)
    work.x.copy_(x)
    first = weights.layers[0]
    qkv = F.linear(rms_norm(x, first.input_norm, dims.eps), first.qkv, first.qkv_bias)
    last = len(weights.layers) - 1
    for index, layer in enumerate(weights.layers):
        # (with PDL the attention kernel itself waits for the layer kernel before it, as in the
        # chained step, and lets the next layer kernel start as its programs begin)
        attn = rope_attention(dims, qkv, state, state.kv_cache[index], bias, kv_len,
                              None if index == 0 else layer.qkv_bias, pdl=bool(variant[2]))
        following = weights.layers[index + 1] if index < last else None
        launch(index, attn, layer, following, layer.post_norm,
               following.input_norm if following is not None else weights.norm, variant)
        qkv = work.qkv_part
    logits = F.linear(work.h, weights.lm_head)
    state.positions.add_(1)
    state.write_index.add_(1)
    return logits


def random_model(device, shape: Shape = Shape(), dtype=torch.bfloat16, seed: int = 0):
    """Decode weights and a decode state for `shape`, random: weights scaled by their fan-in, norm
    weights near 1, q/k/v biases; rows in groups sharing a prompt (each row its own copy, as the
    prefill leaves them), left padding in some groups, `filled` slots filled."""
    from trainer.qwen2_decode import DecodeState, DecodeWeights, LayerWeights, ModelDims

    gen = torch.Generator(device=device).manual_seed(seed)

    def rand(*size, scale=1.0):
        return (torch.randn(*size, device=device, generator=gen) * scale).to(dtype)

    hidden, inter, qkv_n = shape.hidden, shape.intermediate, shape.qkv_n
    dims = ModelDims(layers=shape.layers, hidden=hidden, heads=shape.heads, kv_heads=shape.kv_heads,
                     head_dim=shape.head_dim, intermediate=inter, vocab=shape.vocab, eps=1e-6, rope_theta=1e6)
    layers = [LayerWeights(input_norm=1 + 0.1 * rand(hidden), qkv=rand(qkv_n, hidden, scale=hidden ** -0.5),
                           qkv_bias=0.1 * rand(qkv_n), o=rand(hidden, shape.heads * shape.head_dim, scale=hidden ** -0.5),
                           post_norm=1 + 0.1 * rand(hidden), gate_up=rand(2 * inter, hidden, scale=hidden ** -0.5),
                           down=rand(hidden, inter, scale=inter ** -0.5))
              for _ in range(shape.layers)]
    weights = DecodeWeights(dims=dims, embed=rand(shape.vocab, hidden), layers=layers, norm=1 + 0.1 * rand(hidden),
                            lm_head=rand(shape.vocab, hidden, scale=hidden ** -0.5))
    rows, capacity, filled, prompt = shape.rows, shape.capacity, shape.filled, shape.prompt
    state = DecodeState.allocate(dims, rows, capacity, device, dtype)
    state.kv_cache.copy_(rand(*state.kv_cache.shape))
    leaders = torch.arange(rows, device=device) // shape.group * shape.group
    state.kv_cache[:, :, :, :prompt] = state.kv_cache[:, leaders, :, :prompt]
    state.valid[:, :filled] = True
    pad = torch.randint(0, prompt // 2, (rows // shape.group,), device=device,
                        generator=gen).repeat_interleave(shape.group)
    state.valid[torch.arange(capacity, device=device)[None, :] < pad[:, None]] = False
    state.positions.copy_(filled - pad)
    state.write_index.fill_(filled)
    state.leaders.copy_(leaders)
    state.shared.fill_(prompt)
    state.tokens.copy_(torch.randint(0, shape.vocab, (rows,), device=device, generator=gen))
    return weights, state


CPU_SHAPE = Shape(rows=8, hidden=256, intermediate=512, heads=8, kv_heads=2, head_dim=32, layers=3, vocab=100,
                  programs=12, capacity=128, filled=70, prompt=20, group=4)


def cpu_check() -> int:
    """The step around the kernel on a CPU (Triton's interpreter for rope_attention, float32, a
    tiny model), with `LayerStream.reference` in the kernel's place, against the plain step:
    the layer order, the q/k/v partials handed to the next attention with their bias, the
    norms, the slices' sums. 1 if the logits or the cache differ beyond float32 rounding."""
    from trainer.qwen2_decode import Attention, DecodeState, decode_step

    weights, start = random_model("cpu", CPU_SHAPE, torch.float32)

    def fresh() -> DecodeState:
        return DecodeState(**{k: getattr(start, k).clone() for k in start.__dataclass_fields__})

    plain, ours = fresh(), fresh()
    want = decode_step(weights, plain, CPU_SHAPE.capacity, None, Attention.SDPA)
    work = LayerStream("cpu", torch.float32, CPU_SHAPE)
    got = stream_step(weights, ours, CPU_SHAPE.capacity, work, VARIANTS[0], launch=work.reference)
    logits = float((got - want).norm() / want.norm())
    cache = float((ours.kv_cache - plain.kv_cache).norm() / plain.kv_cache.norm())
    same = bool(torch.equal(ours.positions, plain.positions) and torch.equal(ours.write_index, plain.write_index))
    print(f"cpu check ({CPU_SHAPE}): logits rel error {logits:.2e}, cache rel error {cache:.2e}, "
          f"positions equal {same}", flush=True)
    return 0 if logits < 1e-4 and cache < 1e-5 and same else 1


def compile_only() -> int:
    """The layer kernel of every variant, with and without the next q/k/v, compiled for sm_90a
    without a GPU (`compile_all`)."""
    from trainer.gluon_products import compile_for_hopper
    from trainer.qwen2_decode import LayerWeights

    e = {"dtype": torch.bfloat16}
    layer = LayerWeights(input_norm=torch.empty(H, **e), qkv=torch.empty(QKV_N, H, **e), qkv_bias=None,
                         o=torch.empty(H, H, **e), post_norm=torch.empty(H, **e), gate_up=torch.empty(2 * I, H, **e),
                         down=torch.empty(H, I, **e))
    work, attn = LayerStream("cpu"), torch.empty(ROWS, H, **e)

    def compiled(variant, following):
        args, consts = work.args(0, attn, layer, following, layer.post_norm, layer.input_norm, variant)
        return compile_for_hopper(_layer, *args, **consts)

    return compile_all((f"{label(v)}{'' if f is not None else ', last layer'}", lambda v=v, f=f: compiled(v, f))
                       for v in VARIANTS for f in (layer, None))


def one(index: int) -> None:
    """Variant `index`, the plain step and the fused step with the MLP block on the same random model
    and state, in this process: a JSON line after the baselines, the whole row after the variant."""
    import torch.nn.functional as F  # noqa: F401 - (stream_step's)

    from trainer.decode_graphs import prefetched_o
    from trainer.fused_decode import element_fns, fused_decode_step
    from trainer.mlp_block import BlockShape
    from trainer.qwen2_decode import Attention, DecodeState, decode_step
    from trainer.triton_products import DecodeProducts

    variant = VARIANTS[index]
    dev = torch.device("cuda")
    programs = torch.cuda.get_device_properties(dev).multi_processor_count
    row = {"variant": label(variant), "stages": variant[0], "weights_wait": variant[1], "pdl": variant[2],
           "device": torch.cuda.get_device_name(), "sms": programs, "ms": {}}
    if programs != PROGRAMS:
        row["skipped"] = f"{programs} multiprocessors; the split is {PROGRAMS} programs'"
        print_row(row)
        return
    weights, start = random_model(dev)
    kv_len = 256 if FILLED < 256 else CAPACITY

    def fresh() -> DecodeState:
        s = DecodeState(**{k: getattr(start, k).clone() for k in start.__dataclass_fields__})
        return s

    plain_state = fresh()
    want = decode_step(weights, plain_state, kv_len, None, Attention.SDPA).float()
    products = DecodeProducts(mlp=BlockShape.for_gpu(dev))
    fns = element_fns(weights.dims, compiled=True)
    steps = {"plain": lambda s: decode_step(weights, s, kv_len, None, Attention.SDPA),
             "fused + MLP block": lambda s: fused_decode_step(weights, s, kv_len, fns, products)}
    # the engine's kept step on an H200 since call 63: o as the Gluon kernel, its two fastest shapes
    for name, with_o in prefetched_o(weights, products, ROWS).items():
        steps[name] = lambda s, with_o=with_o: fused_decode_step(weights, s, kv_len, fns, with_o)

    def check(name, step) -> None:
        s = fresh()
        got = step(s).float()
        torch.cuda.synchronize()
        row[f"{name} logits_rel_error"] = float((got - want).norm() / want.norm())
        slot = FILLED
        row[f"{name} new_slot_rel_error"] = float(
            (s.kv_cache[:, :, :, slot].float() - plain_state.kv_cache[:, :, :, slot].float()).norm()
            / plain_state.kv_cache[:, :, :, slot].float().norm())
        row[f"{name} positions_equal"] = bool(torch.equal(s.positions, plain_state.positions)
                                              and torch.equal(s.write_index, plain_state.write_index))

    def time_it(name, step) -> None:
        s = fresh()

        def replay():  # the same slot and positions every replay
            s.write_index.copy_(start.write_index)
            s.positions.copy_(start.positions)
            step(s)
        time_into(row, name, replay, ratios=(("vs_fused_mlp_block", "fused + MLP block"), ("vs_fastest_fused", "fused*")))

    for name, step in steps.items():
        check(name, step)
        time_it(name, step)
    print_row(row)  # the baselines, in case the variant never returns

    work = LayerStream(dev)
    # one layer: the kernel against its torch reference from the same inputs, buffer by buffer
    ref = LayerStream(dev)
    gen = torch.Generator(device=dev).manual_seed(1)
    attn = torch.randn(ROWS, H, device=dev, generator=gen).to(torch.bfloat16)
    x0 = torch.randn(ROWS, H, device=dev, generator=gen).to(torch.bfloat16)
    first, second = weights.layers[0], weights.layers[1]
    for w, run in ((work, work.launch), (ref, ref.reference)):
        w.x.copy_(x0)
        w.count[:-1].zero_()
        run(0, attn, first, second, first.post_norm, second.input_norm, variant)
    torch.cuda.synchronize()
    for name in ("o_part", "x", "h", "act", "d_part", "qkv_part"):
        got, want_ = getattr(work, name).float(), getattr(ref, name).float()
        row[f"one layer {name} rel_error"] = float((got - want_).norm() / want_.norm())
    check("variant", lambda s: stream_step(weights, s, kv_len, work, variant))
    row["barrier_gave_up"] = bool(work.count[-1].item())
    time_it("variant", lambda s: stream_step(weights, s, kv_len, work, variant))
    row["barrier_gave_up"] |= bool(work.count[-1].item())
    time_it("fused + MLP block again", steps["fused + MLP block"])
    print_row(row)


def _line(row: dict) -> str:
    return row_line(row, lambda key: key.endswith(("rel_error", "equal", "gave_up")))


def _cpu_check_option(parser):
    parser.add_argument("--cpu-check", action="store_true",
                        help="the step around the kernel, with its torch reference, on a CPU (Triton's interpreter)")

    def answer(args):
        if not args.cpu_check:
            return None
        if os.environ.get("TRITON_INTERPRET") != "1":  # (read when Triton is first imported)
            return subprocess.run([sys.executable, __file__, "--cpu-check"],
                                  env={**os.environ, "TRITON_INTERPRET": "1"}, check=False).returncode
        return cpu_check()
    return answer


def main(argv: list[str] | None = None) -> int:
    return bench_main(argv, __doc__, __file__, compile_only, one, VARIANTS, label, TIMEOUT_S, _line,
                      {"rows": ROWS, "hidden": H, "intermediate": I, "layers": LAYERS, "programs": PROGRAMS,
                       "capacity": CAPACITY, "filled": FILLED}, extra=_cpu_check_option)


if __name__ == "__main__":
    sys.exit(main())
