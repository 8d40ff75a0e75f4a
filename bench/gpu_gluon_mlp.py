"""The MLP block in Gluon (trainer/gluon_mlp.py) against the Triton block (trainer/mlp_block.py).

    python bench/gpu_gluon_mlp.py [--out $OUT/gluon_mlp.json]    # on the GPU machine (Hopper)
    python bench/gpu_gluon_mlp.py --compile-only                # anywhere: every variant for sm_90a

Qwen2.5-1.5B's MLP halves at batch 128, 28 layers of random bf16 weights, chained (each layer's x
and h the next one's input) in one CUDA graph (`trainer.triton_products._graph_ms`, 30 replays), ms
a step, side by side in one process: the Triton block first and last, and one Gluon variant
(stages, weights asked for before the wait, PDL, the down tiles asked for before the first
barrier); then each phase alone (28 launches of it, no barriers) in both. Each Gluon variant runs
in its own process (`--one INDEX`), killed after TIMEOUT_S: a wrong mbarrier phase hangs a GPU,
and a hang must not take the whole call. Outputs after 28 layers against the Triton block's
(relative error: the two sum each tile's products in another order) and one layer's act bitwise.
`--profile`: each chain's launches on the GPU's clock (torch.profiler over one replay), the blocks
and their phases, and gate/up's loads alone (x's, the weights', both; 3-6 stages), which no output
check covers (timing-only modes).
On an H200 (docs/benchmarks.md, issue 18, calls 64-74): the Gluon block 1.12-1.14 ms against 1.00;
on the GPU's clock its gate/up loads alone take 20.1 us a layer, Triton's whole phase 20.2.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from pathlib import Path

from gpu_common import write_json

LAYERS, BATCH, HIDDEN, INTERMEDIATE, EPS = 28, 128, 1536, 8960, 1e-6
TIMEOUT_S = 120
# (label, BlockShape options)
VARIANTS = (("gluon s6 plain", {"stages": 6, "pdl": False}),
            ("gluon s6 plain, remainder left out (timing only)", {"stages": 6, "pdl": False, "no_rest": True}),
            ("gluon s6 plain rest16", {"stages": 6, "pdl": False, "rest": 16}),
            ("gluon s6 pdl ahead3", {"stages": 6, "pdl": True, "ahead": 3}))


def buffers(shape):
    """trainer/mlp_block.workspace's buffers for these widths (the Gluon block's activation,
    partials and barrier counters)."""
    import torch

    from trainer import mlp_block

    splits = shape.plan(HIDDEN, INTERMEDIATE)["SPLITS"]
    return mlp_block.workspace(torch.device("cuda"), BATCH, HIDDEN, INTERMEDIATE, splits, torch.bfloat16)


def workload():
    """28 layers of random bf16 weights (gate | up, down, the next norm) and a batch's x and h."""
    import torch

    from trainer.qwen2_decode import rms_norm

    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, device=dev, generator=gen) * scale).to(torch.bfloat16)

    layers = [(rand(2 * INTERMEDIATE, HIDDEN, scale=HIDDEN ** -0.5),
               rand(HIDDEN, INTERMEDIATE, scale=INTERMEDIATE ** -0.5), 1 + 0.1 * rand(HIDDEN)) for _ in range(LAYERS)]
    x0 = rand(BATCH, HIDDEN)
    return layers, x0, rms_norm(x0, 1 + 0.1 * rand(HIDDEN), EPS)


def chain(layers, x0, h0, shape, phases=None, timing: str = ""):
    """A function running the 28 layers' blocks one after another (`phases`: those launches
    only). `timing` (the Gluon block, wrong numbers): "no_rest" leaves the remainder out, "no_mma"
    gate/up's products too, "no_mma_x" / "no_mma_w" all but x's / the weights' loads too."""
    from trainer import gluon_mlp, mlp_block

    options = {"no_rest": bool(timing), "no_mma": timing.startswith("no_mma"),
               "loads": {"no_mma_x": 1, "no_mma_w": 2}.get(timing, 3)}

    def run():
        x, h = x0, h0
        for gate_up, down, norm in layers:
            if shape.gluon:
                x, h = gluon_mlp.block(x, h, gate_up, down, norm, EPS, shape, buffers(shape), phases=phases, **options)
            else:
                x, h = mlp_block.mlp_block(x, h, gate_up, down, norm, EPS, shape, phases=phases)
        return x, h
    return run


def compile_only() -> int:
    from trainer import gluon_mlp
    from trainer.mlp_block import BlockShape

    bad = 0
    for label, options in VARIANTS:
        options = {k: v for k, v in options.items() if k != "no_rest"}
        found = gluon_mlp.compile_report(BATCH, HIDDEN, INTERMEDIATE, BlockShape(programs=132, gluon=True, **options))
        print(f"{label}: {found}", flush=True)
        bad += bool(found["spill_bytes"] or found["serialized"])
    return 1 if bad else 0


