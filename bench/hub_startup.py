"""What naming the base model by a cached Hub id costs a trainer's start-up, against the same
model named as a local folder.

Usage:
    python bench/hub_startup.py [--repeats 9] [--keep DIR] [--root ROOT]

The tiny model is laid out twice: as a plain folder, and in a Hugging Face cache in the Hub's
own layout (models--bench--tiny-qwen/{blobs,refs/main,snapshots/COMMIT}). Each measurement is a
fresh `python` process that imports the trainer (torch, transformers), then times the first
`trainer.hub.resolve_model` of the process (cold: what naming by Hub id adds), and start-up from
there to a loaded model: that resolution plus `trainer.session.prepare` (config, base model,
adapter and data checks) and the model and tokenizer load from the resolved folder.
HF_ENDPOINT points at a closed port and HF_HUB_OFFLINE is unset, so a request, had one been
made, would fail loudly.
The two namings alternate; medians are reported with their difference.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REPO_ID = "bench/tiny-qwen"

CHILD = r"""
import json, sys, time, argparse
from pathlib import Path
import torch
torch.set_num_threads(1)
from trainer import rl_runner
from trainer.session import prepare
from trainer.hub import resolve_model
from trainer.modeling import load_model_and_tokenizer
cfg, root = sys.argv[1], sys.argv[2]
spec = sys.argv[3]
t0 = time.perf_counter()
resolve_model(spec, Path(root))  # the first resolution in the process: what a trainer pays
t1 = time.perf_counter()
session = prepare(rl_runner.parse_args(["--cfg", cfg, "--root", root]))
load_model_and_tokenizer(session.base_path, torch.device("cpu"), "fp32")
t2 = time.perf_counter()
print(json.dumps({"cold_resolve_ms": (t1 - t0) * 1e3, "startup_ms": (t2 - t0) * 1e3}))
"""


def hub_layout(cache: Path, repo_id: str, folder: Path) -> Path:
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
    commit = hashlib.sha1(b"".join(hashlib.sha256(d).digest() for d in files.values())).hexdigest()
    snapshot = storage / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (storage / "blobs").mkdir()
    for name, data in files.items():
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / name)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(commit)
    return snapshot


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--keep", help="work in this folder and keep it")
    ap.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "rltui-bench-localfs"),
                    help="localfs root holding (or to hold) the tiny model")
    args = ap.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="hub_startup."))
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    from trainer.tiny import ensure_tiny

    root = Path(args.root)  # the tiny model is built there once (a minute of CPU) and reused
    base = ensure_tiny(root).base
    hub_layout(work / "hf_cache", REPO_ID, base)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(work / "hf_home"), HF_HUB_CACHE=str(work / "hf_cache"),
               HF_ENDPOINT="http://127.0.0.1:9", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    specs = {"folder": str(base), "hub id": REPO_ID}
    configs = {}
    for label, spec in specs.items():
        cfg = work / f"cfg_{label.replace(' ', '_')}.yaml"
        cfg.write_text(json.dumps({"model": {"base": spec}, "data": {"dataset": "arith_r1_template"}}))
        configs[label] = cfg
    results: dict[str, dict[str, list[float]]] = {k: {"cold_resolve_ms": [], "startup_ms": []}
                                                  for k in specs}
    for i in range(args.repeats + 1):  # the first round warms the page cache and is dropped
        for label, spec in specs.items():
            out = subprocess.run([sys.executable, "-c", CHILD, str(configs[label]), str(root), spec],
                                 env=env, cwd=REPO, capture_output=True, text=True, check=True)
            if i == 0:
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            for key, value in row.items():
                results[label][key].append(value)
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}; {args.repeats} runs each, medians")
    for key in ("cold_resolve_ms", "startup_ms"):
        med = {label: statistics.median(v[key]) for label, v in results.items()}
        print(f"{key:15s} folder {med['folder']:8.1f} ms   hub id {med['hub id']:8.1f} ms   "
              f"difference {med['hub id'] - med['folder']:+7.1f} ms")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
