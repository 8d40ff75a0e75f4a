"""Metrics store at scale, side by side with MLflow's SQLite tracking store holding the same data.

Usage (mlflow lives in a separate venv, never in the project's dependencies):
    python3 -m venv .venv-bench && .venv-bench/bin/pip install "mlflow==3.*" pandas pyyaml
    .venv-bench/bin/pip install -e . --no-deps            # rltui itself, standard library store
    .venv-bench/bin/python bench/compare_scale.py WORKDIR [--runs 1000] [--steps 1000] [--phase all|make|ours|mlflow|measure]
    .venv/bin/python bench/compare_scale.py WORKDIR --phase tui   # the TUI part (Textual, no mlflow)

WORKDIR/localfs: --runs runs x --steps logged steps x 10 metrics (train_log.jsonl), evals at 20
checkpoints (consolidated_metrics.csv), a job with usage per run. WORKDIR/mlflow.db: the same
runs in MLflow (params = the flattened config, the same metric points, eval metrics at their
steps), written with MlflowClient.log_batch. Each phase appends its numbers to WORKDIR/results.json:

- cold ingestion: rltui.runs.ingest into an empty store vs loading MLflow with log_batch;
- incremental: one run logs one step; our ingestion pass over the whole localfs vs log_batch of
  that step's 10 metrics;
- query: `--where ... --sort` through rltui.runs.query vs mlflow.search_runs with the same
  filter and order (the two answers are checked to name the same runs in the same order);
- curves: 1,000 runs' reward series, Store.series vs MlflowClient.get_metric_history per run;
- tui: the compare screen with 20 runs drawn vs the run detail's single-run plot.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

METRICS = ["loss", "kl", "clip_low", "clip_high", "ratio_mean", "reward_mean", "reward_std",
           "completion_length", "learning_rate", "grad_norm"]
EVAL_COLUMNS = ["accuracy", "format_rate", "mean_reward"]
DATASETS = ["gsm8k_r1_template", "arith"]
# MLflow's filter has no OR and no IN over params (mlflow#6075): the one query both can ask
WHERE = "data.dataset = 'gsm8k_r1_template' and last(eval_accuracy) > 0.6 and lora.r = 16"
SORT = "-last(reward_mean)"
MLFLOW_FILTER = ("params.`data.dataset` = 'gsm8k_r1_template' and metrics.eval_accuracy > 0.6"
                 " and params.`lora.r` = '16'")
MLFLOW_ORDER = ["metrics.reward_mean DESC"]
T0 = 1_780_000_000.0


def run_name(i: int) -> str:
    day, rest = divmod(i, 86400 // 60)
    h, m = divmod(rest, 60)
    return f"run_2026-{1 + day // 28:02d}-{1 + day % 28:02d}_{h:02d}-{m:02d}-00"


def run_config(i: int) -> dict[str, object]:
    return {"model.base": "Qwen/Qwen2.5-1.5B-Instruct", "data.dataset": DATASETS[i % 2],
            "lora.r": (8, 16, 32, 64)[(i // 2) % 4], "lora.alpha": 32, "lora.dropout": 0.05,
            "grpo.num_generations": (8, 16)[(i // 8) % 2], "grpo.beta": 0.04,
            "optim.learning_rate": (1e-5, 3e-6, 1e-6)[i % 3], "training.total_steps": 1000,
            "training.seed": i}


# ---------------------------------------------------------------- the localfs


def make(work: Path, runs: int, steps: int) -> float:
    root = work / "localfs"
    if (root / "training_runs").exists():
        return 0.0
    t0 = time.perf_counter()
    rng = random.Random(0)
    for i in range(runs):
        name = run_name(i)
        rd = root / "training_runs" / name
        (rd / "logs").mkdir(parents=True)
        cfg = run_config(i)
        (rd / "config_resolved.yaml").write_text(_yaml(cfg))
        (rd / "status.json").write_text(json.dumps({
            "run": name, "step": steps, "target_step": steps, "phase": ("completed", "stopped")[i % 5 == 0],
            "pid": 1, "host": "bench", "time": T0 + i, "started": T0 + i - 3600, "world_size": 1}))
        rate = 0.5 + rng.random()
        with open(rd / "logs" / "train_log.jsonl", "w") as f:
            for s in range(1, steps + 1):
                f.write(_line(s, rate, rng))
        ev = root / "eval_runs" / f"{name}_{cfg['data.dataset']}"
        ev.mkdir(parents=True)
        rows = ["step,accuracy,format_rate,mean_reward,mean_completion_length,n,seconds,tokens_per_s"]
        for s in eval_steps(steps):
            acc = round(min(1.0, rate * 0.6 * s / steps + rng.random() * 0.1), 4)
            rows.append(f"{s},{acc},0.95,{acc},120.0,200,30.0,800.0")
        (ev / "consolidated_metrics.csv").write_text("\n".join(rows) + "\n")
        jd = root / "jobs" / f"job_{i:05d}"
        jd.mkdir(parents=True)
        (jd / "job.json").write_text(json.dumps({"id": jd.name, "kind": "train", "run": name}))
        (jd / "state.json").write_text(json.dumps({
            "state": "succeeded", "run": name, "started_at": T0, "ended_at": T0 + 3600,
            "usage": {"gpu_seconds": 3600.0, "energy_j": 1.2e6, "cost": 2.5}}))
    return time.perf_counter() - t0


def eval_steps(steps: int) -> list[int]:
    return [steps * k // 20 for k in range(1, 21)]


def _yaml(flat: dict[str, object]) -> str:
    out, last = [], []
    for key, value in flat.items():
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            if last[: depth + 1] != parts[: depth + 1]:
                out.append("  " * depth + f"{part}:")
        out.append("  " * (len(parts) - 1) + f"{parts[-1]}: {value}")
        last = parts[:-1]
    return "\n".join(out) + "\n"


def _line(step: int, rate: float, rng: random.Random) -> str:
    r = min(1.0, rate * step / 1000) + rng.random() * 0.05
    values = [1.0 / (1 + step / 100) + rng.random() * 0.01, 0.001 * step ** 0.5, 0.01, 0.02, 1.0, r,
              0.2, 120 + rng.random(), 1e-5, rng.random()]
    return "{" + f'"step": {step}, ' + ", ".join(f'"{k}": {v!r}' for k, v in zip(METRICS, values)) \
        + f', "time": {T0 + step}' + "}\n"


def read_points(root: Path, name: str) -> tuple[list[tuple[int, dict[str, float]]], list[tuple[int, float]]]:
    with open(root / "training_runs" / name / "logs" / "train_log.jsonl") as f:
        train = [(d["step"], {k: d[k] for k in METRICS}) for d in map(json.loads, f)]
    evals = []
    for folder in (root / "eval_runs").glob(f"{name}_*"):
        for row in (folder / "consolidated_metrics.csv").read_text().splitlines()[1:]:
            step, acc, fmt, mr = row.split(",")[:4]
            evals.append((int(step), {"accuracy": float(acc), "format_rate": float(fmt), "mean_reward": float(mr)}))
    return train, evals


# ---------------------------------------------------------------- our side


def ours_cold(work: Path) -> dict[str, float]:
    from rltui.runs.ingest import ingest
    from rltui.runs.localfs import Layout
    from rltui.runs.store import Store, store_path

    root = work / "localfs"
    for suffix in ("", "-wal", "-shm"):
        Path(str(store_path(root)) + suffix).unlink(missing_ok=True)
    t0 = time.perf_counter()
    with Store.open(root) as store:
        report = ingest(store, Layout(root))
    seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    with Store.open(root) as store:
        again = ingest(store, Layout(root))
    return {"ours_cold_s": seconds, "ours_points": report.points, "ours_noop_pass_s": time.perf_counter() - t1,
            "ours_noop_runs_read": again.runs_read,
            "store_mb": store_path(root).stat().st_size / 2**20}


# ---------------------------------------------------------------- MLflow's side


def mlflow_client(work: Path):  # noqa: ANN201
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")


def mlflow_load(work: Path) -> dict[str, float]:
    from mlflow.entities import Metric, Param, RunTag

    root = work / "localfs"
    names = sorted(p.name for p in (root / "training_runs").iterdir())
    t_import = time.perf_counter()
    client = mlflow_client(work)
    exp = client.get_experiment_by_name("bench")
    exp_id = exp.experiment_id if exp else client.create_experiment("bench")
    setup = time.perf_counter() - t_import
    ids: dict[str, str] = {}
    t0 = time.perf_counter()
    for i, name in enumerate(names):
        train, evals = read_points(root, name)
        run = client.create_run(exp_id, run_name=name)
        rid = run.info.run_id
        ids[name] = rid
        cfg = run_config(i)
        client.log_batch(rid, params=[Param(k, str(v)) for k, v in cfg.items()],
                         tags=[RunTag("status", "completed")])
        points = [Metric(k, v, int((T0 + s) * 1000), s) for s, d in train for k, v in d.items()]
        points += [Metric(f"eval_{k}", v, int((T0 + s) * 1000), s) for s, d in evals for k, v in d.items()]
        for b in range(0, len(points), 1000):  # MLflow's limit: 1,000 metrics per log_batch
            client.log_batch(rid, metrics=points[b:b + 1000])
        client.set_terminated(rid)
        if i % 100 == 99:
            print(f"  mlflow: {i + 1} runs in {time.perf_counter() - t0:.0f} s", flush=True)
    (work / "mlflow_ids.json").write_text(json.dumps(ids))
    return {"mlflow_load_s": time.perf_counter() - t0, "mlflow_setup_s": setup}


# ---------------------------------------------------------------- measurements


def best_of(fn, repeat: int = 5) -> tuple[float, object]:  # noqa: ANN001
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def mlflow_runs(client, exp_id: str) -> dict[str, str]:  # noqa: ANN001
    """run name -> MLflow run id of the runs whose load finished (set_terminated comes last)."""
    out, token = {}, None
    while True:
        page = client.search_runs([exp_id], filter_string="attributes.status = 'FINISHED'",
                                  max_results=1000, page_token=token)
        out.update({r.info.run_name: r.info.run_id for r in page})
        token = page.token
        if not token:
            return out


def measure(work: Path, steps: int) -> dict[str, float]:
    import mlflow

    from rltui.runs.ingest import ingest
    from rltui.runs.localfs import Layout
    from rltui.runs.query import select_runs
    from rltui.runs.store import Store

    root = work / "localfs"
    layout = Layout(root)
    client = mlflow_client(work)
    mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
    exp_id = client.get_experiment_by_name("bench").experiment_id
    out: dict[str, float] = {}
    ids = mlflow_runs(client, exp_id)
    names = sorted(ids)  # the runs MLflow holds (all of them, unless its load was stopped early)
    out["mlflow_runs_held"] = len(names)
    times = [(r.info.start_time, r.info.end_time) for r in
             client.search_runs([exp_id], "attributes.status = 'FINISHED'", max_results=5000)]
    out["mlflow_load_s_of_held"] = (max(t[1] for t in times) - min(t[0] for t in times)) / 1000
    store = Store.open(root)
    ingest(store, layout)

    # query and sort
    cols = ["status", "lora.r", "last(eval_accuracy)", "last(reward_mean)"]
    out["ours_query_s"], (_h, rows) = best_of(lambda: select_runs(store, WHERE, SORT, cols))
    out["mlflow_query_s"], frame = best_of(lambda: mlflow.search_runs(
        experiment_ids=[exp_id], filter_string=MLFLOW_FILTER, order_by=MLFLOW_ORDER, max_results=5000), 3)
    held = set(names)
    ours_names = [r[0] for r in rows if r[0] in held]  # ours searched every run: compare on MLflow's
    theirs = [n for n in frame["tags.mlflow.runName"] if n in held]
    out["query_runs_ours"] = len(rows)
    out["query_runs"] = len(ours_names)
    out["query_same_answer"] = float(ours_names == theirs)
    python = REPO / ".venv" / "bin" / "python"  # the project's own environment, as a user runs it
    cli = [str(python if python.exists() else sys.executable), "-m", "rltui.cli", "--root", str(root), "--batch", "runs", "--where", WHERE,
           f"--sort={SORT}", "--csv"]
    out["ours_query_cli_s"], _ = best_of(lambda: subprocess.run(cli, check=True, capture_output=True,
                                                                 cwd=REPO), 3)

    # every run's reward curve: ours for all runs of the localfs, MLflow's for the runs it holds
    every = store.run_names()
    out["curves_runs_ours"] = len(every)
    out["ours_curves_s"], series = best_of(lambda: store.series(every, "reward_mean"), 3)
    out["mlflow_curves_s"], hist = best_of(
        lambda: [client.get_metric_history(ids[n], "reward_mean") for n in names], 1)
    out["curves_points_ours"] = sum(len(s[0]) for s in series.values())
    out["curves_runs_mlflow"] = len(hist)
    out["curves_points_mlflow"] = sum(len(h) for h in hist)

    # incremental: one run logs one step
    name = names[len(names) // 2]
    step = steps + 1 + int(time.time()) % 100000
    with open(root / "training_runs" / name / "logs" / "train_log.jsonl", "a") as f:
        f.write(_line(step, 1.0, random.Random(step)))
    t0 = time.perf_counter()
    report = ingest(store, layout)
    out["ours_incremental_s"] = time.perf_counter() - t0
    out["ours_incremental_points"] = report.points
    # the same, told which run changed (what the TUI's refresh and the keeper do)
    with open(root / "training_runs" / name / "logs" / "train_log.jsonl", "a") as f:
        f.write(_line(step + 1, 1.0, random.Random(step)))
    t0 = time.perf_counter()
    report = ingest(store, layout, runs=[name])
    out["ours_incremental_one_run_s"] = time.perf_counter() - t0
    out["ours_incremental_one_run_points"] = report.points
    from mlflow.entities import Metric

    t0 = time.perf_counter()
    client.log_batch(ids[name], metrics=[Metric(k, 0.5, int(time.time() * 1000), step) for k in METRICS])
    out["mlflow_incremental_s"] = time.perf_counter() - t0
    store.close()
    return out


def tui(work: Path, repeat: int = 15) -> dict[str, float]:
    """Compare screen with 20 runs vs the run detail's plot of one run, in a headless app."""
    import asyncio

    from bench.tui_compare import measure_tui  # Textual: the project's venv, not the bench's

    return asyncio.run(measure_tui(work / "localfs", repeat))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("work", type=Path)
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--phase", default="all", choices=["all", "make", "ours", "mlflow", "measure", "tui"])
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    results_path = args.work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    phases = ["make", "ours", "mlflow", "measure"] if args.phase == "all" else [args.phase]
    for phase in phases:
        t0 = time.perf_counter()
        if phase == "make":
            got = {"make_s": make(args.work, args.runs, args.steps), "runs": args.runs, "steps": args.steps}
        elif phase == "ours":
            got = ours_cold(args.work)
        elif phase == "mlflow":
            got = mlflow_load(args.work)
        elif phase == "measure":
            got = measure(args.work, args.steps)
        else:
            got = tui(args.work)
        results.update(got)
        results_path.write_text(json.dumps(results, indent=2))
        print(f"{phase} ({time.perf_counter() - t0:.1f} s): " + json.dumps(got), flush=True)
    for a, b in (("ours_query_s", "mlflow_query_s"), ("ours_curves_s", "mlflow_curves_s"),
                 ("ours_cold_s", "mlflow_load_s"), ("ours_incremental_s", "mlflow_incremental_s")):
        if a in results and b in results and results[a] > 0:
            print(f"{b} / {a} = {results[b] / results[a]:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
