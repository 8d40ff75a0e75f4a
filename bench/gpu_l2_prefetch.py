"""Does asking the L2 for a weight ahead of time make its product faster?

Usage (on the GPU machine):
    python bench/gpu_l2_prefetch.py [--out $OUT/l2_prefetch.json]

One gate/up-shaped product (128 rows x a 1536 x 17920 bf16 weight, 55 MB: the decode step's
largest) timed by CUDA events, side by side in one process: from a cold L2 (a 512 MB buffer
written first), and after the side branch's requests for its first 8-48 MB (bulk requests of 4,
16 and 64 KB, or one per 128-byte line) with a pause (a GPU sleep) for them to land; and after
reading the whole weight once (warm, as far as the L2 holds it). Also the requests' own kernel
time. Median of 20 of each. Prints one line per case and writes the JSON.

The requests are `cp.async.bulk.prefetch.L2` per chunk or `prefetch.global.L2` per 128-byte line,
from a Triton kernel here (inline PTX, sm_90). Session 6 also tried them in the decode step, on a
side stream of its graph and at the attention kernel's start (commits f7cc443 and 1f501d6); both
were slower and were taken out (docs/benchmarks.md, calls 17 and 19).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from gpu_common import write_json

MB, LINE = 1 << 20, 128

try:  # the GPU machine's image has Triton; a CPU box may not
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

if triton is not None:
    @triton.jit
    def _fetch_kernel(base_ptr, chunks, CHUNK: tl.constexpr, PER: tl.constexpr, BULK: tl.constexpr):
        # Program p asks for chunks [p * PER, (p + 1) * PER); those past the end repeat the last.
        index = tl.minimum(tl.program_id(0) * PER + tl.arange(0, PER), chunks - 1)
        addr = base_ptr + index.to(tl.int64) * CHUNK
        size = tl.full([PER], CHUNK, tl.int32)
        if BULK:
            tl.inline_asm_elementwise("cp.async.bulk.prefetch.L2.global [$1], $2; // dummy $0", "=r,l,r",
                                      [addr, size], dtype=tl.int32, is_pure=False, pack=1)
        else:
            tl.inline_asm_elementwise("prefetch.global.L2 [$1]; // dummy $0 $2", "=r,l,r",
                                      [addr, size], dtype=tl.int32, is_pure=False, pack=1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)
    import torch
    import torch.nn.functional as F

    def fetch(weight, nbytes: int, chunk: int) -> None:
        """Ask the L2 for the first `nbytes` of `weight`: bulk requests of `chunk` bytes, or one
        per 128-byte line when `chunk` is 0."""
        size = chunk or LINE
        chunks = max(1, nbytes // size)
        raw = weight.view(-1).view(torch.uint8)
        _fetch_kernel[(triton.cdiv(chunks, 128),)](raw, chunks, CHUNK=size, PER=128, BULK=chunk > 0, num_warps=4)

    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    weight = torch.randn(17920, 1536, device=dev, generator=gen).to(torch.bfloat16)
    x = torch.randn(128, 1536, device=dev, generator=gen).to(torch.bfloat16)
    flush = torch.empty(512 * MB, dtype=torch.uint8, device=dev)
    total = weight.numel() * weight.element_size()

    def timed(before) -> tuple[float, float]:
        runs, asks = [], []
        for _ in range(args.repeats + 2):
            flush.fill_(1)
            a0, a1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a0.record()
            before()
            a1.record()
            torch.cuda._sleep(200_000)  # ~100 us at the H200's clock: the requests land
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            F.linear(x, weight)
            e.record()
            e.synchronize()
            runs.append(s.elapsed_time(e) * 1000)
            asks.append(a0.elapsed_time(a1) * 1000)
        return statistics.median(runs[2:]), statistics.median(asks[2:])

    found: dict[str, dict[str, float]] = {}

    def case(name: str, before) -> None:
        us, ask_us = timed(before)
        found[name] = {"product_us": us, "ask_us": ask_us}
        print(f"{name:28s} product {us:7.2f} us  (asks {ask_us:6.2f} us)", flush=True)

    case("cold", lambda: None)
    case("warm (whole weight read)", lambda: weight.sum())
    for mb in (8, 16, 24, 32, 48):
        nbytes = min(int(mb * MB), total)
        for label, chunk in (("bulk 4K", 4096), ("bulk 16K", 16384), ("bulk 64K", 65536), ("line", 0)):
            case(f"{label} {mb} MB", lambda chunk=chunk, nbytes=nbytes: fetch(weight, nbytes, chunk))
    cold = found["cold"]["product_us"]
    result = {"device": torch.cuda.get_device_name(), "weight_mb": total / MB, "cases": found,
              "speedup_vs_cold": {k: cold / v["product_us"] for k, v in found.items()}}
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
