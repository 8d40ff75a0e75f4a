"""`rltui --batch status` as a user runs it: a real subprocess of `python -m rltui.cli`."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rltui import gpu
from rltui.runs import localfs
from rltui.cli import status as cmd_status
from rltui.runs.index import Index

REPO = Path(__file__).resolve().parents[2]

RUN_KEYS = {
    "name", "path", "legacy", "status", "status_reason", "stalled", "step", "target_step", "phase",
    "latest_complete_step", "pid", "host", "started", "updated", "error", "parent", "config",
    "last_metrics", "checkpoints", "evals", "job_ids", "restarts", "gpu_seconds", "cost", "writer",
    "provenance",
    "target_history",
}
CHECKPOINT_KEYS = {"step", "path", "complete", "problems", "size_bytes", "is_latest", "created"}
EVAL_KEYS = {"run", "dataset", "path", "best_accuracy", "best_step", "last_accuracy", "last_step",
             "error", "in_progress", "steps"}
EVAL_STEP_KEYS = {"step", "accuracy", "format_rate", "mean_reward", "n", "error"}
JOB_KEYS = {"id", "kind", "run", "state", "orphaned", "argv", "gpus", "restarts", "last_reason", "cause",
            "created", "started_at", "updated_at", "ended_at", "exit_code", "keeper_pid", "usage",
            "error"}
CONFIG_KEYS = {"model", "dataset", "lora_r", "learning_rate", "num_generations", "max_steps"}


def rltui(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "rltui.cli", *args], capture_output=True, text=True, env=full_env,
        cwd=str(REPO), timeout=120,
    )


def test_plain_status_lists_runs_incomplete_checkpoints_jobs_and_gpus(every_kind):
    proc = rltui("--batch", "status", "--root", str(every_kind.root))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "\x1b" not in out  # not a terminal: no escape codes
    lines = out.splitlines()

    def line_of(name: str) -> str:
        return next(x for x in lines if f" {name} " in x + " ")

    assert "✓ completed" in line_of("run_2026-01-01_00-00-01")
    assert "gsm8k 0.500 @2" in line_of("run_2026-01-01_00-00-01")
    assert "▶ running" in line_of("run_2026-01-01_00-00-04") and "3/9" in line_of("run_2026-01-01_00-00-04")
    assert "step_2" in line_of("run_2026-01-01_00-00-04")
    assert "✗ crashed" in line_of("run_2026-01-01_00-00-03")
    # what to type next, under each crashed run with a checkpoint, and under no other
    crashed = [x.split()[2] for x in lines if "✗ crashed" in x]
    hinted = [lines[i - 1].split()[2] for i, x in enumerate(lines) if "resume: rltui" in x]
    assert len(crashed) == 3 and hinted == crashed
    crashed_note = lines[lines.index(line_of("run_2026-01-01_00-00-03")) + 1]
    assert crashed_note.startswith("      ↳ trainer pid ")
    assert crashed_note.endswith("; resume: rltui --batch resume run_2026-01-01_00-00-03"), crashed_note
    assert "■ stopped" in line_of("run_2026-01-01_00-00-02")
    assert "? unknown" in line_of("run_2026-01-01_00-00-05")
    assert "INCOMPLETE CHECKPOINTS" in out
    assert "missing file optimizer.pt" in out and "wrong size scheduler.pt" in out
    assert "missing training_info.json (save did not finish)" in out and "unfinished save" in out
    assert "JOBS" in out and "job_lost" in out and "lost" in line_of("job_lost")
    assert "GPU" in out.split("GPUS", 1)[1]
    assert "LEGACY RUNS" in out and "100, 200 (1 without an adapter)" in out
    assert "DAMAGED FILES" in out and "training_info.json: not valid JSON" in out
    assert proc.stderr == ""


def test_json_status_follows_schema_1(every_kind):
    proc = rltui("--batch", "status", "--json", "--root", str(every_kind.root))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == 1
    assert set(doc) == {"schema", "root", "generated_at", "host", "runs", "legacy_runs", "jobs",
                        "orphan_evals", "gpus", "errors", "archive"}
    assert doc["root"] == str(every_kind.root)
    runs = {r["name"]: r for r in doc["runs"]}
    for r in doc["runs"] + doc["legacy_runs"]:
        assert set(r) == RUN_KEYS
        assert set(r["config"]) == CONFIG_KEYS
        assert r["status"] in {"running", "completed", "stopped", "crashed", "unknown"}
        for c in r["checkpoints"]:
            assert set(c) == CHECKPOINT_KEYS
        for e in r["evals"].values():
            assert set(e) == EVAL_KEYS and all(set(s) == EVAL_STEP_KEYS for s in e["steps"])
    assert runs["run_2026-01-01_00-00-03"]["status"] == "crashed"
    assert runs["run_2026-01-01_00-00-04"]["status"] == "running"
    assert runs["run_2026-01-01_00-00-01"]["evals"]["gsm8k"]["last_accuracy"] == 0.5
    bad = {c["path"].rsplit("/", 1)[1]: c["problems"] for c in runs["run_2026-01-01_00-00-07"]["checkpoints"]}
    assert bad["step_2"] == ["missing file optimizer.pt"]
    for j in doc["jobs"]:
        assert set(j) == JOB_KEYS
    assert {j["id"]: j["state"] for j in doc["jobs"]} == {"job_done": "succeeded", "job_lost": "lost"}
    assert doc["legacy_runs"][0]["legacy"] is True
    assert set(doc["gpus"]) == {"available", "reason", "devices"}
    assert any(e["path"].endswith("step_1/training_info.json") for e in doc["errors"])


def test_run_filter_shows_only_that_run_and_its_jobs(every_kind):
    proc = rltui("--batch", "status", "--json", "--run", "run_2026-01-01_00-00-08",
                 "--root", str(every_kind.root))
    doc = json.loads(proc.stdout)
    assert [r["name"] for r in doc["runs"]] == ["run_2026-01-01_00-00-08"]
    assert [j["id"] for j in doc["jobs"]] == ["job_lost"]


@pytest.mark.parametrize("bad", ["../etc", "a/b", "..", "/abs/path", "-x"])
def test_a_run_name_that_escapes_the_root_is_refused_with_exit_2(every_kind, bad, tree_state):
    before = tree_state(every_kind.root)
    proc = rltui("--batch", "status", "--root", str(every_kind.root), f"--run={bad}")
    assert proc.returncode == 2
    assert proc.stdout == ""
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and repr(bad) in err[0] and "Traceback" not in proc.stderr
    assert tree_state(every_kind.root) == before


def test_unknown_run_and_missing_root_are_bad_input(every_kind, tmp_path):
    proc = rltui("--batch", "status", "--root", str(every_kind.root), "--run", "run_1999-01-01_00-00-00")
    assert proc.returncode == 2 and "no run named 'run_1999-01-01_00-00-00'" in proc.stderr
    missing = tmp_path / "nowhere"
    proc = rltui("--batch", "status", "--root", str(missing))
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"rltui: error: no localfs at {missing} (pass --root DIR or set $LOCALFS_ROOT; "
        "`rltui --batch train`, `fetch` or `demo` make one, or mkdir it)")


@pytest.mark.parametrize("args", [[], ["--batch", "jobs"], ["--batch", "logs", "job"], ["--batch", "stop", "job"],
                                  ["--batch", "kill", "job"], ["--batch", "runs"], ["--batch", "compare", "a"],
                                  ["--batch", "export", "a", "--to", "csv"]])
def test_a_reader_or_the_tui_on_a_root_that_is_not_there_is_one_line_and_makes_nothing(tmp_path, args):
    # the TUI's watcher once made the folders of a mistyped --root: an empty localfs, shown as such
    missing = tmp_path / "typo" / "localfs"
    proc = rltui("--root", str(missing), *args)
    assert proc.returncode == 2 and proc.stderr == (
        f"rltui: error: no localfs at {missing} (pass --root DIR or set $LOCALFS_ROOT; "
        "`rltui --batch train`, `fetch` or `demo` make one, or mkdir it)\n")
    assert not (tmp_path / "typo").exists()


def test_commands_that_make_or_look_beyond_the_root_still_run_without_it(tmp_path):
    missing = tmp_path / "fresh"
    proc = rltui("--root", str(missing), "--batch", "models", env={"HF_HUB_CACHE": str(tmp_path / "hub")})
    assert proc.returncode == 0 and "no models" in proc.stdout, proc.stderr


def test_root_comes_from_the_environment_when_no_flag_is_given(every_kind):
    proc = rltui("--batch", "status", "--json", env={"LOCALFS_ROOT": str(every_kind.root)})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["root"] == str(every_kind.root)


def test_status_on_a_terminal_is_coloured_and_no_color_turns_it_off(every_kind):
    def on_tty(extra_env: dict[str, str]) -> str:
        leader, follower = pty.openpty()
        env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", **extra_env}
        env.pop("NO_COLOR", None) if "NO_COLOR" not in extra_env else None
        proc = subprocess.Popen(
            [sys.executable, "-m", "rltui.cli", "--batch", "status", "--root", str(every_kind.root)],
            stdout=follower, stderr=subprocess.PIPE, env=env, cwd=str(REPO),
        )
        os.close(follower)
        chunks = []
        while True:
            try:
                block = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not block:
                break
            chunks.append(block)
        os.close(leader)
        assert proc.wait(timeout=60) == 0
        return b"".join(chunks).decode()

    assert "\x1b[" in on_tty({})
    assert "\x1b[" not in on_tty({"NO_COLOR": "1"})


def test_gpus_are_listed_one_line_each_when_there_are_some(every_kind):
    snap = Index(every_kind.layout).scan()
    sample = gpu.fake_gpus(2, used_mib=[100, 5000])
    out = io.StringIO()
    cmd_status.write_text(snap, cmd_status.GpuReport(True, None, list(sample.gpus)), out)
    gpu_part = out.getvalue().split("GPUS\n", 1)[1]
    assert "GPU 0  Fake GPU  util 0%  mem 100/81559 MiB" in gpu_part
    assert "GPU 1  Fake GPU  util 0%  mem 5000/81559 MiB" in gpu_part
    doc = cmd_status.snapshot_to_json(snap, cmd_status.GpuReport(True, None, list(sample.gpus)))
    assert [d["mem_used_mib"] for d in doc["gpus"]["devices"]] == [100.0, 5000.0]


def test_no_gpu_is_one_clear_line_with_the_reason(every_kind):
    snap = Index(every_kind.layout).scan()
    out = io.StringIO()
    cmd_status.write_text(snap, cmd_status.GpuReport(False, "no GPU found by NVML", []), out)
    assert "  GPU: not available (no GPU found by NVML)\n" in out.getvalue()


def test_a_gpu_process_under_a_jobs_keeper_is_named_by_its_job(monkeypatch):
    from types import SimpleNamespace

    # keeper -> its command -> a worker holding the GPU (as torchrun's ranks do)
    keeper = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys; subprocess.run([sys.executable, '-c', "
        "'import subprocess, sys, time; subprocess.Popen([sys.executable, \"-c\", \"import time; time.sleep(60)\"]); time.sleep(60)'])"
    )])
    try:
        import psutil

        proc = psutil.Process(keeper.pid)
        for _ in range(200):
            workers = [p for p in proc.children(recursive=True) if not p.children()]
            if len(proc.children(recursive=True)) >= 2 and workers:
                break
            time.sleep(0.05)
        worker = workers[0].pid
        sample = gpu.fake_gpus(1)
        sample = dataclasses.replace(sample, gpus=[dataclasses.replace(
            sample.gpus[0], processes=(gpu.GpuProcess(pid=worker, used_mib=1000.0),))])
        monkeypatch.setattr(gpu, "sample", lambda: sample)
        snap = SimpleNamespace(runs={}, active_jobs=[SimpleNamespace(id="job-1", run="run_a", keeper_pid=keeper.pid)])
        report = cmd_status.sample_gpus(snap)
        (p,) = report.devices[0].processes
        assert (p.pid, p.job, p.run) == (worker, "job-1", "run_a")
    finally:
        for p in psutil.Process(keeper.pid).children(recursive=True):
            p.kill()
        keeper.kill()
        keeper.wait()


def test_cost_is_null_without_a_price_in_the_run_and_in_job_usage(lfs):
    lfs.run("run_2026-01-01_00-00-01")
    lfs.job("20260101-000001-aaaa", "run_2026-01-01_00-00-01", "succeeded",
            usage={"gpu_seconds": 60.0, "cost": None, "price_per_gpu_hour": None})
    lfs.run("run_2026-01-01_00-00-02")
    lfs.job("20260101-000002-bbbb", "run_2026-01-01_00-00-02", "succeeded",
            usage={"gpu_seconds": 3600.0, "cost": 2.5, "price_per_gpu_hour": 2.5})
    proc = rltui("--batch", "status", "--json", "--root", str(lfs.root))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    runs = {r["name"]: r for r in doc["runs"]}
    assert runs["run_2026-01-01_00-00-01"]["cost"] is None
    assert runs["run_2026-01-01_00-00-02"]["cost"] == 2.5
    jobs = {j["id"]: j for j in doc["jobs"]}
    assert "cost" in jobs["20260101-000001-aaaa"]["usage"]
    assert jobs["20260101-000001-aaaa"]["usage"]["cost"] is None


def test_a_finished_evaluation_is_not_in_progress(lfs):
    run = "run_2026-01-01_00-00-01"
    lfs.run(run)
    lfs.evaluation(run, "arith", {2: 0.5})
    status = {"run": run, "dataset": "arith", "phase": "completed", "done": [2], "total": 1}
    localfs.write_json_atomic(lfs.layout.eval_status(run, "arith"), status)
    lfs.evaluation(run, "gsm8k", {1: 0.25})
    localfs.write_json_atomic(lfs.layout.eval_status(run, "gsm8k"), dict(status, phase="evaluating"))
    proc = rltui("--batch", "status", "--json", "--root", str(lfs.root))
    assert proc.returncode == 0, proc.stderr
    evals = json.loads(proc.stdout)["runs"][0]["evals"]
    assert evals["arith"]["in_progress"] is None
    assert evals["gsm8k"]["in_progress"]["phase"] == "evaluating"


def test_an_extended_target_shows_the_original_and_each_extension(lfs):
    from rltui.runs.records import target_note

    run = "run_2026-01-01_00-00-01"
    lfs.run(run, phase="stopped", step=61, target=153)
    status = json.loads(lfs.layout.run_status(run).read_text())
    localfs.write_json_atomic(lfs.layout.run_status(run), dict(status, target_history=[150, 153]))
    proc = rltui("--batch", "status", "--json", "--root", str(lfs.root))
    assert json.loads(proc.stdout)["runs"][0]["target_history"] == [150, 153]
    text = rltui("--batch", "status", "--root", str(lfs.root)).stdout
    assert "61/153 (150+3)" in text
    assert target_note([150]) == "" and target_note([6, 7, 9]) == " (6+1+2)"


def test_an_eval_result_says_how_many_questions_it_is_from(lfs):
    from rltui.runs.index import Index
    from rltui.tui.run_detail import checkpoint_cells

    run = "run_2026-01-01_00-00-01"
    lfs.run(run)
    lfs.evaluation(run, "arith", {2: 0.5})  # n = 10 questions
    assert "arith 0.500 @2 (n=10)" in rltui("--batch", "status", "--root", str(lfs.root)).stdout
    rec = Index(lfs.layout).scan().runs[run]
    (ckpt,) = [c for c in rec.checkpoints if c.step == 2]
    assert checkpoint_cells(ckpt, rec)[-1] == "arith 50.0% of 10"
