"""Write a synthetic localfs of a given size in the exact layout, for the index benchmark.

Usage:
    python bench/make_localfs.py ROOT --runs 1000 [--checkpoints 20] [--eval-datasets 2]
                                 [--eval-steps 5] [--jobs-per-run 1] [--seed 0]

Every run has config.yaml (the repo's configs/qwen2_5_1_5b_gsm8k.yaml), config_resolved.yaml, status.json, logs (train_log.jsonl of one line per step, rollouts,
ratios), a tensorboard event file, `--checkpoints` complete checkpoints (LoRA adapter files,
optimizer, scheduler, one RNG file, training_info.json listing every file with size and sha256)
and step_latest; `--eval-datasets` eval folders with `--eval-steps` evaluated steps each
(metrics.csv, completions.jsonl, summary.json) and consolidated_metrics.csv; and jobs. Runs are a
mix of completed, stopped, failed and in-progress (dead pid) statuses. File contents are small
but shaped like the real ones. Files are written plainly (no fsync): this is a benchmark fixture.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import yaml  # noqa: E402

from rltui.runs import localfs  # noqa: E402

START = _dt.datetime(2026, 1, 1)
ADAPTER_CONFIG = {
    "base_model_name_or_path": "models/tiny",
    "peft_type": "LORA",
    "task_type": "CAUSAL_LM",
    "r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "bias": "none",
}

REPO = Path(__file__).resolve().parents[1]
# The real workload's config, so the index parses a file of the real size and shape.
CONFIG_SOURCE = REPO / "configs" / "qwen2_5_1_5b_gsm8k.yaml"
FALLBACK_CONFIG = """\
model:
  base: models/tiny
lora:
  r: 16
data:
  dataset: arith
grpo:
  num_generations: 8
optim:
  learning_rate: 1.0e-05
training:
  total_steps: 500
  seed: 42
