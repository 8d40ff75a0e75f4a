"""The decode step's small products (q/k/v, o) with all their weights in shared memory before
they wait for the kernel before them: a Gluon kernel launched with programmatic dependent launch.

    from trainer.gluon_products import product, supported
    parts = product(x, weight, block_n=128, splits=8, pdl=True)   # float32 partials [8, B, N]

At batch 128 an H200 takes 6.3 and 5.6 us a layer for Qwen2.5-1.5B's q/k/v and o products (6.3
and 4.7 MB of weights, 1.5 and 1.1 us at the copy rate) in cuBLAS: the kernel's start-up and its
first loads, not its bytes (docs/benchmarks.md, issue 18). Split along K into ~128 programs, each
program's share of the weight is 36-48 KB, which fits in its shared memory whole. So a program
issues the TMA loads of its whole weight tile first (the weights are not written during a step),
then waits for the grid before it (`griddepcontrol.wait`: its input x is that grid's output),
then loads its slice of x, lets the next grid start, multiplies with wgmma as each K step's
tiles land, and writes its float32 partial sum [S, B, N]; the consumer (the attention kernel for
q/k/v, residual + RMSNorm for o) adds the partials in a fixed order, as for
trainer/triton_products.py's split products. Launched with PDL, the program starts as the grid
before it leaves the multiprocessors, so its weights stream in during that grid's tail.
Triton's loops issue their first loads at the loop, after any wait, which is why earlier forms
could only ask the L2 (calls 17, 19, 37, 40-41: slower); calls 54-56 measured the gain of loads
before the wait on a Gluon gate/up.

CUDA on Hopper only (TMA, wgmma); rows at most 128 (one tile of rows). Triton's interpreter does
not run Gluon: the tests compile the kernel for sm_90a and check its shared memory and spills.
"""

from __future__ import annotations

import os

import torch

try:  # Gluon ships with Triton 3.5+; without it `supported` is False and nothing here runs
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
except ImportError:  # pragma: no cover - exercised where Triton (or its Gluon) is missing
    gluon = None

ENV = "RLTUI_DECODE_GLUON"  # 0: never offered to the decode engine
BLOCK_M = 128  # every row in one tile
BLOCK_K = 64  # one TMA box of x and of the weight per K step (128 bytes a row: the widest swizzle)
MAX_SHARED = 200 * 1024  # of an H100/H200 multiprocessor's 227 KB, leaving room for the grid before


def supported(device: torch.device) -> bool:
    """Gluon present, a Hopper-or-later CUDA device, and not switched off (RLTUI_DECODE_GLUON=0)."""
    return (gluon is not None and os.environ.get(ENV) != "0" and device.type == "cuda"
            and torch.cuda.get_device_capability(device)[0] >= 9)


def fits(n: int, k: int, rows: int, block_n: int, splits: int) -> bool:
    """Whether (block_n, splits) tiles an [n, k] weight for `rows` rows within shared memory."""
    if rows > BLOCK_M or block_n not in (64, 128, 256) or n % block_n or k % (splits * BLOCK_K):
        return False
    steps = k // splits // BLOCK_K
    return steps * (BLOCK_M + block_n) * BLOCK_K * 2 <= MAX_SHARED


