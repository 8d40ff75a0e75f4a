"""What the weight-stream benchmarks share (bench/gpu_gluon_stream.py, gpu_gluon_mlp_stream.py,
gpu_gluon_layer_stream.py): the host side of running their variants. The Gluon pieces their
kernels are built from are trainer/gluon_ring.py's.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from gpu_common import write_json
from gpu_gluon_ws import child_row

from trainer.gluon_products import gluon


def time_into(row: dict, name: str, run, *, gb: float | None = None, ratios: tuple[tuple[str, str], ...] = ()) -> None:
    """row["ms"][name] = ms a replay of `run` in a CUDA graph (30 replays), or the error it raised;
    then, over every timing so far, the weights' rate (`gb` GB a replay) and each ratio against a
    baseline (`ratios`: (key, baseline name or prefix "fused*"))."""
    from trainer.triton_products import _graph_ms

    try:
        row["ms"][name] = _graph_ms(run, replays=30)
    except Exception as exc:  # noqa: BLE001 - a side failing is a finding
        row["ms"][name] = repr(exc)[:300]
        torch.cuda.synchronize()
    ms = {k: t for k, t in row["ms"].items() if isinstance(t, float)}
    if gb is not None:
        row["weights_tb_s"] = {k: gb / t for k, t in ms.items()}
    for key, base in ratios:
        bases = [t for k, t in ms.items() if (k.startswith(base[:-1]) if base.endswith("*") else k == base)]
        if bases:
            row[key] = {k: t / min(bases) for k, t in ms.items()}


def row_line(row: dict, shown) -> str:
    """One printed line for a variant's row: its timings (and rates), the keys `shown(key)` picks,
    how its process ended."""
    rates = row.get("weights_tb_s", {})
    times = "  ".join((f"{name} {t:.4f} ms" + (f" ({rates[name]:.2f} TB/s)" if name in rates else ""))
                      if isinstance(t, float) else f"{name} {t}" for name, t in row.get("ms", {}).items())
    checks = "  ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                       if shown(k) or k == "skipped")
    tail = "" if row["ended"] == "exit 0" else f"  [{row['ended']}] {row.get('stderr', '')[-600:]!r}"
    return f"{row['variant']}: {times}  {checks}{tail}"


def compile_all(kernels) -> int:
    """`--compile-only`: each (name, compile) of `kernels`, compile() giving a kernel compiled for
    sm_90a without a GPU (trainer.gluon_products.compile_for_hopper); print ptxas's registers,
    spills and shared memory for each; 1 if any does not compile, spills or has its wgmma serialized."""
    import time

    from trainer.gluon_products import ptx_report

    bad = 0
    for name, compile_one in kernels:
        start = time.time()
        try:
            report = ptx_report(compile_one())
        except Exception as exc:  # noqa: BLE001 - a variant that does not compile is the finding
            print(f"{name}: does not compile: {exc!r}"[:3000], flush=True)
            bad += 1
            continue
        print(f"{name}: {report} compiled in {time.time() - start:.1f} s", flush=True)
        bad += bool(report["spill_bytes"] or report["serialized"])
    return 1 if bad else 0


def run_children(script: str, variants, label, timeout: float, line) -> list[dict]:
    """Each variant in a child process (`script --one INDEX`, gpu_gluon_ws.child_row), printing
    `line(row)` for each. After a child killed at its timeout the rest are not run (a kernel that
    hangs in one form likely hangs in the next, and each costs the GPU call its timeout)."""
    found = []
    for index, variant in enumerate(variants):
        if any(row["ended"].startswith("killed") for row in found):
            found.append({"variant": label(variant), "ended": "not run: a variant before it hung"})
        else:
            found.append(child_row(script, index, timeout, {"variant": label(variant)}))
        print(line(found[-1]), flush=True)
    return found


def bench_main(argv, doc: str, script: str, compile_only, one, variants, label, timeout: float, line, meta: dict,
               extra=None) -> int:
    """A stream benchmark's main: --compile-only, a child's --one, or every variant in its own child
    process, the rows to --out with `meta`. `extra(parser)` adds options and returns a function of
    the parsed options that answers instead (an exit code) or None to go on."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--compile-only", action="store_true", help="compile every variant for sm_90a (no GPU) and exit")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # a child: one variant, JSON lines
    first = extra(p) if extra else None
    args = p.parse_args(argv)
    if gluon is None:
        print("Triton's Gluon is not installed", file=sys.stderr)
        return 1
    answered = first(args) if first else None
    if answered is not None:
        return answered
    if args.compile_only:
        return compile_only()
    if args.one is not None:
        one(args.one)
        return 0
    print(torch.cuda.get_device_name(), flush=True)
    found = run_children(script, variants, label, timeout, line)
    if args.out:
        write_json(args.out, {"device": torch.cuda.get_device_name(), **meta, "variants": found})
    return 0


def print_row(row: dict) -> None:
    print(json.dumps(row), flush=True)
