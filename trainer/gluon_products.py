"""The decode step's small products (q/k/v, o) with all their weights in shared memory before
they wait for the kernel before them: a Gluon kernel launched with programmatic dependent launch.

    from trainer.gluon_products import product, supported
    parts = product(x, weight, block_n=64, splits=4, pdl=True)   # float32 partials [4, B, N]

At batch 128 an H200 takes 6.3 and 5.6 us a layer for Qwen2.5-1.5B's q/k/v and o products (6.3
and 4.7 MB of weights, 1.5 and 1.1 us at the copy rate) in cuBLAS: the kernel's start-up and its
first loads, not its bytes (docs/benchmarks.md, issue 18). Split along K into 72-192 programs,
a program's share of the weight and its slice of x fit in its shared memory whole (o at 64
columns x 4 K slices: 48 KB of weight, 96 KB of x). So a program
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

Measured on an H200 (docs/benchmarks.md, issue 18, calls 57-63; bench/gpu_gluon_products.py):
28 layers alone, o 0.108 ms a step against cuBLAS's 0.159 (q/k/v 0.129 against 0.164); the PDL
launch with the weights loaded before the wait 0.108, waiting first 0.146, plain 0.153. In the
decode step the o product pays: after the attention kernel, which lets it start early, its
weights stream in during the attention's tail, and the replay went from 1.937-1.943 to
1.873-1.879 ms (64 columns x 4 K slices, which the engine keeps: `decode_graphs.prefetched_o`).
The q/k/v product does not: it follows the cooperative MLP block, whose programs hold every
multiprocessor to its end, and the attention kernel adding its partials took 0.04-0.14 ms a step
longer; adding them in the product instead (the last program of a column tile, by ticket: commit
eaa77a2, taken out) cost more than it saved. So the decode engine offers o alone.

CUDA on Hopper only (TMA, wgmma); rows at most 128 (one tile of rows); RLTUI_DECODE_GLUON=0
switches it off. Triton's interpreter does not run Gluon: the tests compile the kernel for sm_90a
(Triton's own ptxas, no GPU) and check its shared memory, spills and instructions.
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
    gluon = gl = None

ENV = "RLTUI_DECODE_GLUON"  # 0: never offered to the decode engine
BLOCK_M = 128  # every row in one tile
BLOCK_K = 64  # one TMA box of x and of the weight per K step (128 bytes a row: the widest swizzle)
MAX_SHARED = 200 * 1024  # of an H100/H200 multiprocessor's 227 KB, leaving room for the grid before


def supported(device: torch.device) -> bool:
    """Gluon present, a Hopper CUDA device (the Gluon kernels' wgmma and TMA are sm_90a's; a later
    architecture has neither in this form), and not switched off (RLTUI_DECODE_GLUON=0)."""
    return (gluon is not None and os.environ.get(ENV) != "0" and device.type == "cuda"
            and torch.cuda.get_device_capability(device)[0] == 9)


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
    def _prefetched_product(x_desc, w_desc, out_ptr, rows, out_split_stride, out_stride, K_CHUNK: gl.constexpr,
                            PDL: gl.constexpr, num_warps: gl.constexpr, AHEAD: gl.constexpr = True,
                            EARLY: gl.constexpr = True):
        # Program (n, s): the float32 partial x[:, s K_CHUNK:(s + 1) K_CHUNK] @ w[n tile, same K]^T.
        # (AHEAD False: wait before any load; EARLY False: let the next grid start at the end.)
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
        if PDL and not EARLY:
            _grid_control("griddepcontrol.launch_dependents")


def tma_desc(t: torch.Tensor, block: list[int]):
    """A host tensor descriptor of 16-bit `t` with `block` boxes (parts past `t` zero-filled) in
    the default NVMMA shared layout."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    layout = gl.NVMMASharedLayout.get_default_for(block, gl.bfloat16)
    return TensorDescriptor(t, list(t.shape), list(t.stride()), block, layout)


