"""What supervision costs: reconcile at start, launching through the keeper, the keeper's CPU.

Usage:
    python bench/jobs_overhead.py [--jobs 1000,5000] [--launches 5] [--watch-s 10]

Each figure is printed beside a plain baseline measured in the same process:
- reconcile (run by `rltui` and every `--batch` command) over N ended jobs, against a loop that
  only opens and parses every jobs/*/state.json with json.load;
- jobs.launch of `python -c print(...)` until its first line is in output.log, against
  subprocess.Popen of the same command until its first line arrives on a pipe;
- the keeper's own CPU time while it supervises a sleeping child (polls of status.json and
  state, usage sampling without a GPU), as a share of one core.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402

from rltui.jobs import builders, control  # noqa: E402
from rltui.jobs.records import JobKind, JobSpec, JobState, StateFile, read_state, write_spec, write_state  # noqa: E402
from rltui.runs.localfs import Layout  # noqa: E402


def make_jobs(layout: Layout, n: int) -> None:
    for i in range(n):
        spec = JobSpec(id=f"20260101-000000-train-{i:05d}", kind=JobKind.TRAIN, argv=("true",),
                       run=f"run_2026-01-01_00-00-{i % 60:02d}")
        write_spec(layout, spec)
        state = StateFile(JobState.SUCCEEDED if i % 3 else JobState.FAILED, run=spec.run)
        state.note("completed")
        write_state(layout, spec.id, state, durable=False)


def baseline_read_states(layout: Layout) -> int:
    n = 0
    for e in os.scandir(layout.jobs):
        if e.is_dir():
            with open(os.path.join(e.path, "state.json"), "rb") as f:
                json.load(f)
            n += 1
    return n


def best_of(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_reconcile(sizes: list[int]) -> None:
    print("reconcile over N ended jobs (best of 5)")
    for n in sizes:
        layout = Layout(Path(tempfile.mkdtemp(prefix="bench-jobs-"))).ensure()
        make_jobs(layout, n)
        base = best_of(lambda: baseline_read_states(layout))
        ours = best_of(lambda: control.reconcile(layout))
        print(f"  N={n:>5}: reconcile {ours * 1000:7.1f} ms   read+parse every state.json "
              f"{base * 1000:7.1f} ms   ratio {ours / base:.2f}")


def first_line_in(path: Path, marker: str, deadline: float) -> None:
    while time.perf_counter() < deadline:
        try:
            if marker in path.read_text():
                return
        except FileNotFoundError:
            pass
        time.sleep(0.002)
    raise TimeoutError(path)


def bench_launch(count: int) -> None:
    code = "print('hello from the job', flush=True)"
    plain, ours = [], []
    layout = Layout(Path(tempfile.mkdtemp(prefix="bench-launch-"))).ensure()
    for _ in range(count):
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        p.stdout.readline()
        plain.append(time.perf_counter() - t0)
        p.wait()
        spec = JobSpec(id=builders.new_job_id(JobKind.SYNC), kind=JobKind.SYNC,
                       argv=(sys.executable, "-c", code), gpu_count=0)
        t0 = time.perf_counter()
        control.launch(layout, spec)
        first_line_in(layout.job_log(spec.id), "hello from the job", t0 + 60)
        ours.append(time.perf_counter() - t0)
        while not read_state(layout, spec.id).state.final:
            time.sleep(0.01)
    p_med, o_med = statistics.median(plain), statistics.median(ours)
    print(f"launch to first output line (median of {count}): through the keeper {o_med * 1000:.0f} ms, "
          f"plain Popen {p_med * 1000:.0f} ms, ratio {o_med / p_med:.1f}")


def bench_keeper_cpu(watch_s: float) -> None:
    layout = Layout(Path(tempfile.mkdtemp(prefix="bench-keeper-"))).ensure()
    run = "run_2026-01-01_00-00-00"
    layout.run_dir(run).mkdir(parents=True)
    spec = JobSpec(id=builders.new_job_id(JobKind.TRAIN), kind=JobKind.TRAIN, run=run,
                   argv=(sys.executable, "-c", f"import time; time.sleep({watch_s + 5})"), gpu_count=0)
    control.launch(layout, spec)  # a training job: the keeper also watches status.json for hangs
    while read_state(layout, spec.id).state is not JobState.RUNNING:
        time.sleep(0.05)
    keeper = psutil.Process(read_state(layout, spec.id).keeper_pid)
    c0, t0 = sum(keeper.cpu_times()[:2]), time.perf_counter()
    time.sleep(watch_s)
    c1, t1 = sum(keeper.cpu_times()[:2]), time.perf_counter()
    control.kill(layout, spec.id)
    print(f"keeper CPU while supervising for {t1 - t0:.0f}s: {(c1 - c0) * 1000:.0f} ms "
          f"({(c1 - c0) / (t1 - t0) * 100:.2f}% of one core); RSS {keeper.memory_info().rss / 2**20:.0f} MiB")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", default="1000,5000")
    ap.add_argument("--launches", type=int, default=5)
    ap.add_argument("--watch-s", type=float, default=30.0)
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    bench_reconcile([int(x) for x in args.jobs.split(",")])
    bench_launch(args.launches)
    bench_keeper_cpu(args.watch_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
