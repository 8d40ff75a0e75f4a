"""How the run index scales: cold scan and one-run rescan against a plain tree walk.

Usage:
    python bench/index_scale.py [--sizes 100,1000,5000] [--workdir DIR] [--repeat 3] [--keep]

For each size, writes a synthetic localfs with bench/make_localfs.py (20 checkpoints and 2 eval
datasets of 5 steps per run, one job per run) unless DIR/runs_N exists already, then times, in
this process and interleaved so that both see the same machine load:

- walk:    os.scandir of every folder of the tree (the baseline: the least any scan can do);
- cold:    `Index(layout).scan()` on a new Index (nothing cached);
- warm:    `scan()` again on the same Index (parsed files come from the cache);
- rescan:  `refresh_run(name)` of one run whose status.json just changed (5 per repeat);
- status:  `rltui --batch status --json` in this process (reconcile, scan, GPU sample, the JSON
           document), its output written to a file: what a script calling it pays, less the
           interpreter's start;
- gc:      one full `gc.collect()` with the scanned index alive: the pause that Python's cyclic
           collector takes once after a scan made its ~10^6 objects (it lands in whatever runs
           next, often the first refresh; the index pauses the collector only during a scan).

Each figure is the median of --repeat runs, in wall-clock time and in this process's CPU time
(user + system: on a shared, busy machine it moves less with the load of others); the ratios
cold/walk and cold/rescan are printed, and cold/walk of the fastest run of each.
The issues' bars: cold <= 3x walk and rescan >= 50x faster than cold (issue 2), status --json
<= 3x walk (issue 14), at 1,000 runs.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import make_localfs  # noqa: E402
from rltui.runs import localfs  # noqa: E402
from rltui.cli import main as cli_main  # noqa: E402
from rltui.runs.index import Index  # noqa: E402

RESCANS = 5  # per repeat; the median hides a one-off collector pause (measured apart as "gc")


def walk(root: str) -> int:
    """Visit every folder with os.scandir; return how many entries were seen."""
    seen = 0
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                seen += 1
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return seen


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, user + system) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def touch_status(layout: localfs.Layout, run: str, step: int) -> None:
    path = layout.run_status(run)
    status = json.loads(path.read_text())
    status.update(step=step, time=time.time())
    localfs.write_json_atomic(path, status, durable=False)


def status_json(root: Path, out: Path) -> None:
    with open(out, "w") as f, contextlib.redirect_stdout(f):
        code = cli_main.main(["--root", str(root), "--batch", "status", "--json"])
    assert code == 0, f"status --json exited {code}"


def bench_size(root: Path, runs: int, repeat: int) -> dict[str, float]:
    if not (root / "training_runs").is_dir():
        t0 = time.perf_counter()
        make_localfs.make_localfs(root, make_localfs.parse_args([str(root), "--runs", str(runs)]))
        print(f"  wrote {runs} runs in {time.perf_counter() - t0:.1f} s", flush=True)
    layout = localfs.Layout(root)
    walk(str(root))  # the first pass pulls the tree into the page cache for both contenders
    one = sorted(os.listdir(layout.training_runs))[runs // 2]
    samples: dict[str, list[tuple[float, float]]] = {
        "walk": [], "cold": [], "warm": [], "rescan": [], "gc": [], "status": []}
    entries = 0
    for i in range(repeat):
        entries = 0

        def do_walk() -> None:
            nonlocal entries
            entries = walk(str(root))

        samples["walk"].append(timed(do_walk))
        index = Index(layout)
        samples["cold"].append(timed(index.scan))
        samples["warm"].append(timed(index.scan))
        for k in range(RESCANS):
            touch_status(layout, one, 1000 + k)
            samples["rescan"].append(timed(lambda: index.refresh_run(one)))
            assert index.snapshot.runs[one].step == 1000 + k, "the rescan did not see the change"
        assert len(index.snapshot.runs) == runs
        samples["gc"].append(timed(gc.collect))
        del index
        samples["status"].append(timed(lambda: status_json(root, root.parent / "status.json.out")))
    out: dict[str, float] = {"entries": entries}
    for key, values in samples.items():
        out[key] = statistics.median(w for w, _c in values)
        out[key + "_cpu"] = statistics.median(c for _w, c in values)
        out[key + "_min"] = min(w for w, _c in values)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100,1000,5000")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/rltui-index-bench"))
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"machine: {platform.node()}, {os.cpu_count()} cpus, Python {platform.python_version()}")
    Index(localfs.Layout(args.workdir / "empty")).scan()  # imports and first-use costs out of the way
    header = (f"{'runs':>6} {'entries':>9} | {'walk s':>7} {'cold s':>7} {'warm s':>7} {'rescan ms':>9} "
              f"| {'cold/walk':>9} {'cold/rescan':>11} | cpu: {'cold/walk':>9} {'cold/rescan':>11} "
              f"| min: {'cold/walk':>9} | {'gc ms':>7} | {'status s':>8} {'status/walk':>11}")
    rows = []
    for n in sizes:
        print(f"size {n}:", flush=True)
        r = bench_size(args.workdir / f"runs_{n}", n, args.repeat)
        rows.append(
            f"{n:>6} {int(r['entries']):>9} | {r['walk']:>7.3f} {r['cold']:>7.3f} {r['warm']:>7.3f} "
            f"{r['rescan'] * 1000:>9.2f} | {r['cold'] / r['walk']:>9.2f} {r['cold'] / r['rescan']:>11.0f} "
            f"| cpu: {r['cold_cpu'] / r['walk_cpu']:>9.2f} {r['cold_cpu'] / max(r['rescan_cpu'], 1e-6):>11.0f} "
            f"| min: {r['cold_min'] / r['walk_min']:>9.2f} | {r['gc'] * 1000:>7.0f} "
            f"| {r['status']:>8.3f} {r['status'] / r['walk']:>11.2f}"
        )
        print(rows[-1], flush=True)
    print()
    print("wall-clock medians of", args.repeat, "interleaved repeats; cpu = this process's user+system time")
    print(header)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
