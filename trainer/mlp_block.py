"""The MLP half of a decode layer as one persistent kernel: gate/up with SiLU x up, the down
product, the residual add and the next RMSNorm in one launch instead of five.

    from trainer.mlp_block import BlockShape, mlp_block
    shape = BlockShape.for_gpu(device)                      # one program per multiprocessor
    x, h = mlp_block(x, h, layer.gate_up, layer.down, next_norm, eps, shape)

The fused decode step (trainer/fused_decode.py) runs the MLP half of a layer as cuBLAS's gate/up
product (140 tiles of 128 columns on an H200's 132 multiprocessors: a second wave of 8), SiLU x up,
cuBLAS's down product with its split-K reduce, and residual + RMSNorm: five kernels, each paying
its start-up and its tail (docs/benchmarks.md, issue 18). Here one program per multiprocessor
does all of it, in three phases separated by device-wide barriers:

1. gate/up with SiLU x up: program p owns a share of SiLU x up's columns, whole groups of 8 (64
   or 72 of Qwen2.5-1.5B's 8,960 on 132 programs; every program reads the same bytes, no second
   wave), as a BLOCK_N-wide tile and a masked BLOCK_R-wide remainder, both gate's and up's rows,
   in one loop over K; it writes its columns of the activation [B, I] (bf16, rounded as the plain
   step's kernels round) in 16-byte stores.
   Shares of [p I / P, (p + 1) I / P) (67 or 68 columns; `BlockShape(aligned=False)`) start
   inside a group, and Triton then stores every element by itself, 2 bytes at a time.
2. down: the activation times the down weight, tiled as DOWN_N output columns x SPLITS slices of
   K (Qwen2.5-1.5B on 132 programs: 24 x 5 with the default 64 columns, 12 x 11 with 128), each
   writing a float32 partial [SPLITS, B, H].
3. residual + RMSNorm: program p adds up row p's partials in a fixed order (the result is the
   same on every run), adds the residual and writes it and the next layer's normed input, as
   trainer/triton_products.add_norm does.

A barrier is an arrival counter every program bumps (an atomic add, release) and then reads (a load,
acquire) until all have arrived; the counters go back to 0 before the kernel ends (the last program
to leave the second barrier resets it), so a CUDA graph replays the kernel without a memset. All
programs must be resident at once: one per multiprocessor, launched as a cooperative grid, which the
driver refuses (an error, caught by the engine's check) rather than start a grid that could not
finish; a program that still waits too long goes on and sets a flag `failed` reports. Reads of what
other programs wrote in the same kernel go past the L1 (tensor-descriptor loads after a proxy fence,
and `.cg` loads).

Triton's interpreter runs programs one after another, where a barrier would wait forever: there
(the tests) the same three phases run as three launches. Same arithmetic as the fused step up to
float32 summation order.

Measured on an H200 (docs/benchmarks.md, issue 18, calls 20-31): 28 layers' MLP halves in 1.02
ms with the default 6 stages (1.05 with 5) against 1.08 for the five kernels; gate/up alone is no
faster than cuBLAS's (0.56 against 0.54 ms, but SiLU x up, 0.07-0.08 ms, comes free), the down
product a little faster (0.33 against 0.36), the reduce + norm phase 0.10 ms. The decode step's
replay with it: 1.988 against 2.030 ms (call 23), 1.957 with 6 stages (call 30); the barriers
polled by loads, 1.00 ms for the 28 layers (call 42). Each barrier costs ~2 us even with no work
before it (bench/gpu_skeleton.py, calls 44-45): 0.11 ms of a replay. The engine times
it beside the other steps at its first bucket and keeps the fastest (trainer/decode_graphs.py);
RLTUI_DECODE_MLP_BLOCK=0 switches it off. BlockShape(gluon=True) runs the same block as
trainer/gluon_mlp.py's Gluon kernel (slower on an H200: calls 64-74).

Shares of whole 8-column groups (session 25, call 99, one H100): the same activation bit for bit,
the block 0.7-0.9% faster and its gate/up phase 2.4-2.9%, the decode replay the same within its
noise (2.2018 against 2.2033 ms). Not yet measured on an H200.

Reading the weights from copies laid out so that each box is one run of memory (session 21's
BlockShape.tiled, at commit e0acd53) made the block 2.1% faster on an H200 and the decode replay
1.1-1.4%, but rewriting the copies after each update cost more per step than that saved, with
2.2 GiB more memory: taken out (docs/benchmarks.md, issue 18, calls 86-89).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.triton_base import device_key, runs_on, tl, triton

ENV = "RLTUI_DECODE_MLP_BLOCK"


@dataclass(frozen=True)
class BlockShape:
    """Programs (one per multiprocessor on CUDA), K per loop step, the down product's output
    columns per tile, warps, pipeline stages, and whether the tiles are read through tensor
    descriptors (TMA) or pointers. `gluon`: the block as trainer/gluon_mlp.py's kernel, with
    `pdl` (launched with programmatic dependent launch, the weights of its first `ahead` steps
    asked for before it waits), `cross` (its first down tiles asked for before the first
    barrier) and `rest` (the rows of its remainder box). `stacked` (tensor descriptors only; the
    default): gate and up read as one box of gate_up viewed as [2, I, H] and multiplied as one
    product twice as wide, the remainder likewise through a box of BLOCK_S rows of each. On an
    H200 the same numbers bit for bit, 2.5% faster (docs/benchmarks.md, issue 18, call 78).
    `aligned` (the Triton block; the default): each program's share of the intermediate columns is
    whole groups of 8 (16 bytes), so that SiLU x up is stored in 16-byte vectors; a share that
    starts inside a group (p I / P, the form before session 25) makes every store 2 bytes wide.
    The same numbers bit for bit."""

    programs: int
    block_k: int = 64
    down_n: int = 64
    warps: int = 4
    stages: int = 6
    tma: bool = True
    gluon: bool = False
    pdl: bool = False
    ahead: int = 3
    cross: bool = True
    rest: int = 8
    stacked: bool = True
    aligned: bool = True

    @classmethod
    def for_gpu(cls, device: torch.device, **options) -> BlockShape:
        return cls(programs=torch.cuda.get_device_properties(device).multi_processor_count, **options)

    def group(self, intermediate: int) -> int:
        """The columns a share is made of whole groups of: 8 (16 bytes of bf16) where `aligned`
        and the width allows, else 1. (The Gluon block's shares are always p I / P.)"""
        return 8 if self.aligned and not self.gluon and intermediate % 8 == 0 else 1

    def remainder(self, intermediate: int, block_n: int) -> int:
        """The widest share's columns past its `block_n`-column tile."""
        g = self.group(intermediate)
        return -(-(intermediate // g) // self.programs) * g - block_n

    def plan(self, hidden: int, intermediate: int) -> dict[str, int]:
        """The tile sizes for a model's widths; ValueError when this shape does not tile them."""
        p, bk, g = self.programs, self.block_k, self.group(intermediate)
        least = intermediate // g // p * g
        if least < 16 or hidden % bk or intermediate % bk or hidden % self.down_n or hidden // self.down_n > p:
            raise ValueError(f"{self} does not tile hidden {hidden} x intermediate {intermediate}")
        block_n = min(64, 1 << (least.bit_length() - 1))
        rest = self.remainder(intermediate, block_n)
        block_r = max(16, triton.next_power_of_2(rest))
        if block_r > block_n:  # a remainder wider than the tile (a wide MLP on few SMs): not this kernel
            raise ValueError(f"{self} leaves {rest} columns a program past its tile")
        tiles_n = hidden // self.down_n
        splits = max(1, min(p // tiles_n, intermediate // bk))
        return {"BLOCK_N": block_n, "BLOCK_R": block_r, "SPLITS": splits, "TILES_N": tiles_n}


def available(device: torch.device) -> bool:
    return runs_on(device, ENV)


def requested(device: torch.device, batch: int, hidden: int, intermediate: int) -> BlockShape | None:
    """The block's shape for this GPU, for the engine to time beside the other decode steps,
    where it can run (CUDA, a Hopper or newer GPU for its tensor descriptors, at most 128 rows,
    widths it tiles) and RLTUI_DECODE_MLP_BLOCK=0 does not switch it off; else None."""
    if (device.type != "cuda" or not available(device) or batch > 128
            or torch.cuda.get_device_capability(device) < (9, 0)):
        return None
    shape = BlockShape.for_gpu(device)
    try:
        shape.plan(hidden, intermediate)
    except ValueError:
        return None
    return shape


if triton is not None:
    from trainer.triton_products import add_norm_row, swiglu_tile

    # Reads of a barrier's counter before a program gives up waiting (~1 s of atomics).
    SPIN_LIMIT = tl.constexpr(1 << 20)

    @triton.jit
    def _dot(a, b, acc, F32_DOT: tl.constexpr):
        # acc + a @ b^T (Triton's interpreter multiplies bf16 tiles wrongly: float32 there)
        if F32_DOT:
            return acc + tl.dot(a.to(tl.float32), tl.trans(b.to(tl.float32)))
        return tl.dot(a, tl.trans(b), acc)

    @triton.jit
    def _load_acquire(ptr):
        # *ptr, read with acquire semantics at GPU scope
        return tl.inline_asm_elementwise("ld.acquire.gpu.global.b32 $0, [$1];", "=r,l", [ptr], dtype=tl.int32,
                                         is_pure=False, pack=1)

    @triton.jit
    def _arrive_and_wait(count_ptr, failed_ptr, programs, TMA: tl.constexpr):
        # Every thread's writes before the arrival (CTA barrier, then a release at GPU scope);
        # then wait, acquiring, until every program has arrived. A program that has waited
        # SPIN_LIMIT reads goes on and marks the call failed (`failed`): wrong numbers the
        # caller can see instead of a GPU that never finishes (programs not all resident).
        # Tensor-descriptor loads after it (the async proxy) must see what plain stores wrote: a
        # proxy fence.
        # The waiters read the counter with acquiring loads: the block was 1% faster so than with
        # atomic adds of 0 on an H200 (docs/benchmarks.md, call 42).
        tl.debug_barrier()
        tl.atomic_add(count_ptr, 1, sem="release", scope="gpu")
        reads = 0
        while (_load_acquire(count_ptr) < programs) & (reads < SPIN_LIMIT):
            reads += 1
        if reads >= SPIN_LIMIT:
            tl.atomic_xchg(failed_ptr, 1)
        tl.debug_barrier()
        if TMA:
            tl.inline_asm_elementwise("fence.proxy.async.global; mov.u32 $0, 0;", "=r", [], dtype=tl.int32,
                                      is_pure=False, pack=1)

    @triton.jit
    def _reset_barriers(sync_ptr, p, P: tl.constexpr):
        # After the second barrier: every program has left the first one, so it can go back to 0.
        # The second goes back to 0 once every program has left it (the last ticket drawn after it).
        if p == 0:
            tl.atomic_xchg(sync_ptr, 0)
        if tl.atomic_add(sync_ptr + 2, 1, sem="acq_rel", scope="gpu") == P - 1:
            tl.atomic_xchg(sync_ptr + 1, 0)
            tl.atomic_xchg(sync_ptr + 2, 0)

    @triton.jit
    def _share(p, I: tl.constexpr, P: tl.constexpr, GROUP: tl.constexpr):
        # Program p's columns [lo, hi) of I split over P programs in whole groups of GROUP columns
        # (8: 16-byte stores; 1: p I / P)
        return p * (I // GROUP) // P * GROUP, (p + 1) * (I // GROUP) // P * GROUP

    @triton.jit
    def _gate_up_phase(h_ptr, h_desc, gu_ptr, gu_desc, act_ptr, p, rows, H: tl.constexpr, I: tl.constexpr,
                       P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_R: tl.constexpr, TMA: tl.constexpr, F32_DOT: tl.constexpr, row0=0,
                       GROUP: tl.constexpr = 1):
        # row0: where this layer's gate rows start in gate_up (0; bench/gpu_mlp_stream.py stacks
        # layers); GROUP: shares of whole groups of that many columns (BlockShape.group)
        lo, hi = _share(p, I, P, GROUP)
        m = tl.arange(0, BLOCK_M)
        live = m < rows
        ks = tl.arange(0, BLOCK_K)
        main = lo + tl.arange(0, BLOCK_N)
        rest = lo + BLOCK_N + tl.arange(0, BLOCK_R)
        rest_live = rest < hi
        gate = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        up = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        gate_r = tl.zeros([BLOCK_M, BLOCK_R], tl.float32)
        up_r = tl.zeros([BLOCK_M, BLOCK_R], tl.float32)
        rest_at = gu_ptr + (row0 + rest[:, None]) * H + ks[None, :]
        for k in range(0, H, BLOCK_K):
            if TMA:
                x = h_desc.load([0, k])
                g = gu_desc.load([row0 + lo, k])
                u = gu_desc.load([row0 + I + lo, k])
            else:
                x = tl.load(h_ptr + m[:, None] * H + k + ks[None, :], mask=live[:, None], other=0.0)
                g = tl.load(gu_ptr + (row0 + main[:, None]) * H + k + ks[None, :])
                u = tl.load(gu_ptr + (row0 + I + main[:, None]) * H + k + ks[None, :])
            # the remainder's own rows only (masked pointer loads, in this loop: a descriptor's box
            # would also read the next program's rows, and a second loop for them, or loading them
            # a step ahead, was slower on an H200: docs/benchmarks.md, calls 35-36)
            g_r = tl.load(rest_at + k, mask=rest_live[:, None], other=0.0)
            u_r = tl.load(rest_at + I * H + k, mask=rest_live[:, None], other=0.0)
            gate = _dot(x, g, gate, F32_DOT)
            up = _dot(x, u, up, F32_DOT)
            gate_r = _dot(x, g_r, gate_r, F32_DOT)
            up_r = _dot(x, u_r, up_r, F32_DOT)
        dtype = act_ptr.dtype.element_ty
        tl.store(act_ptr + m[:, None] * I + main[None, :], swiglu_tile(gate, up, dtype), mask=live[:, None])
        tl.store(act_ptr + m[:, None] * I + rest[None, :], swiglu_tile(gate_r, up_r, dtype),
                 mask=live[:, None] & rest_live[None, :])

    @triton.jit
    def _stacked_gate_up(h_desc, gu_desc, rest_desc, act_ptr, p, rows, I: tl.constexpr, P: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr,
                         H: tl.constexpr, F32_DOT: tl.constexpr, GROUP: tl.constexpr = 1):
        # The gate/up phase with gate and up read as one [2, BLOCK_N, K] box of gate_up viewed as
        # [2, I, H], multiplied as one 2 x BLOCK_N-column product (64x128 wgmma on Hopper, half
        # as many as two 64-column ones), and the share's remainder as one [2, BLOCK_S, K] box
        # and one 2 x BLOCK_S-column product. The remainder box's rows past the share are the
        # next program's (multiplied, not stored); past I the descriptor reads zeros.
        lo, hi = _share(p, I, P, GROUP)
        m = tl.arange(0, BLOCK_M)
        live = m < rows
        both = tl.zeros([BLOCK_M, 2 * BLOCK_N], tl.float32)
        both_r = tl.zeros([BLOCK_M, 2 * BLOCK_S], tl.float32)
        for k in range(0, H, BLOCK_K):
            x = h_desc.load([0, k])
            w = gu_desc.load([0, lo, k]).reshape(2 * BLOCK_N, BLOCK_K)
            r = rest_desc.load([0, lo + BLOCK_N, k]).reshape(2 * BLOCK_S, BLOCK_K)
            both = _dot(x, w, both, F32_DOT)
            both_r = _dot(x, r, both_r, F32_DOT)
        gate, up = both.reshape(BLOCK_M, 2, BLOCK_N).permute(0, 2, 1).split()
        gate_r, up_r = both_r.reshape(BLOCK_M, 2, BLOCK_S).permute(0, 2, 1).split()
        main = lo + tl.arange(0, BLOCK_N)
        rest = lo + BLOCK_N + tl.arange(0, BLOCK_S)
        dtype = act_ptr.dtype.element_ty
        tl.store(act_ptr + m[:, None] * I + main[None, :], swiglu_tile(gate, up, dtype), mask=live[:, None])
        tl.store(act_ptr + m[:, None] * I + rest[None, :], swiglu_tile(gate_r, up_r, dtype),
                 mask=live[:, None] & (rest < hi)[None, :])

    @triton.jit
    def _down_phase(act_ptr, act_desc, down_ptr, down_desc, part_ptr, p, rows, H: tl.constexpr, I: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, DOWN_N: tl.constexpr, SPLITS: tl.constexpr,
                    TILES_N: tl.constexpr, TMA: tl.constexpr, F32_DOT: tl.constexpr, row0=0):
        # row0: where this layer's rows start in down (0; bench/gpu_mlp_stream.py stacks layers)
        if p < TILES_N * SPLITS:
            tile = p % TILES_N
            split = p // TILES_N
            steps: tl.constexpr = I // BLOCK_K
            k_lo = (split * steps // SPLITS) * BLOCK_K
            k_hi = ((split + 1) * steps // SPLITS) * BLOCK_K
            m = tl.arange(0, BLOCK_M)
            live = m < rows
            ks = tl.arange(0, BLOCK_K)
            cols = tile * DOWN_N + tl.arange(0, DOWN_N)
            acc = tl.zeros([BLOCK_M, DOWN_N], tl.float32)
            # (Triton's interpreter cannot bound a loop by the program's id: there it runs every
            # step and keeps the sums of its own.)
            for k in range(0 if F32_DOT else k_lo, I if F32_DOT else k_hi, BLOCK_K):
                if TMA:
                    a = act_desc.load([0, k])
                    w = down_desc.load([row0 + tile * DOWN_N, k])
                else:
                    a = tl.load(act_ptr + m[:, None] * I + k + ks[None, :], mask=live[:, None], other=0.0,
                                cache_modifier=".cg")
                    w = tl.load(down_ptr + (row0 + cols[:, None]) * I + k + ks[None, :])
                if F32_DOT:
                    acc = tl.where((k >= k_lo) & (k < k_hi), _dot(a, w, acc, F32_DOT), acc)
                else:
                    acc = _dot(a, w, acc, F32_DOT)
            tl.store(part_ptr + split * rows * H + m[:, None] * H + cols[None, :], acc, mask=live[:, None])

    @triton.jit
    def _mlp_kernel(h_ptr, h_desc, gu_ptr, gu_desc, rest_desc, act_ptr, act_desc, down_ptr, down_desc, part_ptr, x_ptr,
                    norm_ptr, x_out_ptr, h_out_ptr, sync_ptr, rows, eps, H: tl.constexpr, I: tl.constexpr,
                    P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_R: tl.constexpr, DOWN_N: tl.constexpr, SPLITS: tl.constexpr, TILES_N: tl.constexpr,
                    NORM_BLOCK: tl.constexpr, PHASE: tl.constexpr, TMA: tl.constexpr, F32_DOT: tl.constexpr,
                    STACKED: tl.constexpr = False, BLOCK_S: tl.constexpr = 8, GROUP: tl.constexpr = 1):
        # PHASE 0: all three phases with barriers between them (CUDA); 1, 2 or 3: that phase only.
        p = tl.program_id(0)
        if (PHASE == 0 or PHASE == 1) and STACKED:
            _stacked_gate_up(h_desc, gu_desc, rest_desc, act_ptr, p, rows, I, P, BLOCK_M, BLOCK_K, BLOCK_N, BLOCK_S, H,
                             F32_DOT, GROUP)
        elif PHASE == 0 or PHASE == 1:
            _gate_up_phase(h_ptr, h_desc, gu_ptr, gu_desc, act_ptr, p, rows, H, I, P, BLOCK_M, BLOCK_K, BLOCK_N,
                           BLOCK_R, TMA, F32_DOT, GROUP=GROUP)
        if PHASE == 0:
            _arrive_and_wait(sync_ptr, sync_ptr + 3, P, TMA)
        if PHASE == 0 or PHASE == 2:
            _down_phase(act_ptr, act_desc, down_ptr, down_desc, part_ptr, p, rows, H, I, BLOCK_M, BLOCK_K, DOWN_N,
                        SPLITS, TILES_N, TMA, F32_DOT)
        if PHASE == 0:
            _arrive_and_wait(sync_ptr + 1, sync_ptr + 3, P, False)
            _reset_barriers(sync_ptr, p, P)
        if PHASE == 0 or PHASE == 3:
            for start in range(0, BLOCK_M, P):
                if start + p < rows:
                    add_norm_row(part_ptr, rows * H, x_ptr, norm_ptr, x_out_ptr, h_out_ptr, start + p, H, eps,
                                 SPLITS, NORM_BLOCK)


# (activation, partials, barrier counters | failed flag) per (device, rows, hidden, intermediate, splits, dtype).
# Allocated at the first call, which runs before any CUDA graph capture (the engine's warm-up and
# check), so every replay reuses them; the counters start at 0 and each call leaves them at 0.
# One stream at a time may use them.
_WORKSPACES: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def workspace(device: torch.device, rows: int, hidden: int, intermediate: int, splits: int,
              dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    key = (device_key(device), rows, hidden, intermediate, splits, dtype)
    if key not in _WORKSPACES:
        _WORKSPACES[key] = (torch.empty(rows, intermediate, device=device, dtype=dtype),
                            torch.empty(splits, rows, hidden, device=device, dtype=torch.float32),
                            torch.zeros(4, device=device, dtype=torch.int32))
    return _WORKSPACES[key]


def mlp_block(x: torch.Tensor, h: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, norm: torch.Tensor,
              eps: float, shape: BlockShape, *, phases: tuple[int, ...] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual x [B, H] and its normed h after one MLP half: x + down(SiLU(gate) * up) of h,
    with gate | up stacked in `gate_up` [2I, H] and `down` [H, I], and RMSNorm of that with `norm`
    (the next layer's input norm, or the final one); as fused_decode's gate/up, silu_mul, down and
    add_norm. B at most 128. `phases`: the launches, (0,) for one with barriers (default on CUDA),
    (1, 2, 3) for one per phase (default in the interpreter); a benchmark may time one phase
    alone."""
    rows, hidden = h.shape
    intermediate = down.shape[1]
    if shape.gluon:
        from trainer import gluon_mlp

        buffers = workspace(h.device, rows, hidden, intermediate, shape.plan(hidden, intermediate)["SPLITS"], h.dtype)
        return gluon_mlp.block(x, h, gate_up, down, norm, eps, shape, buffers, phases=phases)
    if rows > 128 or gate_up.shape != (2 * intermediate, hidden) or down.shape != (hidden, intermediate):
        raise ValueError(f"mlp_block takes at most 128 rows and matching weights, not h {tuple(h.shape)}, "
                         f"gate_up {tuple(gate_up.shape)}, down {tuple(down.shape)}")
    plan = shape.plan(hidden, intermediate)
    cuda = h.device.type == "cuda"
    phases = phases or ((0,) if cuda else (1, 2, 3))
    h = h.contiguous()
    act, part, sync = workspace(h.device, rows, hidden, intermediate, plan["SPLITS"], h.dtype)
    x_out, h_out = torch.empty_like(x), torch.empty_like(x)
    bm, bk = max(16, triton.next_power_of_2(rows)), shape.block_k
    stacked = {}
    if shape.tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        def desc(t: torch.Tensor, block: list[int]):
            return TensorDescriptor(t, list(t.shape), [t.stride(0), 1], block)

        if shape.stacked and gate_up.is_contiguous():  # (else the two 64-column products)
            # the remainder's rows of each, at least 8 (their product is 2 x BLOCK_S wide; plan
            # checked BLOCK_R, which is at least this, against BLOCK_N)
            block_s = max(8, triton.next_power_of_2(shape.remainder(intermediate, plan["BLOCK_N"])))
            both = gate_up.view(2, intermediate, hidden)
            rows_of = [intermediate * hidden, hidden, 1]
            gu_desc = TensorDescriptor(both, list(both.shape), rows_of, [2, plan["BLOCK_N"], bk])
            rest_desc = TensorDescriptor(both, list(both.shape), rows_of, [2, block_s, bk])
            stacked = {"STACKED": True, "BLOCK_S": block_s}
        else:
            gu_desc = rest_desc = desc(gate_up, [plan["BLOCK_N"], bk])  # (rest_desc not read)
        descs = (desc(h, [bm, bk]), gu_desc, desc(act, [bm, bk]), desc(down, [shape.down_n, bk]))
    else:
        descs = (h, gate_up, act, down)
        rest_desc = gate_up  # (not read)
    args = (h, descs[0], gate_up, descs[1], rest_desc, act, descs[2], down, descs[3], part, x, norm, x_out, h_out,
            sync, rows, float(eps))
    consts = {"H": hidden, "I": intermediate, "P": shape.programs, "BLOCK_M": bm, "BLOCK_K": bk,
              "DOWN_N": shape.down_n, "NORM_BLOCK": triton.next_power_of_2(hidden), "TMA": shape.tma,
              "F32_DOT": not cuda, "num_warps": shape.warps, "num_stages": shape.stages,
              "GROUP": shape.group(intermediate), **plan, **stacked}
    for phase in phases:
        # With barriers: a cooperative launch, which the driver refuses (an error, not a GPU that
        # never finishes) when the programs cannot all be resident at once.
        launch = {"launch_cooperative_grid": True} if phase == 0 and cuda else {}
        _mlp_kernel[(shape.programs,)](*args, PHASE=phase, **consts, **launch)
    return x_out, h_out


def failed(device: torch.device) -> bool:
    """Whether any call on `device` gave up waiting at a barrier since the last `failed` (its
    numbers are wrong); reads the flag back (a host sync) and clears it."""
    hit = False
    for key, (_, _, sync) in _WORKSPACES.items():
        if key[0] == device_key(device) and int(sync[3].item()):
            sync[3].zero_()
            hit = True
    return hit
