"""Fixtures for the archive tests: a real S3 endpoint (moto's server on 127.0.0.1, a free port),
a loopback TCP proxy that cuts connections after N bytes, and runs built with localfs's own
checkpoint API (random bytes of checkpoint-like sizes: to the archive they are only bytes)."""

from __future__ import annotations

import collections
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from rltui.runs import checkpoints, localfs, machine
from rltui.runs.localfs import Layout

REPO = Path(__file__).resolve().parents[2]
SECRET = "Zq9-Very-Secret-Key-4b7e2c91d0"
ACCESS_KEY = "AKIATESTARCHIVE7Q2W"


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


# ---------------------------------------------------------------- counting requests


class RequestLog:
    """Counts every S3 operation a client sends, through boto3's event hooks."""

    def __init__(self) -> None:
        self.ops: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def hook(self, model: Any = None, **_: Any) -> None:
        with self._lock:
            self.ops[model.name] += 1

    @property
    def uploads(self) -> int:
        return sum(self.ops[k] for k in ("PutObject", "UploadPart", "CreateMultipartUpload",
                                         "CompleteMultipartUpload", "CopyObject", "UploadPartCopy"))

    def reset(self) -> None:
        self.ops.clear()


@dataclass
class S3Env:
    endpoint: str
    bucket: str
    settings_file: Path
    root: Path
    prefix: str = "team/archive"
    log: RequestLog = field(default_factory=RequestLog)
    secrets: tuple[str, ...] = (SECRET, ACCESS_KEY)

    @property
    def env(self) -> dict[str, str]:
        """Environment for a subprocess: settings only from our file, nothing from the user's."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RLTUI_S3"))}
        env.update({
            "RLTUI_S3_ENV": str(self.settings_file),
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "LOCALFS_ROOT": str(self.root),
            "PYTHONPATH": str(REPO),
        })
        return env

    def settings(self, **overrides: str) -> Any:
        from rltui.archive.settings import load_settings

        return load_settings({**self.env, **overrides})

    def store(self, endpoint: str | None = None, **overrides: str) -> Any:
        """A RemoteStore whose client counts its requests into self.log."""
        from rltui.archive.settings import make_client
        from rltui.archive.store import RemoteStore

        if endpoint:
            overrides["AWS_ENDPOINT_URL_S3"] = endpoint
        settings = self.settings(**overrides)
        client = make_client(settings)
        client.meta.events.register("before-call.s3", self.log.hook)
        return RemoteStore(client, settings)

    def raw_client(self) -> Any:
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET,
        )

    def cli(self, *args: str, module: bool = True, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run `python -m rltui.sync_to_s3 ARGS` (or `rltui --batch sync ARGS`) for real."""
        argv = [sys.executable, "-m", "rltui.sync_to_s3", *args] if module else \
            [sys.executable, "-m", "rltui.cli", "--batch", "sync", *args]
        return subprocess.run(argv, cwd=REPO, env=env or self.env, capture_output=True, text=True,
                              timeout=timeout)


@pytest.fixture
def s3(moto_endpoint: str, tmp_path: Path) -> S3Env:
    bucket = f"rltui-{uuid.uuid4().hex[:12]}"
    settings_file = tmp_path / "lambda_s3.env"
    settings_file.write_text(
        "# test settings\n"
        f"RLTUI_S3_BUCKET={bucket}\n"
        "RLTUI_S3_PREFIX=team/archive\n"
        f"AWS_ACCESS_KEY_ID={ACCESS_KEY}\n"
        f"export AWS_SECRET_ACCESS_KEY=\"{SECRET}\"\n"
        "AWS_REGION=us-east-1\n"
        f"AWS_ENDPOINT_URL_S3={moto_endpoint}\n"
        "RLTUI_S3_PART_SIZE_MB=5\n"
        "RLTUI_S3_MAX_CONCURRENCY=4\n"
    )
    settings_file.chmod(0o600)
    root = tmp_path / "root"  # not "localfs": tests/conftest.py's tiny_root takes that name
    Layout(root).ensure()
    env = S3Env(moto_endpoint, bucket, settings_file, root)
    env.raw_client().create_bucket(Bucket=bucket)
    return env


# ---------------------------------------------------------------- runs with real files


@dataclass
class BuiltRun:
    name: str
    layout: Layout
    steps: list[int]

    def files(self) -> dict[str, str]:
        """relative path -> sha256 of every regular file of the run and its evaluations."""
        out: dict[str, str] = {}
        tops = [self.layout.run_dir(self.name)] + sorted(self.layout.eval_runs.glob(f"{self.name}_*"))
        for top in tops:
            for rel in checkpoints.list_files(top):
                p = top / rel
                out[p.relative_to(self.layout.root).as_posix()] = checkpoints.sha256_file(p)
        return out