def one(index: int) -> dict:
    import torch

    from trainer import gluon_mlp, mlp_block
    from trainer.triton_products import _graph_ms

    label, options = VARIANTS[index]
    dev = torch.device("cuda")
    layers, x0, h0 = workload()
    triton_shape = mlp_block.BlockShape.for_gpu(dev)
    timing = "no_rest" if options.get("no_rest") else ""
    shape = mlp_block.BlockShape.for_gpu(dev, gluon=True, **{k: v for k, v in options.items() if k != "no_rest"})
    row: dict = {"label": label, "options": options, "sms": shape.programs, "device": torch.cuda.get_device_name()}
    want = chain(layers, x0, h0, triton_shape)()
    row["triton block ms"] = _graph_ms(chain(layers, x0, h0, triton_shape), replays=30)
    print(json.dumps(row), flush=True)  # a hang or crash after this still leaves the baseline
    gate_up, down, norm = layers[0]
    one_layer = gluon_mlp.block(x0, h0, gate_up, down, norm, EPS, shape, buffers(shape), no_rest=bool(timing))
    ref = mlp_block.mlp_block(x0, h0, gate_up, down, norm, EPS, triton_shape)
    act = buffers(shape)[0]  # the Triton block's activation now; the same workspace
    ref_act = act.clone()
    gluon_mlp.block(x0, h0, gate_up, down, norm, EPS, shape, buffers(shape), no_rest=bool(timing))
    row["one layer act bitwise equal"] = float((act == ref_act).float().mean())
    row["one layer rel error (x, h)"] = [float((g.float() - w.float()).norm() / w.float().norm())
                                         for g, w in zip(one_layer, ref, strict=True)]
    got = chain(layers, x0, h0, shape, timing=timing)()
    row["28 layers rel error (x, h)"] = [float((g.float() - w.float()).norm() / w.float().norm())
                                         for g, w in zip(got, want, strict=True)]
    row["barrier gave up"] = mlp_block.failed(dev)
    row["gluon block ms"] = _graph_ms(chain(layers, x0, h0, shape, timing=timing), replays=30)
    row["triton block again ms"] = _graph_ms(chain(layers, x0, h0, triton_shape), replays=30)
    row["ratio"] = row["gluon block ms"] / row["triton block ms"]
    for phase in (1, 2, 3):
        for name, block_shape in (("triton", triton_shape), ("gluon", shape)):
            run = chain(layers, x0, h0, block_shape, (phase,), timing)
            row[f"phase {phase} {name} ms"] = _graph_ms(run, replays=30)
    row["barrier gave up"] |= mlp_block.failed(dev)
    print(json.dumps(row), flush=True)
    return row


def profile() -> dict:
    """Each chain's kernels on the GPU's clock (torch.profiler over one graph replay): the mean
    launch's duration and the mean gap from one launch's end to the next one's start."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from trainer import mlp_block

    dev = torch.device("cuda")
    layers, x0, h0 = workload()
    triton_shape = mlp_block.BlockShape.for_gpu(dev)
    gluon_shape = mlp_block.BlockShape.for_gpu(dev, gluon=True)
    four = mlp_block.BlockShape.for_gpu(dev, gluon=True, stages=4)
    three = mlp_block.BlockShape.for_gpu(dev, gluon=True, stages=3)
    chains = {"triton block": (triton_shape, None, ""), "gluon block": (gluon_shape, None, ""),
              "gluon phase 1, no remainder, no products": (gluon_shape, (1,), "no_mma"),
              "gluon phase 1, x's loads only": (gluon_shape, (1,), "no_mma_x"),
              "gluon phase 1, the weights' loads only": (gluon_shape, (1,), "no_mma_w"),
              "gluon phase 1, no remainder, no products, 4 stages": (four, (1,), "no_mma"),
              "gluon phase 1, no remainder, no products, 3 stages": (three, (1,), "no_mma"),
              "gluon block, no remainder": (gluon_shape, None, "no_rest"),
              "triton phase 1": (triton_shape, (1,), ""), "gluon phase 1": (gluon_shape, (1,), ""),
              "gluon phase 1, no remainder": (gluon_shape, (1,), "no_rest"),
              "triton phase 2": (triton_shape, (2,), ""), "gluon phase 2": (gluon_shape, (2,), ""),
              }
    found = {}
    for name, (shape, phases, timing) in chains.items():
        run = chain(layers, x0, h0, shape, phases, timing)
        run()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            run()
        for _ in range(3):
            graph.replay()
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            graph.replay()
            torch.cuda.synchronize()
        spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                       if e.device_type.name == "CUDA" and "kernel" in e.name.lower())
        durations = [end - start for start, end in spans]
        gaps = [b[0] - a[1] for a, b in itertools.pairwise(spans)]
        found[name] = {"kernels": len(spans), "mean_us": sum(durations) / max(1, len(durations)),
                       "min_us": min(durations, default=0), "max_us": max(durations, default=0),
                       "mean_gap_us": sum(gaps) / max(1, len(gaps)),
                       "span_us": spans[-1][1] - spans[0][0] if spans else 0}
        print(f"{name:30s} " + " ".join(f"{k} {v:.2f}" for k, v in found[name].items()), flush=True)
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--compile-only", action="store_true")
    p.add_argument("--profile", action="store_true", help="kernel durations and gaps on the GPU's clock only")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.compile_only:
        return compile_only()
    if args.profile:
        found = profile()
        if args.out:
            write_json(args.out, {"layers": LAYERS, "batch": BATCH, "profile": found})
        return 0
    if args.one is not None:
        one(args.one)
        return 0
    rows = []
    for index, (label, _) in enumerate(VARIANTS):
        try:
            done = subprocess.run([sys.executable, __file__, "--one", str(index)], capture_output=True, text=True,
                                  timeout=TIMEOUT_S, check=False)
            lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
            row = lines[-1] if lines else {"label": label}
            if done.returncode:
                row["error"] = done.stderr[-1500:]
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            row = (lines[-1] if lines else {"label": label}) | {"error": f"timed out after {TIMEOUT_S} s"}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        write_json(args.out, {"layers": LAYERS, "batch": BATCH, "variants": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
