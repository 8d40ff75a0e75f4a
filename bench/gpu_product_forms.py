"""The decode step's four products in other forms cuBLAS offers, against F.linear, on one GPU.

Usage (on the GPU machine):
    python bench/gpu_product_forms.py [--out $OUT/product_forms.json]

At batch 128 cuBLAS runs Qwen2.5-1.5B's gate/up product (1536 -> 17920) as 140 tiles on an
H200's 132 multiprocessors, a second wave of 8 (docs/benchmarks.md, issue 18). Each form below
asks cuBLAS the same product another way, so that its heuristics may pick other tiles:
  linear      F.linear(x, w, b): what the fused decode step runs (the baseline)
  transposed  the output's transpose, w @ x^T ([N, 128]; the bias added by addmm)
  blas        F.linear with torch's preferred BLAS library switched to cuBLAS (not cuBLASLt)
  chunks2/4   the transposed form in 2 or 4 column chunks, one after another on one stream
  streams2    the transposed form in 2 column chunks on two streams (a graph with two branches)
Per kind and form: 28 layers' weights (random bf16, the model's shapes) in one CUDA graph,
replayed 30 times after a warm one (`trainer.triton_products._graph_ms`), CUDA events; ms per step (28 products), side by side in one
process, and the largest difference from the baseline's output (they must agree to bf16 rounding).
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

from gpu_common import write_json

LAYERS, BATCH = 28, 128
SHAPES = {"qkv": (2048, 1536, True), "o": (1536, 1536, False), "gate_up": (17920, 1536, False),
          "down": (1536, 8960, False)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    import torch
    import torch.nn.functional as F

    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    side = torch.cuda.Stream()

    def forms(x, w, b):
        def linear():
            return F.linear(x, w, b)

        def transposed():
            return (torch.addmm(b[:, None], w, x.T) if b is not None else torch.mm(w, x.T)).T

        def chunked(n: int, streams: bool):
            def run():
                out = torch.empty(w.shape[0], x.shape[0], device=dev, dtype=x.dtype)
                bounds = [w.shape[0] * i // n for i in range(n + 1)]
                for i in range(n):
                    lo, hi = bounds[i], bounds[i + 1]
                    use = side if streams and i % 2 else None
                    if use is not None:
                        use.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(use) if use is not None else nullcontext():
                        torch.mm(w[lo:hi], x.T, out=out[lo:hi])
                        if b is not None:
                            out[lo:hi].add_(b[lo:hi, None])
                if streams:
                    torch.cuda.current_stream().wait_stream(side)
                return out.T
            return run

        return {"linear": linear, "transposed": transposed, "blas": linear,
                "chunks2": chunked(2, False), "chunks4": chunked(4, False), "streams2": chunked(2, True)}

    found: dict[str, dict[str, dict[str, float]]] = {}
    for kind, (n, k, has_bias) in SHAPES.items():
        weights = [(torch.randn(n, k, device=dev, generator=gen) / k ** 0.5).to(torch.bfloat16) for _ in range(LAYERS)]
        biases = [torch.randn(n, device=dev, generator=gen).to(torch.bfloat16) if has_bias else None
                  for _ in range(LAYERS)]
        x = torch.randn(BATCH, k, device=dev, generator=gen).to(torch.bfloat16)
        want = [F.linear(x, w, b).float() for w, b in zip(weights, biases, strict=True)]
        found[kind] = {}
        for name in forms(x, weights[0], biases[0]):
            try:
                found[kind][name] = _time_form(x, weights, biases, want, name, forms)
            except Exception as exc:  # noqa: BLE001 - a form failing is a finding
                found[kind][name] = {"error": repr(exc)[:300]}
                torch.cuda.synchronize()
            row = found[kind][name]
            print(f"{kind:8s} {name:11s} " + (f"{row['ms']:.4f} ms  ({row['ms'] / found[kind]['linear']['ms']:.3f}x"
                                              f" of linear)  max diff {row['max_diff']:.2e}"
                                              if "ms" in row else row["error"]), flush=True)
    result = {"device": torch.cuda.get_device_name(), "layers": LAYERS, "batch": BATCH, "forms": found}
    if args.out:
        write_json(args.out, result)
    return 0


def _time_form(x, weights, biases, want, name, forms) -> dict[str, float]:
    """One form over every layer's weight: its largest difference from F.linear's output, then
    milliseconds per graph replay. "blas" is F.linear with torch's BLAS library set to cuBLAS."""
    import torch

    from trainer.triton_products import _graph_ms

    backend = torch.backends.cuda.preferred_blas_library()
    if name == "blas":
        torch.backends.cuda.preferred_blas_library("cublas")
    fns = [forms(x, w, b)[name] for w, b in zip(weights, biases, strict=True)]
    try:
        outs = [fn() for fn in fns]
        torch.cuda.synchronize()
        max_diff = max(float((o.float() - w).abs().max()) for o, w in zip(outs, want, strict=True))
        return {"ms": _graph_ms(lambda: [fn() for fn in fns], replays=30), "max_diff": max_diff}
    finally:
        torch.backends.cuda.preferred_blas_library(backend)


if __name__ == "__main__":
    sys.exit(main())
