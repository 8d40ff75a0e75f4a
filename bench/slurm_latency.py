"""Submit-to-first-step latency: a tiny training job through Slurm against the local keeper,
on the same machine.

Usage:
    python bench/slurm_latency.py [--repeats 3] [--keep DIR]

Starts a real one-node Slurm in a temporary folder (tests/slurm/cluster.py: Debian's slurmctld,
slurmd and munge; root only), builds or reuses the tiny model, then alternates the two backends:
`rltui --batch train --cfg CFG --detach --gpus none [--backend slurm]`. For each job it notes the
time from just before the command until
  accepted   the command returned (the job is written; the keeper is started, or sbatch answered),
  started    the job's command began (Slurm: the batch script's `begin` record; local: the keeper's
             running state),
  first step the run's status.json reports step 1,
and prints medians and the ratio Slurm / local. The training itself is the same in both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "slurm"))

CONFIG = {
    "model": {"base": "tiny", "init_adapter": "warmstart"},
    "data": {"dataset": "arith_r1_template"},
    "rewards": [{"function": "correctness", "weight": 1.0}],
    "grpo": {"num_generations": 4, "per_device_prompts": 2, "max_completion_length": 12,
             "num_iterations": 1, "beta": 0.0, "forward_batch_size": 8},
    "optim": {"learning_rate": 1e-3},
    "training": {"total_steps": 2, "save_every": 1, "cpu_threads": 1},
}


def tiny_cache() -> Path:
    """The test suite's tiny-model cache (tests/conftest.py): same folder, same key."""
    import hashlib

    h = hashlib.sha256()
    for rel in ("trainer/tiny.py", "trainer/data.py"):
        h.update((REPO / rel).read_bytes())
    base = os.environ.get("RLTUI_TEST_MODEL_CACHE") or os.path.join(tempfile.gettempdir(), "rltui-tiny-cache")
    return Path(base) / h.hexdigest()[:12]


def wait(pred, timeout: float = 600.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("timed out")


def read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def one_job(root: Path, cfg: Path, env: dict, backend: str) -> dict[str, float]:
    from rltui.jobs.backends import slurm

    extra = ["--backend", "slurm"] if backend == "slurm" else []
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "rltui.cli", "--root", str(root), "--batch", "train",
                           "--cfg", str(cfg), "--gpus", "none", "--detach", *extra],
                          capture_output=True, text=True, env=env, cwd=REPO)
    accepted = time.monotonic() - t0
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    job_dir = root / "jobs" / done.stdout.strip()
    run = read(job_dir / "job.json")["run"]
    status = root / "training_runs" / run / "status.json"
    if backend == "slurm":
        wait(lambda: (job_dir / "attempts.jsonl").exists())
    else:
        wait(lambda: read(job_dir / "state.json").get("state") in ("running", "succeeded", "failed"))
    started = time.monotonic() - t0
    wait(lambda: (read(status).get("step") or 0) >= 1)
    first = time.monotonic() - t0
    layout = __import__("rltui.runs.localfs", fromlist=["Layout"]).Layout(root)

    def ended() -> bool:
        if backend == "slurm":
            slurm.refresh(layout, max_age=0.5)
        return read(job_dir / "state.json").get("state") in ("succeeded", "failed", "stopped", "lost")

    wait(ended, every=0.5)
    return {"accepted": accepted, "started": started, "first_step": first}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--keep", help="keep the localfs and the Slurm folder here")
    args = p.parse_args()
    from cluster import SlurmCluster, missing_reason
    import yaml

    why = missing_reason()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    work = Path(args.keep or tempfile.mkdtemp(prefix="rltui-slurm-bench-"))
    root = work / "localfs"
    from trainer.tiny import ensure_tiny

    cache = tiny_cache()
    ensure_tiny(cache)  # built once, shared with the test suite's cache
    (root / "models").mkdir(parents=True, exist_ok=True)
    if not (root / "models" / "tiny").exists():
        shutil.copytree(cache / "models" / "tiny", root / "models" / "tiny")
    cfg = work / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    results: dict[str, list[dict[str, float]]] = {"local": [], "slurm": []}
    (work / "slurm").mkdir(exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the daemons on TERM too
    with SlurmCluster(work / "slurm", nodes=1) as cluster:
        env = {**cluster.env, "PYTHONPATH": str(REPO)}
        os.environ["SLURM_CONF"] = str(cluster.conf)  # this process asks Slurm too (refresh)
        time.sleep(4)  # slurmctld's first scheduling pass comes a few seconds after its start
        for i in range(args.repeats):
            for backend in ("local", "slurm") if i % 2 == 0 else ("slurm", "local"):
                r = one_job(root, cfg, env, backend)
                results[backend].append(r)
                print(f"{backend:<6} accepted {r['accepted']:6.2f}s  started {r['started']:6.2f}s  "
                      f"first step {r['first_step']:6.2f}s", flush=True)
    print(f"\nmedians of {args.repeats} (seconds from the command to ...), {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}")
    for key in ("accepted", "started", "first_step"):
        local = statistics.median(r[key] for r in results["local"])
        sl = statistics.median(r[key] for r in results["slurm"])
        print(f"  {key:<11} local {local:6.2f}  slurm {sl:6.2f}  slurm/local {sl / local:5.2f}x  "
              f"(+{sl - local:.2f}s)")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
