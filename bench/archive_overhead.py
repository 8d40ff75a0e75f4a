"""Benchmark: does the live archive slow training? Steps with and without it, same machine, same call.

Usage:
    .venv/bin/python bench/archive_overhead.py [--steps 12] [--save-every 2] [--rounds 2]

Starts moto's server on 127.0.0.1 and runs the built-in tiny model's training as real jobs
(`rltui --batch train --gpus none`), alternating plain and `--archive --archive-interval 1`
runs (plain, archived, plain, archived, ...), each on a fresh localfs. A step's time is what the
trainer records in train_log.jsonl (generation + scoring + training + saving); the first step
(warm-up) is left out. Prints the median step of each side, their ratio, and the live archive's
lag as its archive/status/RUN.json saw it: steps behind at the end and seconds from each
checkpoint's completion to the archive's next pass that holds it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _config(steps: int, save_every: int) -> dict:
    return {
        "model": {"base": "tiny", "init_adapter": "warmstart"},
        "data": {"dataset": "arith_r1_template"},
        "rewards": [{"function": "correctness", "weight": 1.0}],
        "grpo": {"num_generations": 4, "per_device_prompts": 2, "max_completion_length": 16,
                 "num_iterations": 1, "beta": 0.0},
        "training": {"total_steps": steps, "save_every": save_every, "keep_last": 100, "cpu_threads": 1},
    }


def _step_times(root: Path, run: str) -> list[float]:
    rows = [json.loads(ln) for ln in (root / "training_runs" / run / "logs" / "train_log.jsonl").read_text().splitlines()]
    keys = ("time_generation", "time_scoring", "time_training", "time_saving")
    return [sum(float(r.get(k) or 0) for k in keys) for r in rows if r.get("step", 0) > 1]


def _one(tiny: Path, work: Path, cfg: Path, env: dict[str, str], archived: bool) -> tuple[list[float], dict]:
    root = work / ("archived" if archived else "plain")
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(tiny / "models" / "tiny", root / "models" / "tiny")
    argv = [sys.executable, "-m", "rltui.cli", "--root", str(root), "--batch", "train", "--cfg", str(cfg),
            "--gpus", "none", "--json"]
    if archived:
        argv += ["--archive", "--archive-interval", "1"]
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"training failed:\n{done.stderr[-3000:]}")
    run = json.loads(done.stdout)["spec"]["run"]
    lag: dict = {}
    if archived:
        status_path = root / "archive" / "status" / f"{run}.json"
        deadline = time.time() + 120
        while time.time() < deadline:  # the archive's last pass after the job ended
            lag = json.loads(status_path.read_text()) if status_path.exists() else {}
            if lag.get("state") in ("done", "failed"):
                break
            time.sleep(0.5)
    return _step_times(root, run), lag


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--save-every", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    from moto.server import ThreadedMotoServer

    from trainer.tiny import ensure_tiny

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    work = Path(tempfile.mkdtemp(prefix="rltui-archive-bench-"))
    tiny = Path(tempfile.gettempdir()) / "rltui-bench-tiny"  # built once, kept between runs
    built = sorted(Path(tempfile.gettempdir()).glob("rltui-tiny-cache/*/models/tiny"),
                   key=lambda p: p.stat().st_mtime)
    if not (tiny / "models" / "tiny").is_dir() and built:  # the tests' build, when there is one
        shutil.copytree(built[-1], tiny / "models" / "tiny")
    ensure_tiny(tiny)
    settings = work / "s3.env"
    settings.write_text(f"RLTUI_S3_BUCKET=bench\nAWS_ACCESS_KEY_ID=x\nAWS_SECRET_ACCESS_KEY=y\n"
                        f"AWS_REGION=us-east-1\nAWS_ENDPOINT_URL_S3=http://{host}:{port}\n")
    import boto3

    boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                 aws_access_key_id="x", aws_secret_access_key="y").create_bucket(Bucket="bench")
    env = {**os.environ, "RLTUI_S3_ENV": str(settings), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cfg = work / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(_config(args.steps, args.save_every)))

    plain: list[float] = []
    archived: list[float] = []
    lags: list[dict] = []
    for _ in range(args.rounds):
        plain += _one(tiny, work, cfg, env, archived=False)[0]
        times, lag = _one(tiny, work, cfg, env, archived=True)
        archived += times
        lags.append(lag)
    server.stop()
    shutil.rmtree(work, ignore_errors=True)

    p, a = statistics.median(plain), statistics.median(archived)
    print(f"tiny model, CPU, {args.steps} steps, a checkpoint every {args.save_every}, {args.rounds} round(s) each")
    print(f"  median step without the live archive  {p * 1000:8.1f} ms   1.000")
    print(f"  median step with the live archive     {a * 1000:8.1f} ms   {a / p:5.3f}  ({(a / p - 1) * 100:+.1f}%)")
    for i, lag in enumerate(lags):
        print(f"  round {i + 1}: archived step {lag.get('newest_archived_step')} of local "
              f"{lag.get('newest_local_step')} at the end, state {lag.get('state')}, "
              f"{lag.get('archived_bytes', 0) / 1e6:.1f} MB in the bucket")
    return 0


if __name__ == "__main__":
    sys.exit(main())
