"""The decode step's kernels under Nsight Compute: the hardware's own counters for each kind.

    python bench/gpu_counters.py --out $OUT/counters     # on the GPU machine (ncu on the PATH or in /opt/nvidia)

Fourteen sessions timed the decode replay's kernels from outside (CUDA graphs, events, the
profiler's clock, variants that leave a part out) and read their PTX and SASS. This asks the
counters: for one launch of each kind of kernel at Qwen2.5-1.5B's shapes, batch 128, how much of
the memory's and the L2's bandwidth it used, how busy the tensor pipe was, and where its warps
waited (ncu's warp-state and per-instruction stall samples). Each kernel is profiled with
`--set full` under kernel replay, clocks left alone (`--clock-control none`, METHOD.md), the
caches flushed before each pass (ncu's default): every weight read comes from memory, as in the
step, where a layer's 90 MB do not fit the 50 MB L2.

The kernels, launched eagerly inside one NVTX range (`profile`) after a warm-up outside it:
  the Triton MLP block (trainer/mlp_block.py), its three phases alone, the Gluon block
  (trainer/gluon_mlp.py), its gate/up loads alone (a timing mode); the decode attention at 383
  filled slots of 384 (fused_decode.rope_attention); q/k/v as cuBLAS's product; o as the Gluon
  product (64 columns x 4 K slices); the head (cuBLAS, 151,936 columns).

Written under --out: the report (`decode.ncu-rep`), its details page (`details.csv`) and every
raw metric (`raw.csv`), the per-instruction source page (`source.csv`, SASS with stall samples),
and `summary.json`: per kernel a few metrics read back from the raw page and its hot spots (the
share of its warp stall samples by opcode, its top instructions). `--report DIR` makes
summary.json again from a run's CSVs, anywhere.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from gpu_common import write_json, write_text  # (after the path above)

# (column in ncu's raw page, name in summary.json)
METRICS = (("gpu__time_duration.sum", "us"),
           ("dram__bytes_read.sum", "dram_read_mb"),
           ("dram__bytes_read.sum.per_second", "dram_read_tb_s"),
           ("gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed", "dram_pct"),
           ("l1tex__m_xbar2l1tex_read_bytes.sum", "l2_to_sm_mb"),
           ("lts__throughput.avg.pct_of_peak_sustained_elapsed", "l2_pct"),
           ("lts__t_sector_hit_rate.pct", "l2_hit_pct"),
           ("sm__throughput.avg.pct_of_peak_sustained_elapsed", "sm_pct"),
           ("sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active", "tensor_pct"),
           ("launch__grid_size", "grid"),
           ("launch__shared_mem_per_block_dynamic", "smem_dynamic_kb"),
           ("sm__warps_active.avg.pct_of_peak_sustained_active", "occupancy_pct"))
STALL_PREFIX = "smsp__average_warp_latency_issue_stalled_"
STALL_PREFIX_ALT = "smsp__average_warps_issue_stalled_"


def find_ncu() -> str:
    found = shutil.which("ncu") or next(iter(sorted(glob.glob("/opt/nvidia/nsight-compute/*/ncu"))), None)
    if not found:
        sys.exit("ncu not found on the PATH or under /opt/nvidia/nsight-compute")
    return found


def target() -> int:
    """The workload ncu profiles: warm every kernel, then one launch of each inside `profile`."""
    import torch
    import torch.nn.functional as F
    from gpu_attention_rows import setup
    from gpu_gluon_mlp import EPS, HIDDEN, INTERMEDIATE, buffers

    from trainer import gluon_mlp, gluon_products, mlp_block
    from trainer.fused_decode import rope_attention
    from trainer.qwen2_decode import ModelDims

    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, device=dev, generator=gen) * scale).to(torch.bfloat16)

    # one layer (ncu's kernel replay saves and restores the memory a kernel may touch: keep it small)
    gate_up, down = rand(2 * INTERMEDIATE, HIDDEN, scale=HIDDEN ** -0.5), rand(HIDDEN, INTERMEDIATE,
                                                                              scale=INTERMEDIATE ** -0.5)
    norm, x0 = 1 + 0.1 * rand(HIDDEN), rand(128, HIDDEN)
    h0 = rand(128, HIDDEN)
    triton_shape = mlp_block.BlockShape.for_gpu(dev)
    gluon_shape = mlp_block.BlockShape.for_gpu(dev, gluon=True, pdl=True)
    dims = ModelDims(layers=1, hidden=HIDDEN, heads=12, kv_heads=2, head_dim=128, intermediate=INTERMEDIATE,
                     vocab=151936, eps=EPS, rope_theta=1e6)
    state, qkv, bias = setup(dev, 1, 128, 448, dims, 383, 384)
    w_qkv = (torch.randn(2048, HIDDEN, device=dev, generator=gen) * HIDDEN ** -0.5).to(torch.bfloat16)
    b_qkv = torch.zeros(2048, device=dev, dtype=torch.bfloat16)
    w_o = (torch.randn(HIDDEN, HIDDEN, device=dev, generator=gen) * HIDDEN ** -0.5).to(torch.bfloat16)
    head = (torch.randn(151936, HIDDEN, device=dev, generator=gen) * HIDDEN ** -0.5).to(torch.bfloat16)

    kernels = {
        "triton block": lambda: mlp_block.mlp_block(x0, h0, gate_up, down, norm, EPS, triton_shape),
        "triton gate/up phase": lambda: mlp_block.mlp_block(x0, h0, gate_up, down, norm, EPS, triton_shape,
                                                            phases=(1,)),
        "triton down phase": lambda: mlp_block.mlp_block(x0, h0, gate_up, down, norm, EPS, triton_shape,
                                                         phases=(2,)),
        "triton reduce + norm phase": lambda: mlp_block.mlp_block(x0, h0, gate_up, down, norm, EPS, triton_shape,
                                                                  phases=(3,)),
        "gluon block": lambda: gluon_mlp.block(x0, h0, gate_up, down, norm, EPS, gluon_shape, buffers(gluon_shape)),
        "gluon gate/up loads alone": lambda: gluon_mlp.block(x0, h0, gate_up, down, norm, EPS, gluon_shape,
                                                             buffers(gluon_shape), phases=(1,), no_rest=True,
                                                             no_mma=True),
        "attention 383 of 384 slots": lambda: rope_attention(dims, qkv, state, state.kv_cache[0], bias, 384),
        "q/k/v cuBLAS": lambda: F.linear(h0, w_qkv, b_qkv),
        "o gluon 64x4": lambda: gluon_products.product(x0, w_o, block_n=64, splits=4, pdl=True),
        "head cuBLAS": lambda: F.linear(h0, head),
    }
    for run in kernels.values():  # compile, autotune, allocate
        run()
        run()
    torch.cuda.synchronize()
    order = []
    torch.cuda.nvtx.range_push("profile")
    for name, run in kernels.items():
        order.append(name)
        run()
        torch.cuda.synchronize()
    torch.cuda.nvtx.range_pop()
    print(json.dumps({"order": order, "device": torch.cuda.get_device_name()}), flush=True)
    return 0


def export(ncu: str, report: Path, page: str, *extra: str) -> str:
    done = subprocess.run([ncu, "--import", str(report), "--page", page, "--csv", *extra],
                          capture_output=True, text=True, check=False)
    return done.stdout if done.returncode == 0 else done.stdout + "\n" + done.stderr


def summarize(raw: str, order: list[str]) -> list[dict]:
    rows = list(csv.DictReader(io.StringIO(raw)))
    rows = [r for r in rows if r.get("Kernel Name") and r.get("ID", "").isdigit()]
    found = []
    for i, row in enumerate(rows):
        entry = {"label": order[i] if i < len(order) else "", "kernel": row["Kernel Name"][:80]}
        for column, name in METRICS:
            if column in row:
                entry[name] = row[column]
        stalls = {}
        for column, value in row.items():
            for prefix in (STALL_PREFIX, STALL_PREFIX_ALT):
                if column.startswith(prefix) and column.endswith(".ratio"):
                    try:
                        stalls[column[len(prefix):].split("_per_")[0].removesuffix(".ratio")] = float(value)
                    except ValueError:
                        pass
        entry["stalls"] = dict(sorted(stalls.items(), key=lambda kv: -kv[1])[:8])
        found.append(entry)
    return found


def hot_spots(source: str, top: int = 6) -> list[dict]:
    """Per kernel of ncu's source page (SASS, `--csv`): the share of its warp stall samples by
    opcode and its `top` instructions by samples. Instructions without a listed reason (ncu's
    export has no column for some, e.g. a wgmma's wait on the tensor pipe) still count."""
    import re

    found = []
    for chunk in source.split('"Kernel Name",')[1:]:
        lines = chunk.splitlines()
        rows = list(csv.DictReader(io.StringIO("\n".join(lines[1:]))))
        samples = [float(r.get("Warp Stall Sampling (All Samples)") or 0) for r in rows]
        total = sum(samples) or 1.0
        by_op: dict[str, float] = {}
        for row, n in zip(rows, samples, strict=True):
            op = re.sub(r"^@!?U?P\w+\s+", "", row.get("Source", "").strip()).split(" ")[0]
            by_op[op] = by_op.get(op, 0.0) + n
        order = sorted(range(len(rows)), key=lambda i: -samples[i])[:top]
        found.append({"kernel": lines[0].strip('",'), "samples": int(total),
                      "by_opcode_pct": {op: round(100 * n / total, 1)
                                        for op, n in sorted(by_op.items(), key=lambda kv: -kv[1])[:8]},
                      "top": [{"index": i, "pct": round(100 * samples[i] / total, 1),
                               "sass": rows[i].get("Source", "").strip()[:70]} for i in order]})
    return found


def report(folder: Path, order: list[str]) -> int:
    """summary.json (the raw page's metrics and each kernel's hot spots) from the CSVs in `folder`."""
    summary = summarize((folder / "raw.csv").read_text(), order)
    source = folder / "source.csv"
    for entry, hot in zip(summary, hot_spots(source.read_text()) if source.exists() else [], strict=False):
        entry["hot"] = hot
    write_json(folder / "summary.json", summary)
    for entry in summary:
        print(json.dumps(entry), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("counters"))
    p.add_argument("--report", type=Path, default=None,
                   help="only summarize an earlier run's CSVs in this folder (anywhere, no GPU)")
    p.add_argument("--target", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.target:
        return target()
    if args.report:
        return report(args.report, [])
    ncu = find_ncu()
    args.out.mkdir(parents=True, exist_ok=True)
    report_file = args.out / "decode.ncu-rep"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    done = subprocess.run([ncu, "--clock-control", "none", "--set", "full", "--import-source", "no",
                           "--nvtx", "--nvtx-include", "profile/", "--replay-mode", "kernel",
                           "-f", "-o", str(report_file.with_suffix("")),
                           sys.executable, __file__, "--target"], capture_output=True, text=True, env=env,
                          check=False, timeout=480)
    write_text(args.out / "ncu.log", done.stdout[-200000:] + "\n--- stderr\n" + done.stderr[-200000:])
    print(done.stdout[-3000:], done.stderr[-3000:], flush=True)
    if not report_file.exists():
        print(f"no report (ncu exit {done.returncode})")
        return 1
    order = []
    for line in done.stdout.splitlines():
        if line.startswith('{"order"'):
            order = json.loads(line)["order"]
    write_text(args.out / "raw.csv", export(ncu, report_file, "raw"))
    write_text(args.out / "details.csv", export(ncu, report_file, "details"))
    write_text(args.out / "source.csv", export(ncu, report_file, "source", "--print-source", "sass"))
    return report(args.out, order)


if __name__ == "__main__":
    raise SystemExit(main())
