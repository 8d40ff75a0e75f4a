"""Benchmark: our S3 backup against `aws s3 sync`, side by side, on a loopback moto server.

Usage:
    .venv/bin/python bench/s3_sync.py [--size-gb 2.0] [--checkpoints N] [--workdir DIR]

Builds a synthetic run of about --size-gb (checkpoints shaped like Qwen2.5-1.5B with LoRA r=16
on every linear layer: a 74 MB fp32 adapter, a 148 MB Adam optimizer state, small scheduler, RNG
and info files; logs, TensorBoard events and eval results), starts `moto_server` on 127.0.0.1 in
its own process, then times, each as its own process, in alternating order (aws ours, ours aws, ...):
  - `python -m rltui.sync_to_s3 --action backup` (a first backup: sha256 cache emptied) or
    `aws s3 sync` of the same two folders (--no-follow-symlinks, awscli defaults);
  - then the same command again on the unchanged run, counting the requests it made from
    moto's request log.
Files are read once beforehand so both start from a warm page cache. The bucket of each tool
is emptied before the other's first upload, to keep moto's memory (it holds objects in RAM)
at one copy of the run.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO))

from rltui.runs import checkpoints, localfs  # noqa: E402
from rltui.runs.localfs import Layout  # noqa: E402

RUN = "run_2026-11-26_12-00-00"
MB = 1_000_000
ADAPTER = 74 * MB
OPTIMIZER = 148 * MB
_REQUEST = re.compile(r'"(GET|PUT|POST|HEAD|DELETE) (\S+) HTTP')


def _unique_bytes(n: int, seed: str, block: bytes) -> bytes:
    """n bytes that differ from every other file's (a hash header, then a shared random block)."""
    head = hashlib.sha256(seed.encode()).digest() * 4
    reps = (n // len(block)) + 1
    return (head + (block * reps))[:n]


def build_run(root: Path, size: int) -> int:
    layout = Layout(root).ensure()
    block = os.urandom(8 * MB)
    per_ckpt = ADAPTER + OPTIMIZER
    n = max(1, round(size / per_ckpt))
    layout.run_dir(RUN).mkdir(parents=True, exist_ok=True)
    localfs.write_yaml_atomic(layout.run_config(RUN), {"model": {"base": "Qwen2.5-1.5B"}, "steps": n * 50})
    for i in range(1, n + 1):
        step = i * 50
        stage = checkpoints.staging_dir(layout.training_state(RUN), step)
        (stage / "model").mkdir()
        (stage / "model" / "adapter_model.safetensors").write_bytes(_unique_bytes(ADAPTER, f"a{step}", block))
        (stage / "model" / "adapter_config.json").write_text('{"r": 16, "lora_alpha": 32}')
        (stage / "optimizer.pt").write_bytes(_unique_bytes(OPTIMIZER, f"o{step}", block))
        (stage / "scheduler.pt").write_bytes(_unique_bytes(1_500, f"s{step}", block))
        (stage / "rng").mkdir()
        for rank in range(2):
            (stage / "rng" / f"rng_rank{rank}.pt").write_bytes(_unique_bytes(15_000, f"r{step}{rank}", block))
        checkpoints.finalize_checkpoint(stage, layout.step_dir(RUN, step), {"step": step})
        checkpoints.update_step_latest(layout.training_state(RUN), step)
        ev = layout.eval_step_dir(RUN, "gsm8k", step)
        ev.mkdir(parents=True)
        (ev / "completions.jsonl").write_bytes(_unique_bytes(600_000, f"c{step}", block))
        localfs.write_json_atomic(ev / "summary.json", {"step": step, "accuracy": 0.5})
    for name, n_bytes in (("train_log.jsonl", 2 * MB), ("rollouts.jsonl", 20 * MB), ("ratios.jsonl", MB)):
        (layout.logs_dir(RUN)).mkdir(exist_ok=True)
        (layout.logs_dir(RUN) / name).write_bytes(_unique_bytes(n_bytes, name, block))
    layout.tensorboard_dir(RUN).mkdir(exist_ok=True)
    (layout.tensorboard_dir(RUN) / "events.out.tfevents.1.box").write_bytes(_unique_bytes(MB, "tb", block))
    localfs.write_json_atomic(layout.run_status(RUN), {"run": RUN, "phase": "completed", "step": n * 50})
    return n


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Timed:
    seconds: float
    requests: collections.Counter[str]

    @property
    def uploads(self) -> int:
        return self.requests["PUT"] + self.requests["POST"]


class Moto:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "moto.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("moto_server did not start")

    def requests_since(self, offset: int) -> collections.Counter[str]:
        self.log.flush()
        with open(self.log_path) as f:
            f.seek(offset)
            return collections.Counter(m.group(1) for m in _REQUEST.finditer(f.read()))

    def offset(self) -> int:
        self.log.flush()
        return self.log_path.stat().st_size

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        self.log.close()


def timed(moto: Moto, argv: list[str], env: dict[str, str]) -> Timed:
    before = moto.offset()
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    time.sleep(0.5)  # let moto's log catch up
    return Timed(seconds, moto.requests_since(before))


def empty_bucket(client, bucket: str) -> None:
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-gb", type=float, default=2.0)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--rounds", type=int, default=4,
                    help="pairs of first backups, alternating who goes first: aws ours, ours aws, ...")
    args = ap.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="s3bench."))
    root = workdir / "localfs"
    t0 = time.perf_counter()
    n = build_run(root, int(args.size_gb * 1e9))
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    total = sum(p.stat().st_size for p in files)
    for p in files:  # warm the page cache for both tools alike
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass
    print(f"run: {n} checkpoints, {len(files)} files, {total / 1e9:.2f} GB (built in {time.perf_counter() - t0:.0f} s)")

    moto = Moto(workdir)
    try:
        import boto3

        creds = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull,
                 "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
        client = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1",
                              aws_access_key_id="bench", aws_secret_access_key="bench-secret")
        client.create_bucket(Bucket="ours")
        client.create_bucket(Bucket="aws")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RLTUI_S3"))}
        env.update(creds)
        settings = workdir / "s3.env"
        settings.write_text(f"RLTUI_S3_BUCKET=ours\nAWS_ENDPOINT_URL_S3={moto.url}\n")
        settings.chmod(0o600)
        ours_env = {**env, "RLTUI_S3_ENV": str(settings), "PYTHONPATH": str(REPO)}
        ours = [sys.executable, "-m", "rltui.sync_to_s3", "--root", str(root), "--action", "backup",
                "--training-run", RUN]
        aws = [[str(VENV_BIN / "aws"), "s3", "sync", "--no-follow-symlinks", "--only-show-errors",
                "--endpoint-url", moto.url, str(root / sub), f"s3://aws/{sub}"]
               for sub in (f"training_runs/{RUN}", f"eval_runs/{RUN}_gsm8k")]

        def aws_sync() -> Timed:
            parts = [timed(moto, argv, env) for argv in aws]
            return Timed(sum(p.seconds for p in parts), sum((p.requests for p in parts), collections.Counter()))

        def ours_sync(cold: bool) -> Timed:
            if cold:  # a first backup hashes every file
                shutil.rmtree(root / "archive" / ".sha256_cache", ignore_errors=True)
            return timed(moto, ours, ours_env)

        results: dict[str, list[tuple[Timed, Timed]]] = {"ours": [], "aws": []}
        # alternating order, so neither tool always meets a fresh or a tired server or machine
        order = [t for i in range(args.rounds) for t in (("aws", "ours") if i % 2 == 0 else ("ours", "aws"))]
        for tool in order:
            first = ours_sync(True) if tool == "ours" else aws_sync()
            again = ours_sync(False) if tool == "ours" else aws_sync()
            results[tool].append((first, again))
            empty_bucket(client, tool)
            print(f"  {tool:4}: first {first.seconds:6.1f} s, unchanged again {again.seconds:5.1f} s "
                  f"({again.uploads} uploads)", flush=True)
    finally:
        moto.stop()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    def mean(tool: str, i: int) -> float:
        return sum(r[i].seconds for r in results[tool]) / len(results[tool])

    def median(tool: str) -> float:
        return statistics.median(r[0].seconds for r in results[tool])

    first_ours, first_aws = mean("ours", 0), mean("aws", 0)
    print(f"first backup (median of {len(results['ours'])}): ours {median('ours'):.1f} s, "
          f"aws s3 sync {median('aws'):.1f} s; ratio ours/aws {median('ours') / median('aws'):.2f}")
    again_ours, again_aws = results["ours"][-1][1], results["aws"][-1][1]
    print(f"first backup (mean of {len(results['ours'])}): ours {first_ours:.1f} s "
          f"({total / 1e6 / first_ours:.0f} MB/s), aws s3 sync {first_aws:.1f} s "
          f"({total / 1e6 / first_aws:.0f} MB/s); ratio ours/aws {first_ours / first_aws:.2f}")
    print(f"unchanged re-sync: ours {mean('ours', 1):.1f} s, {again_ours.uploads} uploads, requests "
          f"{dict(again_ours.requests)}; aws s3 sync {mean('aws', 1):.1f} s, {again_aws.uploads} uploads, "
          f"requests {dict(again_aws.requests)}")
    print(f"first backup requests: ours {dict(results['ours'][-1][0].requests)}; "
          f"aws {dict(results['aws'][-1][0].requests)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
