"""The decode step's q/k/v and o products as trainer/gluon_products.py's kernel (the whole weight
tile in shared memory before the wait) against cuBLAS, 28 layers in one CUDA graph.

    python bench/gpu_gluon_products.py [--out $OUT/gluon_products.json]    # on the GPU machine (Hopper)
    python bench/gpu_gluon_products.py --compile-only                     # anywhere: sm_90a, ptxas's figures

Qwen2.5-1.5B's shapes at batch 128: q/k/v [2048, 1536] and o [1536, 1536], random bf16 weights
(28 of each, none stays in the L2 between replays of the same kind... the o weights' 132 MB and
q/k/v's 176 MB both pass the H200's 50 MB L2). For every shape that fits (64 or 128 columns, K
slices filling half to twice the multiprocessors): the partials' sum against float32 x @ w^T
(relative error; bf16 inputs, float32 sums) and the PDL launch's partials against the plain
launch's (bitwise), and ms a step for cuBLAS (bf16 out), the kernel
launched plainly, with programmatic dependent launch (each launch overlapping the one before's
tail, as in the chained step) loading its weights before it waits, the same waiting before any
load, the same letting the next launch start only at its end (`early` False); and cuBLAS again
at the end (the noise).

On an H200 (docs/benchmarks.md, issue 18, calls 57-59), ms for 28 layers: o 64 columns x 3 slices
0.108 with PDL (0.153 plain, 0.146 waiting first, 0.136 letting the next start at its end), x 4
0.114, against cuBLAS's 0.159; q/k/v 64 x 4 0.130 with PDL (0.166 plain, 0.142 waiting first)
against 0.164; every partial within 5e-7 of float32.
"""

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import torch
from gpu_common import write_json

LAYERS, ROWS, H = 28, 128, 1536
KINDS = {"qkv": 2048, "o": 1536}


def shapes(n: int, k: int, sms: int) -> list[tuple[int, int]]:
    from trainer import gluon_products as gp

    return [(bn, s) for bn in (64, 128) for s in range(1, 17)
            if gp.fits(n, k, ROWS, bn, s) and sms // 2 <= n // bn * s <= 2 * sms]


def compile_only() -> int:
    from trainer import gluon_products as gp

    bad = 0
    for kind, n in KINDS.items():
        for bn, s in shapes(n, H, 132):
            report = gp.compile_report(n, H, ROWS, bn, s)
            print(f"{kind} {bn} columns x {s} slices: {report}", flush=True)
            bad += report["spill_bytes"] > 0 or report["shared"] > gp.MAX_SHARED
    return 1 if bad else 0


def measure() -> dict:
    import torch.nn.functional as F

    from trainer import gluon_products as gp
    from trainer.triton_products import _graph_ms

    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(ROWS, H, device=dev, generator=gen).to(torch.bfloat16)
    found = {"device": torch.cuda.get_device_name(), "kinds": {}}
    for kind, n in KINDS.items():
        weights = [(torch.randn(n, H, device=dev, generator=gen) * H ** -0.5).to(torch.bfloat16)
                   for _ in range(LAYERS)]
        want = x.float() @ weights[0].float().T

        def step_ms(fn, weights=weights) -> float:  # fn(w) for all 28 layers' weights, in one graph
            return _graph_ms(lambda: [fn(w) for w in weights], replays=30)

        rows = {"cublas": step_ms(lambda w: F.linear(x, w))}
        for bn, s in shapes(n, H, sms):
            name = f"{bn} columns x {s} slices"
            run = partial(gp.product, x, block_n=bn, splits=s)
            try:
                plain = run(weights[0], pdl=False)
                rows[name] = {
                    "error": ((plain.sum(0) - want).norm() / want.norm()).item(),
                    "pdl_bitwise_equal": bool(torch.equal(plain, run(weights[0], pdl=True))),
                    "plain_ms": step_ms(partial(run, pdl=False)), "pdl_ms": step_ms(partial(run, pdl=True)),
                    "pdl_wait_first_ms": step_ms(partial(run, pdl=True, ahead=False)),
                    "pdl_late_ms": step_ms(partial(run, pdl=True, early=False))}
            except Exception as exc:  # noqa: BLE001 - a shape failing is a finding, the others go on
                rows[name] = {"failed": repr(exc)[:300]}
                torch.cuda.synchronize()
            print(f"{kind} {name}: {rows[name]}", flush=True)
        rows["cublas again"] = step_ms(lambda w: F.linear(x, w))
        print(f"{kind} cublas {rows['cublas']:.4f} / {rows['cublas again']:.4f} ms", flush=True)
        found["kinds"][kind] = rows
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--compile-only", action="store_true")
    args = p.parse_args(argv)
    if args.compile_only:
        return compile_only()
    found = measure()
    print(json.dumps(found), flush=True)
    if args.out:
        write_json(args.out, found)
    return 0


if __name__ == "__main__":
    sys.exit(main())