def descriptors(x: torch.Tensor, weight: torch.Tensor, block_n: int):
    """Host tensor descriptors: x's [128, 64] box (rows past x's zero-filled) and the weight's [block_n, 64]."""
    return tma_desc(x, [BLOCK_M, BLOCK_K]), tma_desc(weight, [block_n, BLOCK_K])


def product(x: torch.Tensor, weight: torch.Tensor, *, block_n: int, splits: int, pdl: bool,
            ahead: bool = True, early: bool = True) -> torch.Tensor:
    """x [B, K] @ weight[N, K]^T as float32 partial sums [splits, B, N] (bf16 inputs, B <= 128).
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
    x_desc, w_desc = descriptors(x, weight, block_n)
    _prefetched_product[(n // block_n, splits)](x_desc, w_desc, out, rows, out.stride(0), out.stride(1),
                                                K_CHUNK=k // splits, PDL=pdl, AHEAD=ahead, EARLY=early, num_warps=4,
                                                launch_pdl=pdl)
    return out


def compile_for_hopper(kernel, *args, **options):
    """Compile the Gluon or Triton `kernel` for sm_90a without a GPU, bound to `args` and
    `options` (constexprs, num_warps) as a launch would bind them: Triton's compiled kernel
    (.asm, .metadata)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    source = ASTSource
    if gluon is not None:
        from triton.experimental.gluon._runtime import GluonASTSource, GluonJITFunction

        source = GluonASTSource if isinstance(kernel, GluonJITFunction) else ASTSource
    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, spec, opts = binder(*args, **options)
    opts, signature, constexprs, attrs = kernel._pack_args(backend, options, bound, spec, opts)
    return triton.compile(source(kernel, signature, constexprs, attrs), target=target, options=opts.__dict__)


def ptxas(ptx: str):
    """Triton's own ptxas -v on `ptx` for sm_90a: the finished process (its report, registers and
    spills, in stdout and stderr)."""
    import subprocess
    import tempfile
    from pathlib import Path

    import triton

    binary = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "k.ptx"
        source.write_text(ptx)
        return subprocess.run([str(binary), "-v", "--gpu-name", "sm_90a", str(source), "-o", str(Path(tmp) / "k.o")],
                              capture_output=True, text=True, check=False)


def compile_report(n: int, k: int, rows: int, block_n: int, splits: int, pdl: bool = True) -> dict[str, int]:
    """Compile the kernel for sm_90a (no GPU needed) and return ptxas's registers and spill bytes,
    the kernel's shared memory and its wgmma / griddepcontrol instruction counts (`ptx_report`)."""
    x = torch.empty(rows, k, dtype=torch.bfloat16)
    out = torch.empty(splits, rows, n, dtype=torch.float32)
    compiled = compile_for_hopper(_prefetched_product, *descriptors(x, torch.empty(n, k, dtype=torch.bfloat16), block_n),
                                  out, rows, out.stride(0), out.stride(1), K_CHUNK=k // splits, PDL=pdl, num_warps=4)
    return ptx_report(compiled)


def ptx_report(compiled) -> dict[str, int]:
    """ptxas's registers and spill bytes for a compiled kernel (`compile_for_hopper`'s), its
    shared memory, its wgmma and griddepcontrol instruction counts, and whether ptxas serialized
    its wgmma (warning C7514 or C7515: 1)."""
    import re

    ptx = compiled.asm["ptx"]
    done = ptxas(ptx)
    done.check_returncode()
    usage = done.stdout + done.stderr
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", usage)
    return {"registers": int(re.search(r"Used (\d+) registers", usage).group(1)),
            "spill_bytes": int(spills.group(1)) + int(spills.group(2)), "shared": compiled.metadata.shared,
            "wgmma": ptx.count("wgmma.mma_async"), "griddepcontrol": ptx.count("griddepcontrol."),
            "stores": ptx.count("st.global"),
            "serialized": int("C7514" in usage or "C7515" in usage)}
