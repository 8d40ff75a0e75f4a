"""Benchmark: does the live archive slow training? Steps with and without it, same machine, same call.

Usage:
    .venv/bin/python bench/archive_overhead.py [--steps 40] [--save-every 4] [--rounds 4] [--interval 1]

Starts moto's server on 127.0.0.1 in its own process at nice 10 (it stands for S3, which is not
on the training box), and runs the built-in tiny model's training as real jobs (`rltui --batch
train --gpus none`), alternating plain and `--archive --archive-interval S` runs (1 s unless --interval) (plain, archived,
archived, plain, ...), each on a fresh localfs. A step's time is what the trainer records in
train_log.jsonl (generation + scoring + training + saving); the first step (warm-up) is left out.
Prints the median step of each side and their ratio, and the live archive's lag: for every
checkpoint, seconds from its completion (its training_info.json's mtime, written last) to the
first moment archive/status/RUN.json, polled every 0.1 s, says the bucket holds it; and steps
behind at the end.
"""

from __future__ import annotations

import argparse
import json
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


PHASES = ("time_generation", "time_scoring", "time_training", "time_saving")


def _step_times(root: Path, run: str) -> list[dict[str, float]]:
    """Each step's phase times after the first (warm-up), from the trainer's train_log.jsonl."""
    rows = [json.loads(ln) for ln in (root / "training_runs" / run / "logs" / "train_log.jsonl").read_text().splitlines()]
    return [{k: float(r.get(k) or 0) for k in PHASES} for r in rows if r.get("step", 0) > 1]


def _one(tiny: Path, work: Path, cfg: Path, env: dict[str, str], archived: bool,
         interval: float = 1.0) -> tuple[list[dict], dict, list[float]]:
    root = work / ("archived" if archived else "plain")
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(tiny / "models" / "tiny", root / "models" / "tiny")
    argv = [sys.executable, "-m", "rltui.cli", "--root", str(root), "--batch", "train", "--cfg", str(cfg),
            "--gpus", "none", "--json"]
    if archived:
        argv += ["--archive", "--archive-interval", f"{interval:g}"]
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    archived_at: dict[int, float] = {}  # step -> when the archive's status first said the bucket has it
    while proc.poll() is None:
        if archived:
            for status_path in (root / "archive" / "status").glob("*.json"):
                _note_archived(status_path, archived_at)
        time.sleep(0.1)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"training failed:\n{err[-3000:]}")
    run = json.loads(out)["spec"]["run"]
    lag: dict = {}
    if archived:
        status_path = root / "archive" / "status" / f"{run}.json"
        deadline = time.time() + 120
        while time.time() < deadline:  # the archive's last pass after the job ended
            _note_archived(status_path, archived_at)
            lag = json.loads(status_path.read_text()) if status_path.exists() else {}
            if lag.get("state") in ("done", "failed"):
                break
            time.sleep(0.1)
    delays = []
    for info in (root / "training_runs" / run / "training_state").glob("step_*/training_info.json"):
        name = info.parent.name.split("_")[1]
        if info.parent.is_symlink() or not name.isdigit():  # step_latest names one of them
            continue
        step = int(name)
        if step in archived_at:
            delays.append(archived_at[step] - info.stat().st_mtime)
    return _step_times(root, run), lag, delays


def _note_archived(status_path: Path, archived_at: dict[int, float]) -> None:
    try:
        newest = json.loads(status_path.read_text()).get("newest_archived_step")
    except (OSError, ValueError):
        return
    now = time.time()
    for step in range(1, (newest or 0) + 1):
        archived_at.setdefault(step, now)


def _moto() -> tuple[subprocess.Popen, str]:
    """moto's server in its own process, at nice 10: S3 is not on the training box."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # ThreadedMotoServer, as the tests use (`python -m moto.server` left a PutObject unanswered)
    serve = ("import logging, sys, time; from moto.server import ThreadedMotoServer; "
             "logging.getLogger('werkzeug').setLevel(logging.ERROR); "
             "ThreadedMotoServer(ip_address='127.0.0.1', port=int(sys.argv[1]), verbose=False).start(); "
             "time.sleep(86400)")
    proc = subprocess.Popen(["nice", "-n", "10", sys.executable, "-c", serve, str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("moto's server did not start")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--save-every", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--interval", type=float, default=1.0, help="the live archive's seconds between passes")
    args = ap.parse_args()

    from trainer.tiny import ensure_tiny

    server, endpoint = _moto()
    work = Path(tempfile.mkdtemp(prefix="rltui-archive-bench-"))
    tiny = Path(tempfile.gettempdir()) / "rltui-bench-tiny"  # built once, kept between runs
    built = sorted(Path(tempfile.gettempdir()).glob("rltui-tiny-cache/*/models/tiny"),
                   key=lambda p: p.stat().st_mtime)
    if not (tiny / "models" / "tiny").is_dir() and built:  # the tests' build, when there is one
        shutil.copytree(built[-1], tiny / "models" / "tiny")
    ensure_tiny(tiny)
    settings = work / "s3.env"
    settings.write_text(f"RLTUI_S3_BUCKET=bench\nAWS_ACCESS_KEY_ID=x\nAWS_SECRET_ACCESS_KEY=y\n"
                        f"AWS_REGION=us-east-1\nAWS_ENDPOINT_URL_S3={endpoint}\n")
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                 aws_access_key_id="x", aws_secret_access_key="y").create_bucket(Bucket="bench")
    env = {**os.environ, "RLTUI_S3_ENV": str(settings), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cfg = work / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(_config(args.steps, args.save_every)))

    plain: list[dict[str, float]] = []
    archived: list[dict[str, float]] = []
    lags: list[dict] = []
    delays: list[float] = []
    try:
        for i in range(args.rounds):
            order = (False, True) if i % 2 == 0 else (True, False)  # neither side always goes first
            for with_archive in order:
                times, lag, waited = _one(tiny, work, cfg, env, archived=with_archive, interval=args.interval)
                (archived if with_archive else plain).extend(times)
                if with_archive:
                    lags.append(lag)
                    delays += waited
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)

    p, a = (statistics.median(sum(r.values()) for r in side) for side in (plain, archived))
    print(f"tiny model, CPU, {args.steps} steps, a checkpoint every {args.save_every}, {args.rounds} round(s) each")
    print(f"  median step without the live archive  {p * 1000:8.1f} ms   1.000")
    print(f"  median step with the live archive     {a * 1000:8.1f} ms   {a / p:5.3f}  ({(a / p - 1) * 100:+.1f}%)")
    for k in PHASES:
        pk, ak = (statistics.median(r[k] for r in side) for side in (plain, archived))
        print(f"    {k[5:]:<12} {pk * 1000:8.1f} ms -> {ak * 1000:8.1f} ms")
    if delays:
        delays.sort()
        print(f"  lag, checkpoint complete -> in the bucket: median {statistics.median(delays):.2f} s, "
              f"max {delays[-1]:.2f} s over {len(delays)} checkpoints (passes every {args.interval:g} s)")
    for i, lag in enumerate(lags):
        print(f"  round {i + 1}: archived step {lag.get('newest_archived_step')} of local "
              f"{lag.get('newest_local_step')} at the end, state {lag.get('state')}, "
              f"{lag.get('archived_bytes', 0) / 1e6:.1f} MB in the bucket")
    return 0


if __name__ == "__main__":
    sys.exit(main())