"""


def config_text(steps: int, seed: int) -> str:
    text = CONFIG_SOURCE.read_text() if CONFIG_SOURCE.is_file() else FALLBACK_CONFIG
    text = re.sub(r"(?m)^(\s*total_steps:\s*)\d+", rf"\g<1>{steps}", text)
    return re.sub(r"(?m)^(\s*seed:\s*)\d+", rf"\g<1>{seed}", text)


def write_configs(run_dir: Path, steps: int, seed: int) -> None:
    """config.yaml as given (comments and all) and config_resolved.yaml as the trainer writes it."""
    text = config_text(steps, seed)
    (run_dir / "config.yaml").write_text(text)
    (run_dir / "config_resolved.yaml").write_text(localfs.dump_yaml(yaml.safe_load(text)))


def _write(path: Path, data: bytes) -> dict[str, object]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _checkpoint(step_dir: Path, step: int, target: int, rng: random.Random) -> None:
    payload = {
        "model/adapter_config.json": json.dumps(ADAPTER_CONFIG, indent=2).encode(),
        "model/adapter_model.safetensors": rng.randbytes(2048),
        "model/README.md": b"# LoRA adapter\n\nSaved by trainer.rl_runner.\n",
        "optimizer.pt": rng.randbytes(4096),
        "scheduler.pt": rng.randbytes(512),
        "rng/rank_0.pt": rng.randbytes(1024),
    }
    files = {rel: _write(step_dir / rel, data) for rel, data in payload.items()}
    info = {
        "format": 1, "step": step, "target_step": target, "config_hash": "c0ffee" * 4,
        "world_size": 1, "data_position": step * 8, "rng_files": ["rng/rank_0.pt"],
        "metrics": {"reward_mean": round(rng.random(), 4), "loss": round(rng.random(), 4)},
        "created": time.time(), "host": "bench", "files": files,
    }
    (step_dir / localfs.CHECKPOINT_INFO).write_text(json.dumps(info, indent=2, sort_keys=True))


def _eval(folder: Path, run: str, dataset: str, steps: list[int], rng: random.Random) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "eval_config.yaml").write_text(f"training_run: {run}\neval_dataset: {dataset}\n")
    header = "step,accuracy,format_rate,mean_reward,mean_completion_length,n,seconds,tokens_per_s"
    rows = [header]
    for step in steps:
        acc = round(rng.random(), 4)
        d = folder / f"step_{step}_{dataset}"
        d.mkdir()
        (d / "metrics.csv").write_text("index,correct,format_ok,reward\n0,1,1,1.0\n1,0,1,0.1\n")
        (d / "completions.jsonl").write_text(
            "".join(json.dumps({"i": i, "completion": "x" * 200}) + "\n" for i in range(20))
        )
        summary = {"step": step, "dataset": dataset, "accuracy": acc, "format_rate": 0.9,
                   "mean_reward": acc, "mean_completion_length": 120.0, "n": 200,
                   "seconds": 30.0, "tokens_per_s": 800.0, "settings_hash": "ab12",
                   "error": None, "checkpoint": f"step_{step}"}
        (d / "summary.json").write_text(json.dumps(summary, indent=2))
        rows.append(f"{step},{acc},0.9,{acc},120.0,200,30.0,800.0")
    (folder / "consolidated_metrics.csv").write_text("\n".join(rows) + "\n")


def make_run(layout: localfs.Layout, index: int, args: argparse.Namespace, rng: random.Random) -> str:
    name = localfs.run_name_for(START + _dt.timedelta(minutes=17 * index))
    save_every = 10
    steps = [save_every * (k + 1) for k in range(args.checkpoints)]
    target = steps[-1] if steps else 100
    kind = ("completed", "stopped", "failed", "training")[index % 4]
    last = target if kind == "completed" else (steps[-1] if steps else 0)
    run_dir = layout.run_dir(name)
    run_dir.mkdir(parents=True)
    write_configs(run_dir, target, index)
    now = time.time()
    status = {"run": name, "step": last, "target_step": target, "phase": kind, "pid": 999_999_000 + index,
              "host": "bench-host", "time": now - 3600, "started": now - 7200, "world_size": 1,
              "latest_checkpoint": steps[-1] if steps else None, "parent": None,
              "error": "CUDA out of memory" if kind == "failed" else None}
    (run_dir / "status.json").write_text(json.dumps(status, indent=2))
    logs = layout.logs_dir(name)
    logs.mkdir()
    with open(logs / "train_log.jsonl", "w") as f:
        for s in range(1, last + 1):
            f.write(json.dumps({"step": s, "reward_mean": rng.random(), "loss": rng.random(),
                                "kl": rng.random() / 10, "lr": 1e-5, "time": now}) + "\n")
    (logs / "rollouts.jsonl").write_text(json.dumps({"step": 1, "completion": "y" * 2000}) + "\n")
    (logs / "ratios.jsonl").write_text(json.dumps({"step": 1, "ratio_mean": 1.0}) + "\n")
    tb = layout.tensorboard_dir(name)
    tb.mkdir()
    (tb / "events.out.tfevents.1700000000.bench").write_bytes(rng.randbytes(8192))
    ts = layout.training_state(name)
    for step in steps:
        _checkpoint(ts / localfs.step_dir_name(step), step, target, rng)
    if steps:
        os.symlink(localfs.step_dir_name(steps[-1]), ts / localfs.STEP_LATEST)
    eval_steps = steps[-args.eval_steps:] if args.eval_steps else []
    for d in range(args.eval_datasets):
        dataset = ("gsm8k", "arith", "svamp", "mawps")[d % 4] + ("" if d < 4 else str(d))
        _eval(layout.eval_dir(name, dataset), name, dataset, eval_steps, rng)
    for j in range(args.jobs_per_run):
        job_id = f"job_{index:05d}_{j}"
        jd = layout.job_dir(job_id)
        jd.mkdir(parents=True)
        spec = {"id": job_id, "kind": "train", "run": name,
                "argv": ["python", "-m", "trainer.rl_runner", "--cfg", "config.yaml"],
                "env": {}, "gpus": [0], "gpu_count": 1, "restart": {"auto_resume": True,
                "max_restarts": 3, "backoff_s": 10, "recover_exit_codes": [], "hang_timeout_s": 900,
                "save_hang_timeout_s": 1800}, "followups": [], "created": now - 7300}
        (jd / "job.json").write_text(json.dumps(spec, indent=2))
        state = {"state": "succeeded" if kind == "completed" else "failed", "keeper_pid": None,
                 "child_pid": None, "exit_code": 0 if kind == "completed" else 1, "restarts": j,
                 "reasons": [], "last_reason": None, "started_at": now - 7200,
                 "updated_at": now - 3600, "ended_at": now - 3600, "boot_time": None,
                 "gpus": [0], "run": name, "usage": {"gpu_seconds": 3600.0, "cost": 2.5}}
        (jd / "state.json").write_text(json.dumps(state, indent=2))
        (jd / "output.log").write_text("step 1 ...\n" * 50)
    return name


def make_localfs(root: Path, args: argparse.Namespace) -> list[str]:
    layout = localfs.Layout(root).ensure()
    rng = random.Random(args.seed)
    return [make_run(layout, i, args, rng) for i in range(args.runs)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--checkpoints", type=int, default=20)
    p.add_argument("--eval-datasets", type=int, default=2)
    p.add_argument("--eval-steps", type=int, default=5)
    p.add_argument("--jobs-per-run", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.root.exists() and any(args.root.iterdir()):
        print(f"make_localfs: {args.root} is not empty; pick a new folder", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    names = make_localfs(args.root, args)
    print(f"wrote {len(names)} runs under {args.root} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