if gluon is not None:

    @gluon.jit
    def _grid_control(instruction: gl.constexpr):
        # griddepcontrol.wait (until the grids this one depends on have finished and their writes
        # are visible) or griddepcontrol.launch_dependents (the next grid may start); no-ops
        # without a programmatic dependency
        gl.inline_asm_elementwise(instruction + "; mov.u32 $0, 0;", "=r", [], dtype=gl.int32, is_pure=False,
                                  pack=1)

    @gluon.jit
    def _prefetched_product(x_desc, w_desc, out_ptr, rows, out_split_stride, out_stride, tickets_ptr, bias_ptr,
                            final_ptr, K_CHUNK: gl.constexpr, PDL: gl.constexpr, num_warps: gl.constexpr,
                            AHEAD: gl.constexpr = True, REDUCE: gl.constexpr = False, HAS_BIAS: gl.constexpr = False,
                            EARLY: gl.constexpr = True, SPLITS: gl.constexpr = 1, PARTS: gl.constexpr = 1):
        # Program (n, s): the float32 partial x[:, s K_CHUNK:(s + 1) K_CHUNK] @ w[n tile, same K]^T.
        # REDUCE: then the last of the n tile's programs to finish (by ticket) adds the tile's
        # partials in a fixed order, the bias, and writes the bf16 product to final_ptr.
        block_m: gl.constexpr = x_desc.block_type.shape[0]
        block_k: gl.constexpr = x_desc.block_type.shape[1]
        block_n: gl.constexpr = w_desc.block_type.shape[0]
        steps: gl.constexpr = K_CHUNK // block_k
        first_col = gl.program_id(0) * block_n
        first = gl.program_id(1) * K_CHUNK
        x_bufs = gl.allocate_shared_memory(x_desc.dtype, [steps] + x_desc.block_type.shape, x_desc.layout)
        w_bufs = gl.allocate_shared_memory(w_desc.dtype, [steps] + w_desc.block_type.shape, w_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [steps, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(steps):
            mbarrier.init(ready.index(i), count=1)
        fence_async_shared()
        # Step i's barrier completes when its weight tile and its x tile have both landed.
        # (AHEAD False, to measure what loading the weights first is worth: wait first.)
        if PDL and not AHEAD:
            _grid_control("griddepcontrol.wait")
        for i in gl.static_range(steps):
            mbarrier.expect(ready.index(i), x_desc.block_type.nbytes + w_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(w_desc, [first_col, first + i * block_k], ready.index(i), w_bufs.index(i))
        if PDL and AHEAD:
            _grid_control("griddepcontrol.wait")
        for i in gl.static_range(steps):
            tma.async_copy_global_to_shared(x_desc, [0, first + i * block_k], ready.index(i), x_bufs.index(i))
        if PDL and EARLY:
            _grid_control("griddepcontrol.launch_dependents")
        layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                         instr_shape=[16, block_n, 16])
        acc = gl.zeros([block_m, block_n], gl.float32, layout)
        for i in gl.static_range(steps):
            mbarrier.wait(ready.index(i), 0)
            # the weight is [N tile, K] in shared memory: its transposed view is wgmma's B
            acc = warpgroup_mma(x_bufs.index(i), w_bufs.index(i).permute((1, 0)), acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        m = gl.arange(0, block_m, layout=gl.SliceLayout(1, layout))
        n = first_col + gl.arange(0, block_n, layout=gl.SliceLayout(0, layout))
        at = out_ptr + gl.program_id(1) * out_split_stride + m[:, None] * out_stride + n[None, :]
        gl.store(at, acc, mask=(m < rows)[:, None])
        if REDUCE:
            _reduce_tile(out_ptr, out_split_stride, out_stride, tickets_ptr, bias_ptr, final_ptr, rows, first_col,
                         block_m, block_n, SPLITS, PARTS, HAS_BIAS, num_warps)
        if PDL and not EARLY:
            _grid_control("griddepcontrol.launch_dependents")

    @gluon.jit
    def _reduce_tile(part_ptr, part_stride, row_stride, tickets_ptr, bias_ptr, final_ptr, rows, first_col,
                     BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, SPLITS: gl.constexpr, PARTS: gl.constexpr,
                     HAS_BIAS: gl.constexpr, num_warps: gl.constexpr):
        # (PARTS: SPLITS rounded up to a power of 2, the tile's first dimension)
        # Every thread's partial is stored before one thread takes a ticket (release: the tile's
        # last program sees them); that program (acquire) reads all partials past the L1 in split
        # order, so the sum is the same on every run, and puts the ticket back to 0 for the next launch.
        gl.thread_barrier()
        ticket = gl.atomic_add(tickets_ptr + gl.program_id(0), 1, sem="acq_rel", scope="gpu")
        if ticket == SPLITS - 1:
            gl.thread_barrier()
            # Half the rows at a time, every split's partial of them in one load [S, rows, columns]
            # (one round trip to the L2 a half), summed in split order.
            CHUNK: gl.constexpr = BLOCK_M // 2
            layout: gl.constexpr = gl.BlockedLayout([1, 1, 4], [1, 2, 16], [1, num_warps, 1], [2, 1, 0])
            sums: gl.constexpr = gl.SliceLayout(0, layout)
            s = gl.arange(0, PARTS, layout=gl.SliceLayout(1, gl.SliceLayout(2, layout)))[:, None, None]
            n = first_col + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, gl.SliceLayout(1, layout)))[None, None, :]
            for r in gl.static_range(0, BLOCK_M, CHUNK):
                m = r + gl.arange(0, CHUNK, layout=gl.SliceLayout(0, gl.SliceLayout(2, layout)))[None, :, None]
                parts = gl.load(part_ptr + s * part_stride + m * row_stride + n, mask=(s < SPLITS) & (m < rows),
                                other=0.0, cache_modifier=".cg")
                total = gl.sum(parts, axis=0)
                mm = r + gl.arange(0, CHUNK, layout=gl.SliceLayout(1, sums))
                nn = first_col + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, sums))
                if HAS_BIAS:
                    total += gl.load(bias_ptr + nn).to(gl.float32)[None, :]
                gl.store(final_ptr + mm[:, None] * row_stride + nn[None, :], total.to(final_ptr.dtype.element_ty),
                         mask=(mm < rows)[:, None])
            gl.atomic_xchg(tickets_ptr + gl.program_id(0), 0)