def write_checkpoint(layout: Layout, run: str, step: int, big: int = 3_000_000) -> Path:
    """A complete checkpoint through localfs's staging + finalize, and step_latest moved to it."""
    stage = checkpoints.staging_dir(layout.training_state(run), step)
    (stage / "model").mkdir()
    (stage / "model" / "adapter_model.safetensors").write_bytes(os.urandom(big))
    (stage / "model" / "adapter_config.json").write_text(json.dumps({"r": 16, "lora_alpha": 32}))
    (stage / "optimizer.pt").write_bytes(os.urandom(2 * big))
    (stage / "scheduler.pt").write_bytes(os.urandom(1_000))
    (stage / "rng").mkdir()
    (stage / "rng" / "rng_rank0.pt").write_bytes(os.urandom(15_000))
    final = layout.step_dir(run, step)
    checkpoints.finalize_checkpoint(stage, final, {"step": step, "world_size": 1, "config_hash": "abc"})
    checkpoints.update_step_latest(layout.training_state(run), step)
    return final


def write_run(layout: Layout, run: str = "run_2026-01-02_03-04-05", steps: tuple[int, ...] = (1, 2),
              big: int = 3_000_000, pid: int | None = None, phase: str = "completed") -> BuiltRun:
    layout.run_dir(run).mkdir(parents=True, exist_ok=True)
    localfs.write_yaml_atomic(layout.run_config(run), {"model": {"base": "tiny"}, "steps": max(steps)})
    for step in steps:
        write_checkpoint(layout, run, step, big)
        localfs.append_jsonl(layout.train_log(run), {"step": step, "reward": 0.1 * step})
    localfs.write_json_atomic(layout.run_status(run), {
        "run": run, "step": max(steps), "phase": phase, "pid": pid or 999_999_999,
        "host": machine.this_host(), "time": time.time(), "latest_checkpoint": max(steps),
    })
    (layout.tensorboard_dir(run)).mkdir(exist_ok=True)
    (layout.tensorboard_dir(run) / "events.out.tfevents.1.host").write_bytes(os.urandom(40_000))
    for step in steps:
        d = layout.eval_step_dir(run, "gsm8k", step)
        d.mkdir(parents=True, exist_ok=True)
        localfs.write_json_atomic(d / "summary.json", {"step": step, "accuracy": 0.5})
        (d / "completions.jsonl").write_text('{"completion": "42"}\n' * 50)
    localfs.write_csv_atomic(layout.consolidated_metrics(run, "gsm8k"), ["step", "accuracy"],
                             [[s, 0.5] for s in steps])
    return BuiltRun(run, layout, list(steps))


@pytest.fixture
def make_run(s3: S3Env) -> Callable[..., BuiltRun]:
    return lambda **kw: write_run(Layout(s3.root), **kw)


@pytest.fixture
def add_checkpoint(s3: S3Env) -> Callable[..., Path]:
    return lambda run, step, big=3_000_000: write_checkpoint(Layout(s3.root), run, step, big)


# ---------------------------------------------------------------- a proxy that cuts connections


class CuttingProxy:
    """A loopback TCP proxy to `target` that drops every connection once `cut_after` bytes went
    upstream in total, and from then on closes new connections at once (a server gone)."""

    def __init__(self, target: str, cut_after: int) -> None:
        host, port = target.rsplit("//", 1)[1].split(":")
        self.target = (host, int(port))
        self.cut_after = cut_after
        self.sent = 0
        self.cut = threading.Event()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut.is_set():
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._socks += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counts: bool) -> None:
        try:
            while not self.cut.is_set():
                data = src.recv(65536)
                if not data:
                    break
                if counts:
                    with self._lock:
                        self.sent += len(data)
                        over = self.sent > self.cut_after
                    if over:
                        self._cut_all()
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _cut_all(self) -> None:
        self.cut.set()
        with self._lock:
            for s in self._socks:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self._cut_all()
        self.listener.close()


@pytest.fixture
def cutting_proxy(moto_endpoint: str) -> Iterator[Callable[[int], CuttingProxy]]:
    made: list[CuttingProxy] = []

    def make(cut_after: int) -> CuttingProxy:
        made.append(CuttingProxy(moto_endpoint, cut_after))
        return made[-1]

    yield make
    for p in made:
        p.close()
