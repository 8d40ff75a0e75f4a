"""Benchmark: listing a bucket of N backed-up runs (the TUI's and `status --remote`'s view).

Usage:
    .venv/bin/python bench/bucket_catalog.py [--runs 1000] [--repeats 3]

Starts moto's server on 127.0.0.1, writes N manifests (each a run of 4 checkpoints; the content
objects are left out: the listing reads manifests only, and a delimiter hides the objects), then
times, in the same process against the same server:
  - the catalog's first listing (one delimited listing, every manifest downloaded);
  - the catalog's later listings (the same listing; no manifest downloaded: ETags unchanged);
  - the same after one run's manifest changed (one download);
  - the baseline a simple client does: list the run prefixes, then GET every manifest.
Prints each with the ratio against the baseline.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rltui.archive import catalog  # noqa: E402
from rltui.archive.settings import load_settings, make_client  # noqa: E402
from rltui.archive.store import RemoteStore  # noqa: E402
from rltui.runs.localfs import Layout  # noqa: E402


def _manifest(run: str) -> dict:
    files = {}
    for step in (10, 20, 30, 40):
        base = f"training_runs/{run}/training_state/step_{step}/"
        for name, size in (("model/adapter_model.safetensors", 73_859_072), ("optimizer.pt", 147_734_000),
                           ("scheduler.pt", 1_000), ("training_info.json", 2_000)):
            files[base + name] = {"size": size, "sha256": f"{hash((run, step, name)) & (2**256 - 1):064x}"}
    return {"format": 1, "run": run, "created": time.time(), "host": "bench", "step_latest": 40,
            "files": files}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"RLTUI_S3_BUCKET": "bench", "RLTUI_S3_PREFIX": "team", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "y", "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}", "RLTUI_S3_ENV": "/dev/null"}
    settings = load_settings(env)
    client = make_client(settings)
    store = RemoteStore(client, settings)
    client.create_bucket(Bucket="bench")
    runs = [f"run_2026-01-01_00-{i // 60:02d}-{i % 60:02d}_{i}" for i in range(args.runs)]

    def put(run: str) -> None:
        key = store.manifest_key(run)
        client.put_object(Bucket="bench", Key=key, Body=json.dumps(_manifest(run)).encode())
        client.put_object(Bucket="bench", Key=store.object_key(run, "0" * 64), Body=b"x")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, runs))

    def baseline() -> int:
        def get(run: str) -> dict:
            return json.loads(client.get_object(Bucket="bench", Key=store.manifest_key(run))["Body"].read())
        with ThreadPoolExecutor(16) as pool:
            return len(list(pool.map(get, store.list_runs())))

    layout = Layout(Path(tempfile.mkdtemp(prefix="rltui-catalog-"))).ensure()
    t = time.perf_counter()
    first = catalog.refresh(layout, store)
    t_first = time.perf_counter() - t
    assert len(first.runs) == args.runs and first.fetched == args.runs

    later, base = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        again = catalog.refresh(layout, store)
        later.append(time.perf_counter() - t)
        assert again.fetched == 0 and len(again.runs) == args.runs
        t = time.perf_counter()
        assert baseline() == args.runs
        base.append(time.perf_counter() - t)
    put(runs[0])
    t = time.perf_counter()
    changed = catalog.refresh(layout, store)
    t_changed = time.perf_counter() - t
    assert changed.fetched == 1
    server.stop()

    b = statistics.median(base)
    print(f"bucket of {args.runs} runs on moto at 127.0.0.1 (median of {args.repeats})")
    print(f"  baseline: list runs + GET every manifest   {b:8.3f} s   1.00x")
    print(f"  catalog, first listing (all downloaded)    {t_first:8.3f} s   {b / t_first:5.2f}x")
    print(f"  catalog, later listing (ETags unchanged)   {statistics.median(later):8.3f} s   "
          f"{b / statistics.median(later):5.2f}x")
    print(f"  catalog, one manifest changed              {t_changed:8.3f} s   {b / t_changed:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
