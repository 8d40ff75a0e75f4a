"""Run the real NVML path of rltui.gpu on a GPU machine and a job's usage accounting under load.

Usage:
    python bench/nvml_probe.py [--seconds 10] [--out DIR]      (DIR defaults to $OUT, else .)

1. One snapshot of every GPU through NvmlSampler (the code the TUI, `status` and the keeper use),
   printed as a table and saved as JSON; the time one snapshot takes (mean of 20).
2. A real job launched through rltui.jobs on GPU 0 (assignment through NVML, CUDA_VISIBLE_DEVICES
   set by the keeper) that runs bf16 matmuls with torch for --seconds; while it runs, a snapshot
   whose GPU processes are mapped to their job through the process tree; at the end, the usage
   the keeper recorded (GPU-seconds, peak memory, mean utilisation, energy, cost at a price of
   2.00 per GPU-hour set through RLTUI_GPU_HOUR_PRICE).
Writes nvml_probe.json under DIR. Without a GPU it prints the reason and exits 0 after step 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rltui import gpu
from rltui.jobs import builders, control  # noqa: E402
from rltui.gpu import fmt  # noqa: E402
from rltui.jobs.records import JobKind, JobSpec, read_state  # noqa: E402
from rltui.runs.localfs import Layout  # noqa: E402

LOAD = """
import time, torch
x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
end = time.time() + {seconds}
n = 0
while time.time() < end:
    y = x @ x
    n += 1
torch.cuda.synchronize()
print(f"{{n}} matmuls of 8192x8192 bf16 on", torch.cuda.get_device_name(0), flush=True)
"""


def table(snap: gpu.GpuSnapshot) -> str:
    lines = [f"driver {snap.driver}  reason {snap.reason}"]
    for g in snap.gpus:
        lines.append(
            f"GPU {g.index} {g.name} lost={g.lost} util {fmt(g.util_pct, '%')} "
            f"mem {fmt(g.mem_used_mib, '')}/{fmt(g.mem_total_mib, ' MiB')} temp {fmt(g.temp_c, 'C')} "
            f"power {fmt(g.power_w, 'W', 1)}/{fmt(g.power_limit_w, 'W')} energy {fmt(g.energy_j, 'J')}")
        for p in g.processes:
            lines.append(f"    pid {p.pid} {fmt(p.used_mib, ' MiB')} job {p.job} run {p.run}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--out", default=os.environ.get("OUT") or ".")
    args = ap.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {}

    sampler = gpu.NvmlSampler()
    snap = sampler.sample()
    t0 = time.perf_counter()
    for _ in range(20):
        sampler.sample()
    result["sample_ms"] = (time.perf_counter() - t0) / 20 * 1000
    result["idle"] = snap.to_json()
    print("== NVML snapshot (idle)")
    print(table(snap))
    print(f"one snapshot of every GPU: {result['sample_ms']:.2f} ms (mean of 20)")
    if not snap.gpus:
        (out_dir / "nvml_probe.json").write_text(json.dumps(result, indent=2))
        return 0

    os.environ["RLTUI_GPU_HOUR_PRICE"] = "2.00"
    layout = Layout(Path(tempfile.mkdtemp(prefix="nvml-probe-"))).ensure()
    spec = JobSpec(id=builders.new_job_id(JobKind.EVAL), kind=JobKind.EVAL, title="nvml probe load",
                   argv=(sys.executable, "-c", LOAD.format(seconds=args.seconds)), gpu_count=1)
    job = control.launch(layout, spec)
    if job.state.state.value == "queued":
        print("no GPU is free by NVML (memory in use); starting the probe job on one anyway")
        control.stop(layout, job.id)
        job = control.launch(layout, spec.with_changes(id=builders.new_job_id(JobKind.EVAL)), check_usage=False)
    print(f"\n== job {job.id} on GPU {job.state.gpus}")
    time.sleep(min(5.0, args.seconds / 2))
    busy = control.gpu_snapshot(layout)
    result["busy"] = busy.to_json()
    print(table(busy))
    while not read_state(layout, job.id).state.final:
        time.sleep(0.5)
    state = read_state(layout, job.id)
    result["job"] = {"state": state.state.value, "gpus": state.gpus, "usage": state.usage.to_json(),
                     "log": control.read_log(layout, job.id)}
    print(control.read_log(layout, job.id))
    print("usage recorded by the keeper:", json.dumps(state.usage.to_json(), indent=2))
    (out_dir / "nvml_probe.json").write_text(json.dumps(result, indent=2))
    return 0 if state.state.value == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