def descriptors(x: torch.Tensor, weight: torch.Tensor, block_n: int):
    """Host tensor descriptors: x's [128, 64] box (rows past x's zero-filled) and the weight's [block_n, 64]."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    def desc(t: torch.Tensor, block: list[int]):
        layout = gl.NVMMASharedLayout.get_default_for(block, gl.bfloat16)
        return TensorDescriptor(t, list(t.shape), list(t.stride()), block, layout)

    return desc(x, [BLOCK_M, BLOCK_K]), desc(weight, [block_n, BLOCK_K])


_TICKETS: dict[tuple[str, int], torch.Tensor] = {}  # per device and weight: one counter per column tile


def _tickets(weight: torch.Tensor, tiles: int) -> torch.Tensor:
    # Per weight, so that no two products in flight share a counter; allocated at the first
    # (eager) call, before any graph capture, and left at 0 by every launch.
    key = (str(weight.device), weight.data_ptr())
    if key not in _TICKETS or _TICKETS[key].numel() < tiles:
        _TICKETS[key] = torch.zeros(tiles, device=weight.device, dtype=torch.int32)
    return _TICKETS[key]


def product(x: torch.Tensor, weight: torch.Tensor, *, block_n: int, splits: int, pdl: bool,
            ahead: bool = True, reduce: bool = False, bias: torch.Tensor | None = None, early: bool = True
            ) -> torch.Tensor:
    """x [B, K] @ weight[N, K]^T as float32 partial sums [splits, B, N] (bf16 inputs, B <= 128);
    `reduce`: as the bf16 product [B, N] (+ `bias`), the partials added in the kernel.
    `pdl`: launched with programmatic dependent launch (see the module's docstring); `ahead`
    False (bench/gpu_gluon_products.py): wait for the grid before any load; `early` False: let the
    next grid start only at the end (its programs then do not take multiprocessors while this
    grid still holds them)."""
    rows, k = x.shape
    n = weight.shape[0]
    if x.dtype != torch.bfloat16 or weight.dtype != torch.bfloat16 or not fits(n, k, rows, block_n, splits):
        raise ValueError(f"a Gluon product of {block_n} columns x {splits} K slices does not take "
                         f"x {tuple(x.shape)} {x.dtype} @ weight {tuple(weight.shape)} {weight.dtype}")
    x = x if x.stride(1) == 1 and x.stride(0) % 8 == 0 else x.contiguous()
    out = torch.empty(splits, rows, n, device=x.device, dtype=torch.float32)
    final = torch.empty(rows, n, device=x.device, dtype=x.dtype) if reduce else out
    tickets = _tickets(weight, n // block_n) if reduce else out
    x_desc, w_desc = descriptors(x, weight, block_n)
    _prefetched_product[(n // block_n, splits)](x_desc, w_desc, out, rows, out.stride(0), out.stride(1), tickets,
                                                bias if bias is not None else weight, final,
                                                K_CHUNK=k // splits, PDL=pdl, AHEAD=ahead, REDUCE=reduce,
                                                HAS_BIAS=reduce and bias is not None, EARLY=early, SPLITS=splits,
                                                PARTS=1 << (splits - 1).bit_length(),
                                                num_warps=4, launch_pdl=pdl)
    return final if reduce else out


def compile_report(n: int, k: int, rows: int, block_n: int, splits: int, pdl: bool = True,
                   reduce: bool = False) -> dict[str, int]:
    """Compile the kernel for sm_90a (no GPU needed) and return ptxas's registers and spill bytes,
    the kernel's shared memory and its wgmma / griddepcontrol instruction counts."""
    import re
    import subprocess
    import tempfile
    from pathlib import Path

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    x = torch.empty(rows, k, dtype=torch.bfloat16)
    out = torch.empty(splits, rows, n, dtype=torch.float32)
    kernel = _prefetched_product
    options = {"K_CHUNK": k // splits, "PDL": pdl, "REDUCE": reduce, "HAS_BIAS": reduce, "SPLITS": splits,
               "PARTS": 1 << (splits - 1).bit_length(), "num_warps": 4}
    tickets = torch.empty(n // block_n, dtype=torch.int32)
    bias, final = torch.empty(n, dtype=torch.bfloat16), torch.empty(rows, n, dtype=torch.bfloat16)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, spec, opts = binder(*descriptors(x, torch.empty(n, k, dtype=torch.bfloat16), block_n), out, rows,
                               out.stride(0), out.stride(1), tickets, bias, final, **options)
    opts, signature, constexprs, attrs = kernel._pack_args(backend, options, bound, spec, opts)
    compiled = triton.compile(GluonASTSource(kernel, signature, constexprs, attrs), target=target,
                              options=opts.__dict__)
    ptx = compiled.asm["ptx"]
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "k.ptx"
        source.write_text(ptx)
        done = subprocess.run([str(ptxas), "-v", "--gpu-name", "sm_90a", str(source), "-o", str(Path(tmp) / "k.o")],
                              capture_output=True, text=True, check=True)
    usage = done.stdout + done.stderr
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", usage)
    return {"registers": int(re.search(r"Used (\d+) registers", usage).group(1)),
            "spill_bytes": int(spills.group(1)) + int(spills.group(2)), "shared": compiled.metadata.shared,
            "wgmma": ptx.count("wgmma.mma_async"), "griddepcontrol": ptx.count("griddepcontrol.")}
