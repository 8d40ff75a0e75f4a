"""The decode step as two kernels a layer: the attention, then everything after it up to the next
layer's q/k/v in one warp-specialized Gluon launch whose weights stream through its five waits.

    from trainer.gluon_stream import StreamVariant
    products = DecodeProducts(stream=StreamVariant(pdl=True))
    logits = fused_decode_step(weights, state, kv_len, fns, products)   # runs fused_decode.stream_step

The fused step with the MLP block (trainer/fused_decode.py) runs five kernels a layer: q/k/v,
the attention (`rope_attention`), o, residual + RMSNorm, and the MLP block with its two barriers,
and every one of them and every barrier starts its weight stream afresh. Here a layer is

    rope_attention(q/k/v partials)  ->  layer kernel: o, norm, gate/up, down, norm, next q/k/v

and the layer kernel, on one program a multiprocessor (a cooperative launch), runs in phases:

1. o: column tiles x K slices of the attention output times o's weight -> float32 partials;
2. residual + post-attention RMSNorm of row p (program p < rows), in place;
3. gate/up with SiLU x up, program p's columns of the intermediate (as the MLP block);
4. down: column tiles x K slices -> float32 partials;
5. residual + the next layer's input RMSNorm (the final norm after the last layer), in place;
6. the next layer's q/k/v: column tiles x K slices -> float32 partials, which the next layer's
   `rope_attention` adds up with the bias (it takes split products' partials already).

Phases 2-6 each wait for every program to have finished the phase before: an arrival counter per
(layer, phase), arrivals by atomic add with release, waits by acquiring loads and a proxy fence,
and a spin limit that sets the `failed` flag instead of hanging. A weight loader warp streams
every phase's weight tiles into a ring of shared-memory stages and waits only for free stages (or,
with `StreamVariant.wait`, for each phase's dependency too); an activation loader warp loads each
phase's input tiles once its wait has passed; the multiplying warp group (4 warps) runs the
products and the norms. The ring, the loaders, the products and the counters are
trainer/gluon_ring.py's (its docstring describes the protocol, which bench/gluon_stream_model.py
runs with random interleavings on a CPU).

With `StreamVariant.pdl` the layer kernel is launched with programmatic dependent launch after the
attention kernel (itself launched so, as in the chained step): a program starts as soon as the
attention on its multiprocessor is done and streams its o and gate/up weights while others still
attend; only the input loader waits for the attention grid (griddepcontrol.wait), and everything
the kernel writes comes after that wait, the q/k/v partials the attention was reading included.
Its weight loader lets the next layer's attention launch at once (griddepcontrol.launch_dependents),
as the chained step's kernels do: that kernel waits for this whole grid before it touches memory,
so only its launch and its programs' start overlap this grid's tail.

Layer 0's q/k/v is cuBLAS's (bias added); the head is cuBLAS's, as in the fused step.

On an H200 (call 81) the kernel is correct and its step 4.5% slower than the fused step the engine
keeps (1.895 against 1.813 ms): a device-wide wait costs 2.8-4.2 us where a launch boundary in the
graph costs ~1.3 (docs/benchmarks.md). Part of what a wait costs is the plain stores before it: 2
bytes an element from the products' layout, every one to land before the arrival. With
`StreamVariant.tma_store` the products' tiles and SiLU x up go out by TMA stores from shared
memory instead (gluon_ring._product_tma, _gate_up_tma), each waited for before the arrival; the
same form took the gate/up stream bench through 6 waits a layer 13% faster on an H100 (call 98),
and this kernel's step 5.5% faster, level with the fused step there (2.2007 against 2.1880 ms,
call 100); in the engine on an H100 it was kept (call 101) and the step was no faster. The
decode engine times the stream steps only where RLTUI_DECODE_STREAM=1 asks
(`decode_graphs.stream_variants`), after the fused step's check (`fused_decode.fused_checked`,
which also reads the `failed` flag), and bench/gpu_gluon_layer_stream.py compares one layer of
it with `LayerStream.reference` buffer by buffer. Triton's interpreter does not run Gluon: the
tests compile the kernel for sm_90a and run the step around it on a CPU with
`LayerStream.reference` (the same K slices, sums and roundings in torch;
`StreamVariant.reference`) in the kernel's place, against the plain step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from trainer.gluon_products import BLOCK_K, BLOCK_M, gl, gluon, tma_desc
from trainer.qwen2_decode import ModelDims
from trainer.triton_base import device_key

TILE, REST = 64, 8  # a weight tile's rows; a gate/up remainder box's rows (a share is 64 to 72 columns)
COUNTERS = 5  # per layer: o partials, h (post-attention), act, down partials, h (next input)
# Where a partition of a program stands, by the code `_mark` records with StreamVariant.trace: the
# part of the layer it works on, or the counter (0-4, as COUNTERS) it waits for (LayerStream.trace)
MARKS = {1: "o", 2: "waits for counter 0 (o partials)", 3: "waits for counter 1 (h)", 4: "gate/up",
         5: "waits for counter 2 (act)", 6: "down", 7: "waits for counter 3 (down partials)",
         8: "waits for counter 4 (the next h)", 9: "next q/k/v", 10: "waits for the attention grid", 11: "done"}
PARTITIONS = ("multiply", "weights", "inputs")

if gluon is not None:
    from triton.experimental.gluon.language.nvidia.hopper import tma

    from trainer.gluon_products import _grid_control
    from trainer.gluon_ring import (
        _add_norm,
        _arrive,
        _gate_up,
        _gate_up_tma,
        _load_gate_up,
        _load_tiles,
        _product,
        _product_tma,
        _ring,
        _share,
        _slice,
        _wait_for_all,
    )

    @gluon.jit
    def _mark(failed_ptr, p, who: gl.constexpr, where: gl.constexpr, n, TRACE: gl.constexpr):
        # With TRACE: partition `who` (0 multiply, 1 weights, 2 inputs) of program p records that it
        # is at `where` (MARKS) at ring step n, in the slots after the failed flag (LayerStream.trace;
        # fused_decode.stream_step clears them before each layer when traced)
        if TRACE:
            gl.store(failed_ptr + 1 + p * 3 + who, where * 10000 + gl.to_tensor(n))

    @gluon.jit
    def _weights(o_desc, gu_desc, r_desc, down_desc, qkv_desc, g_bufs, u_bufs, gr_bufs, ur_bufs, w_ready, empty,
                 count_ptr, failed_ptr, p, H: gl.constexpr, I: gl.constexpr, QKV_N: gl.constexpr, P: gl.constexpr,
                 NEXT: gl.constexpr, WAIT: gl.constexpr, PDL: gl.constexpr, TRACE: gl.constexpr,
                 GROUP: gl.constexpr):
        # One warp: every phase's weight tiles in the order the multiplies take them. With WAIT,
        # each phase's only after the dependency its inputs wait for (the stream restarting).
        # With PDL, first let the next layer's attention launch: it waits for this whole grid
        # (griddepcontrol.wait) before it reads or writes anything, and its programs take the
        # multiprocessors this grid's leave.
        if PDL:
            _grid_control("griddepcontrol.launch_dependents")
        block_k: gl.constexpr = g_bufs.shape[2]
        tile: gl.constexpr = g_bufs.shape[1]
        o_tile, _, o_first, o_steps = _slice(p, H // block_k, H // tile, P // (H // tile))
        _mark(failed_ptr, p, 1, 1, 0, TRACE)
        n = _load_tiles(o_desc, o_tile * tile, o_first, o_steps, 0, g_bufs, w_ready, empty)
        if WAIT:  # h: the post-attention norm
            _mark(failed_ptr, p, 1, 3, n, TRACE)
            _wait_for_all(count_ptr + 1, failed_ptr, P)
        _mark(failed_ptr, p, 1, 4, n, TRACE)
        lo, _ = _share(p, I, P, GROUP)
        n = _load_gate_up(gu_desc, r_desc, 0, lo, 0, H // block_k, n, g_bufs, u_bufs, gr_bufs, ur_bufs, w_ready, empty,
                          I)
        if WAIT:  # act
            _mark(failed_ptr, p, 1, 5, n, TRACE)
            _wait_for_all(count_ptr + 2, failed_ptr, P)
        d_tile, _, d_first, d_steps = _slice(p, I // block_k, H // tile, P // (H // tile))
        _mark(failed_ptr, p, 1, 6, n, TRACE)
        n = _load_tiles(down_desc, d_tile * tile, d_first, d_steps, n, g_bufs, w_ready, empty)
        if NEXT:
            if WAIT:  # h: the next layer's input norm
                _mark(failed_ptr, p, 1, 8, n, TRACE)
                _wait_for_all(count_ptr + 4, failed_ptr, P)
            q_tile, _, q_first, q_steps = _slice(p, H // block_k, QKV_N // tile, P // (QKV_N // tile))
            _mark(failed_ptr, p, 1, 9, n, TRACE)
            n = _load_tiles(qkv_desc, q_tile * tile, q_first, q_steps, n, g_bufs, w_ready, empty)
        _mark(failed_ptr, p, 1, 11, n, TRACE)

    @gluon.jit
    def _inputs(attn_desc, h_desc, act_desc, x_bufs, x_ready, empty, count_ptr, failed_ptr, p, H: gl.constexpr,
                I: gl.constexpr, QKV_N: gl.constexpr, P: gl.constexpr, TILE: gl.constexpr, NEXT: gl.constexpr,
                PDL: gl.constexpr, TRACE: gl.constexpr):
        # One warp: each phase's input tiles once its dependency has been met. The attention output
        # was written by the kernel before this launch: launched with PDL, this warp waits for that
        # kernel (griddepcontrol.wait) before its first load, while the weight loader does not.
        block_k: gl.constexpr = x_bufs.shape[2]
        if PDL:
            _mark(failed_ptr, p, 2, 10, 0, TRACE)
            _grid_control("griddepcontrol.wait")
        _, _, o_first, o_steps = _slice(p, H // block_k, H // TILE, P // (H // TILE))
        _mark(failed_ptr, p, 2, 1, 0, TRACE)
        n = _load_tiles(attn_desc, 0, o_first, o_steps, 0, x_bufs, x_ready, empty)
        _mark(failed_ptr, p, 2, 3, n, TRACE)
        _wait_for_all(count_ptr + 1, failed_ptr, P)
        _mark(failed_ptr, p, 2, 4, n, TRACE)
        n = _load_tiles(h_desc, 0, 0, H // block_k, n, x_bufs, x_ready, empty)
        _, _, d_first, d_steps = _slice(p, I // block_k, H // TILE, P // (H // TILE))
        if d_steps > 0:
            _mark(failed_ptr, p, 2, 5, n, TRACE)
            _wait_for_all(count_ptr + 2, failed_ptr, P)
        _mark(failed_ptr, p, 2, 6, n, TRACE)
        n = _load_tiles(act_desc, 0, d_first, d_steps, n, x_bufs, x_ready, empty)
        if NEXT:
            _, _, q_first, q_steps = _slice(p, H // block_k, QKV_N // TILE, P // (QKV_N // TILE))
            if q_steps > 0:
                _mark(failed_ptr, p, 2, 8, n, TRACE)
                _wait_for_all(count_ptr + 4, failed_ptr, P)
            _mark(failed_ptr, p, 2, 9, n, TRACE)
            n = _load_tiles(h_desc, 0, q_first, q_steps, n, x_bufs, x_ready, empty)
        _mark(failed_ptr, p, 2, 11, n, TRACE)

    @gluon.jit
    def _multiply(x_bufs, g_bufs, u_bufs, gr_bufs, ur_bufs, x_ready, w_ready, empty, o_part, d_part, qkv_part, act_ptr,
                  x_ptr, h_ptr, post_norm_ptr, next_norm_ptr, count_ptr, failed_ptr, p, rows, eps, o_out, d_out, q_out,
                  a_out, part_smem, act_smem, H: gl.constexpr, I: gl.constexpr, QKV_N: gl.constexpr, P: gl.constexpr,
                  NEXT: gl.constexpr, NORM_BLOCK: gl.constexpr, num_warps: gl.constexpr, TRACE: gl.constexpr,
                  TMA: gl.constexpr, GROUP: gl.constexpr):
        # TMA: each product's tile and SiLU x up's written by TMA stores (gluon_ring._product_tma,
        # _gate_up_tma), each waited for before the arrival; the shares whole GROUP-column groups
        block_k: gl.constexpr = x_bufs.shape[2]
        tile: gl.constexpr = g_bufs.shape[1]
        o_splits: gl.constexpr = P // (H // tile)
        # (1) o
        o_tile, o_split, _, o_steps = _slice(p, H // block_k, H // tile, o_splits)
        _mark(failed_ptr, p, 0, 1, 0, TRACE)
        if TMA:
            n = _product_tma(x_bufs, g_bufs, x_ready, w_ready, empty, o_steps, 0, o_out, part_smem, o_split,
                             o_tile * tile, num_warps)
        else:
            n = _product(x_bufs, g_bufs, x_ready, w_ready, empty, o_steps, 0, o_part, o_split, o_tile * tile, rows, H,
                         num_warps)
        _arrive(count_ptr)
        # (2) residual + post-attention norm
        _mark(failed_ptr, p, 0, 2, n, TRACE)
        _wait_for_all(count_ptr, failed_ptr, P)
        _add_norm(o_part, x_ptr, post_norm_ptr, h_ptr, p, rows, eps, H, o_splits, NORM_BLOCK, num_warps)
        _arrive(count_ptr + 1)
        # (3) gate/up with SiLU x up
        _mark(failed_ptr, p, 0, 4, n, TRACE)
        lo, hi = _share(p, I, P, GROUP)
        if TMA:
            n = _gate_up_tma(x_bufs, g_bufs, u_bufs, gr_bufs, ur_bufs, x_ready, w_ready, empty, n, a_out, act_smem,
                             act_ptr, lo, hi, rows, H, I, num_warps)
        else:
            n = _gate_up(x_bufs, g_bufs, u_bufs, gr_bufs, ur_bufs, x_ready, w_ready, empty, n, act_ptr, lo, hi, rows,
                         H, I, num_warps)
        _arrive(count_ptr + 2)
        # (4) down
        d_tile, d_split, _, d_steps = _slice(p, I // block_k, H // tile, o_splits)
        _mark(failed_ptr, p, 0, 6, n, TRACE)
        if TMA:
            n = _product_tma(x_bufs, g_bufs, x_ready, w_ready, empty, d_steps, n, d_out, part_smem, d_split,
                             d_tile * tile, num_warps)
        else:
            n = _product(x_bufs, g_bufs, x_ready, w_ready, empty, d_steps, n, d_part, d_split, d_tile * tile, rows, H,
                         num_warps)
        _arrive(count_ptr + 3)
        # (5) residual + the next input norm (or the final one)
        _mark(failed_ptr, p, 0, 7, n, TRACE)
        _wait_for_all(count_ptr + 3, failed_ptr, P)
        _add_norm(d_part, x_ptr, next_norm_ptr, h_ptr, p, rows, eps, H, o_splits, NORM_BLOCK, num_warps)
        _arrive(count_ptr + 4)
        # (6) the next layer's q/k/v, partials for its attention
        if NEXT:
            q_tile, q_split, _, q_steps = _slice(p, H // block_k, QKV_N // tile, P // (QKV_N // tile))
            _mark(failed_ptr, p, 0, 9, n, TRACE)
            if TMA:  # (its writes waited for: the next layer's attention reads them after this grid)
                n = _product_tma(x_bufs, g_bufs, x_ready, w_ready, empty, q_steps, n, q_out, part_smem, q_split,
                                 q_tile * tile, num_warps)
            else:
                n = _product(x_bufs, g_bufs, x_ready, w_ready, empty, q_steps, n, qkv_part, q_split, q_tile * tile,
                             rows, QKV_N, num_warps)
        if TMA:
            tma.store_wait(0)  # (the staging buffers stay until the last store has read them)
        _mark(failed_ptr, p, 0, 11, n, TRACE)

    @gluon.jit
    def _layer(attn_desc, h_desc, act_desc, o_desc, gu_desc, r_desc, down_desc, qkv_desc, o_part, d_part, qkv_part,
               act_ptr, x_ptr, h_ptr, post_norm_ptr, next_norm_ptr, count_ptr, failed_ptr, rows, eps, o_out, d_out,
               q_out, a_out, H: gl.constexpr, I: gl.constexpr, QKV_N: gl.constexpr, P: gl.constexpr,
               STAGES: gl.constexpr, TILE: gl.constexpr, NEXT: gl.constexpr, WAIT: gl.constexpr,
               NORM_BLOCK: gl.constexpr, num_warps: gl.constexpr, PDL: gl.constexpr = False,
               TRACE: gl.constexpr = False, TMA: gl.constexpr = False):
        # o_out, d_out, q_out, a_out: the outputs' descriptors for TMA stores (read only with TMA;
        # without it their staging buffers go unused, and the compiler drops them)
        p = gl.program_id(0)
        group: gl.constexpr = 1 + 7 * TMA
        x_bufs, g_bufs, u_bufs, gr_bufs, ur_bufs, x_ready, w_ready, empty = _ring(h_desc, gu_desc, r_desc, STAGES)
        part_smem = gl.allocate_shared_memory(o_out.dtype, o_out.block_type.shape, o_out.layout)
        act_smem = gl.allocate_shared_memory(a_out.dtype, a_out.block_type.shape, a_out.layout)
        gl.warp_specialize([
            (_multiply, (x_bufs, g_bufs, u_bufs, gr_bufs, ur_bufs, x_ready, w_ready, empty, o_part, d_part, qkv_part,
                         act_ptr, x_ptr, h_ptr, post_norm_ptr, next_norm_ptr, count_ptr, failed_ptr, p, rows, eps, o_out,
                         d_out, q_out, a_out, part_smem, act_smem, H, I, QKV_N, P, NEXT, NORM_BLOCK, num_warps, TRACE,
                         TMA, group)),
            (_weights, (o_desc, gu_desc, r_desc, down_desc, qkv_desc, g_bufs, u_bufs, gr_bufs, ur_bufs, w_ready, empty,
                        count_ptr, failed_ptr, p, H, I, QKV_N, P, NEXT, WAIT, PDL, TRACE, group)),
            (_inputs, (attn_desc, h_desc, act_desc, x_bufs, x_ready, empty, count_ptr, failed_ptr, p, H, I, QKV_N, P,
                       TILE, NEXT, PDL, TRACE)),
        ], [1, 1], [24, 24])


@dataclass(frozen=True)
class StreamVariant:
    """How the layer kernel runs: ring stages; the weights waiting at each phase's dependency (else
    streaming ahead through them); launched with PDL after the attention; `programs` (0: one a
    multiprocessor of the device); `reference`: LayerStream.reference in the kernel's place (the
    tests, on a CPU); `trace`: each partition of each program records where it is
    (LayerStream.trace: what a hang's diagnosis reads); `tma_store`: every product's tile and
    SiLU x up written by TMA stores from shared memory, each waited for before its arrival, the
    gate/up shares whole 8-column groups (64 or 72 columns: a TMA store starts on 16 bytes). Its
    two staging buffers (48 KB) leave room for 5 ring stages, not 6. Plain stores there are 2 bytes
    an element, and an arrival waits for every one of them; by TMA, on an H100, the gate/up stream
    through 6 waits a layer ran 13% faster (docs/benchmarks.md, issue 18, call 98). This kernel's
    form of it is compiled, not yet run on a GPU."""

    stages: int = 6
    wait: bool = False
    pdl: bool = False
    programs: int = 0
    reference: bool = False
    trace: bool = False
    tma_store: bool = False

    def __str__(self) -> str:
        return (f"stream s{self.stages} weights {'wait' if self.wait else 'ahead'}{', PDL' if self.pdl else ''}"
                + (f", {self.programs} programs" if self.programs else "") + (", reference" if self.reference else "")
                + (", traced" if self.trace else "") + (", TMA stores" if self.tma_store else ""))

    @property
    def group(self) -> int:
        """The columns a gate/up share is whole groups of."""
        return 8 if self.tma_store else 1


@dataclass(frozen=True)
class StreamShape:
    """The widths the kernel splits: the model's, the rows (the batch) and the programs."""

    rows: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    programs: int

    @classmethod
    def of(cls, dims: ModelDims, rows: int, programs: int) -> StreamShape:
        return cls(rows, dims.hidden, dims.intermediate, dims.heads, dims.kv_heads, dims.head_dim, programs)

    @property
    def qkv_n(self) -> int:
        return (self.heads + 2 * self.kv_heads) * self.head_dim

    def splits(self, n: int) -> int:
        """K slices of a product with n output columns: as many as fill the programs."""
        return self.programs // (n // TILE)

    def why_not(self, group: int = 1) -> str | None:
        """Why the kernel's split does not take these widths, or None: the attention output as wide
        as the hidden state (o's K is the hidden width in the kernel), every product's K slices at
        least one step, every program's gate/up share (whole `group`-column groups) a 64-column
        tile plus at most REST, rows in one tile."""
        if self.heads * self.head_dim != self.hidden:
            return f"{self.heads} heads x {self.head_dim} is not the hidden width {self.hidden}"
        for name, n, k in (("o", self.hidden, self.hidden), ("down", self.hidden, self.intermediate),
                           ("q/k/v", self.qkv_n, self.hidden)):
            if n % TILE or k % BLOCK_K or not 1 <= self.splits(n) <= k // BLOCK_K:
                return f"{name} ({n} x {k}) does not split in {TILE}-column tiles on {self.programs} programs"
        groups = self.intermediate // group  # (whole: down's K, the intermediate, is whole K steps)
        shares = [((p + 1) * groups // self.programs - p * groups // self.programs) * group
                  for p in range(self.programs)]
        if min(shares) < TILE or max(shares) > TILE + REST:
            return (f"{self.intermediate} gate/up columns on {self.programs} programs are shares of "
                    f"{min(shares)}-{max(shares)} (the kernel takes {TILE} to {TILE + REST})")
        if not 0 < self.rows <= BLOCK_M or self.rows > self.programs:
            return f"{self.rows} rows (the kernel takes 1 to {min(BLOCK_M, self.programs)})"
        return None


def _out_desc(part: torch.Tensor):
    """A float32 partials buffer [splits, rows, N]'s descriptor for TMA stores of one [128, 64]
    tile of one split: [1, 128, 64] boxes (rows past `rows` are not written)."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    block = [1, BLOCK_M, TILE]
    layout = gl.NVMMASharedLayout.get_default_for(block, gl.float32)
    return TensorDescriptor(part, list(part.shape), list(part.stride()), block, layout)


class LayerStream:
    """The layer kernel's buffers (fixed addresses: a CUDA graph replays them), its launch and its
    arithmetic in torch."""

    def __init__(self, device, dtype, shape: StreamShape, layers: int, eps: float):
        self.shape, self.eps = shape, eps
        rows, hidden = shape.rows, shape.hidden

        def nan(*size, dtype=torch.float32):  # a part the kernel fails to write shows in the first check
            return torch.full(size, float("nan"), dtype=dtype, device=device)

        self.x, self.h, self.act = nan(rows, hidden, dtype=dtype), nan(rows, hidden, dtype=dtype), nan(
            rows, shape.intermediate, dtype=dtype)
        self.o_part, self.d_part = nan(shape.splits(hidden), rows, hidden), nan(shape.splits(hidden), rows, hidden)
        self.qkv_part = nan(shape.splits(shape.qkv_n), rows, shape.qkv_n)
        # COUNTERS a layer, then the spin limit's flag (kept until `gave_up` reads it), then with
        # StreamVariant.trace a mark for each partition of each program
        self.flag = COUNTERS * layers
        self.count = torch.zeros(self.flag + 1 + len(PARTITIONS) * shape.programs, dtype=torch.int32, device=device)

    def args(self, index: int, attn, layer, following, post_norm, next_norm, variant: StreamVariant
             ) -> tuple[tuple, dict]:
        """Layer `index`'s kernel arguments: its attention output, its weights (`layer`: a
        qwen2_decode.LayerWeights), the next layer's (None after the last), the norms."""
        import triton

        why = self.shape.why_not(variant.group)
        if why:
            raise ValueError(f"the layer kernel does not take {self.shape}{', TMA stores' * variant.tma_store}: {why}")
        qkv = following.qkv if following is not None else layer.o  # (not read without NEXT)
        descs = (*(tma_desc(t, [BLOCK_M, BLOCK_K]) for t in (attn, self.h, self.act)),
                 *(tma_desc(t, [TILE, BLOCK_K]) for t in (layer.o, layer.gate_up)),
                 tma_desc(layer.gate_up, [REST, BLOCK_K]), *(tma_desc(t, [TILE, BLOCK_K]) for t in (layer.down, qkv)))
        outs = (*(_out_desc(t) for t in (self.o_part, self.d_part, self.qkv_part)), tma_desc(self.act, [BLOCK_M, TILE]))
        args = (*descs, self.o_part, self.d_part, self.qkv_part, self.act, self.x, self.h, post_norm, next_norm,
                self.count[COUNTERS * index:], self.count[self.flag:], self.shape.rows, self.eps, *outs)
        consts = {"H": self.shape.hidden, "I": self.shape.intermediate, "QKV_N": self.shape.qkv_n,
                  "P": self.shape.programs, "STAGES": variant.stages, "TILE": TILE, "NEXT": following is not None,
                  "WAIT": variant.wait, "NORM_BLOCK": triton.next_power_of_2(self.shape.hidden), "num_warps": 4,
                  "PDL": variant.pdl, "TRACE": variant.trace, "TMA": variant.tma_store}
        return args, consts

    def launch(self, *args, **kwargs) -> None:
        """The kernel for one layer (`args`' arguments): cooperative, which the driver refuses (an
        error, not a GPU that never finishes) when the programs cannot all be resident at once."""
        args, consts = self.args(*args, **kwargs)
        _layer[(self.shape.programs,)](*args, **consts, launch_cooperative_grid=True, launch_pdl=consts["PDL"])

    def gave_up(self) -> bool:
        """Whether a wait gave up at its spin limit since the last call (the numbers are wrong);
        reads the flag back (a host sync) and clears it."""
        hit = bool(self.count[self.flag].item())
        self.count[self.flag] = 0
        return hit

    def trace(self, count: torch.Tensor | None = None) -> list[str]:
        """Where the layer kernel stands: first the counters' state (the first counter of a layer
        that had arrivals not every program reached: the layer that runs, as one layer kernel
        runs at a time), then each partition of each program by its last mark
        (StreamVariant.trace; that layer's, as traced steps clear the marks before each layer),
        programs with the same marks together: e.g. "programs 0-119: multiply waits for counter 0
        (o partials) at ring step 5, weights gate/up at ring step 5, ...". From `count`, a copy of
        the counters and marks read while the kernel still runs (default: them)."""
        count = self.count if count is None else count
        counts = count[:self.flag].view(-1, COUNTERS).tolist()
        short = next(((layer, c, n) for layer, row in enumerate(counts) if any(row) for c, n in enumerate(row)
                      if n < self.shape.programs), None)
        lines = ["every counter of the layers that ran reached" if short is None else
                 f"layer {short[0]}: counter {short[1]} at {short[2]} of {self.shape.programs}"]
        marks = count[self.flag + 1:].view(self.shape.programs, len(PARTITIONS)).tolist()
        start = 0
        for p in range(1, self.shape.programs + 1):
            if p < self.shape.programs and marks[p] == marks[start]:
                continue
            where = ", ".join(f"{name} {MARKS.get(code // 10000, f'mark {code}')} at ring step {code % 10000}"
                              if code else f"{name} not started" for name, code in zip(PARTITIONS, marks[start]))
            lines.append(f"programs {start}-{p - 1}: {where}")
            start = p
        return lines

    def reference(self, index: int, attn, layer, following, post_norm, next_norm, variant: StreamVariant) -> None:
        """What `launch` computes, in torch: the same K slices summed in the same order, the same
        roundings."""
        dtype = self.x.dtype

        def partials(a, w, out):
            steps, splits = w.shape[1] // BLOCK_K, out.shape[0]
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


# One LayerStream per (device, model widths, rows, programs, dtype): allocated at the first step,
# which runs before any CUDA graph capture (the engine's warm-up and check), so every replay
# reuses it. One stream at a time may use it.
_WORKSPACES: dict[tuple, LayerStream] = {}


def programs_on(device: torch.device, variant: StreamVariant) -> int:
    if variant.programs:
        return variant.programs
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 0


def workspace(dims: ModelDims, rows: int, device: torch.device, dtype: torch.dtype, programs: int) -> LayerStream:
    key = (device_key(device), dims, rows, programs, dtype)
    if key not in _WORKSPACES:
        _WORKSPACES[key] = LayerStream(device, dtype, StreamShape.of(dims, rows, programs), dims.layers, dims.eps)
    return _WORKSPACES[key]


def offered(device: torch.device, batch: int, dims: ModelDims, dtype: torch.dtype) -> list[StreamVariant]:
    """The variants to time beside the other decode steps where the kernel runs: Gluon on a
    Hopper GPU (`gluon_products.supported`) and `fitting` the model, the batch and the GPU's
    multiprocessors; else none. The engine asks only under RLTUI_DECODE_STREAM=1
    (trainer/decode_graphs.stream_variants)."""
    from trainer import gluon_products

    if not gluon_products.supported(device):
        return []
    return fitting(batch, dims, dtype, programs_on(device, StreamVariant()))


def fitting(batch: int, dims: ModelDims, dtype: torch.dtype, programs: int) -> list[StreamVariant]:
    """Weights streaming ahead, and the same launched with PDL, where the weights are bf16 (the
    kernel's tiles and roundings) and the kernel splits the model's widths and the batch on
    `programs` (StreamShape.why_not); then both with TMA stores (5 stages) where their shares
    split too; else none."""
    shape = StreamShape.of(dims, batch, programs)
    if dtype != torch.bfloat16 or shape.why_not() is not None:
        return []
    found = [StreamVariant(), StreamVariant(pdl=True)]
    tma = StreamVariant(stages=5, tma_store=True)
    if shape.why_not(tma.group) is None:
        found += [tma, replace(tma, pdl=True)]
    return found


def failed(device: torch.device) -> bool:
    """Whether any step on `device` gave up waiting for a phase since the last `failed` (its
    numbers are wrong); reads the flag back (a host sync) and clears it."""
    hit = False
    for key, work in _WORKSPACES.items():
        if key[0] == device_key(device):
            hit |= work.gave_up()
    return hit


def release_workspaces() -> None:
    """Free every workspace (with the decode engines: fast_generation.release_engines)."""
    _WORKSPACES.clear()


def compile_report(dims: ModelDims, rows: int, programs: int, variant: StreamVariant, last: bool = False
                   ) -> dict[str, int]:
    """Compile the layer kernel for these widths for sm_90a (no GPU needed): ptxas's registers and
    spills, shared memory, instruction counts (trainer.gluon_products.ptx_report)."""
    from trainer.gluon_products import ptx_report

    return ptx_report(compile_layer(dims, rows, programs, variant, last))


def compile_layer(dims: ModelDims, rows: int, programs: int, variant: StreamVariant, last: bool = False):
    """The layer kernel for these widths (the last layer's, without the next q/k/v, if `last`)
    compiled for sm_90a without a GPU: Triton's compiled kernel."""
    from trainer.gluon_products import compile_for_hopper
    from trainer.qwen2_decode import LayerWeights

    e = {"dtype": torch.bfloat16}
    hidden, inter = dims.hidden, dims.intermediate
    shape = StreamShape.of(dims, rows, programs)
    layer = LayerWeights(input_norm=torch.empty(hidden, **e), qkv=torch.empty(shape.qkv_n, hidden, **e),
                         qkv_bias=None, o=torch.empty(hidden, hidden, **e), post_norm=torch.empty(hidden, **e),
                         gate_up=torch.empty(2 * inter, hidden, **e), down=torch.empty(hidden, inter, **e))
    work = LayerStream("cpu", torch.bfloat16, shape, 1, dims.eps)
    args, consts = work.args(0, torch.empty(rows, hidden, **e), layer, None if last else layer, layer.post_norm,
                             layer.input_norm, variant)
    return compile_for_hopper(_layer, *args, **consts)
