"""`rltui --batch fetch model|dataset` and `rltui --batch models` as a user runs them (real
subprocesses: the command, the keeper, `python -m trainer.fetch`), against a stand-in for the Hub
on 127.0.0.1 (tests/trainer/fake_hub.py, HF_ENDPOINT); and a run's provenance in `status`.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer"))
from fake_hub import FakeHub, folder_files  # noqa: E402

REPO_ID = "acme/tiny-qwen"
pytestmark = pytest.mark.slow


def _parquet(rows: list[tuple[str, str]], question: str = "question", answer: str = "answer") -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table({question: [q for q, _ in rows], answer: [a for _, a in rows],
                             "id": list(range(len(rows)))}), buf)
    return buf.getvalue()


TRAIN = [(f"Tom has {i} apples and buys {i + 2}. How many?", f"{i} + {i + 2} = {2 * i + 2} #### {2 * i + 2}")
         for i in range(40)]
TEST = [(f"Ana has {i} pens and loses 1. How many?", f"{i} - 1 = {i - 1} #### {i - 1}") for i in range(1, 11)]


@pytest.fixture
def hub(tiny_paths):
    server = FakeHub().start()
    server.add_repo("model", REPO_ID, folder_files(tiny_paths.base))
    server.add_repo("dataset", "openai/gsm8k", {
        "README.md": b"# gsm8k\n",
        "main/train-00000-of-00001.parquet": _parquet(TRAIN),
        "main/test-00000-of-00001.parquet": _parquet(TEST),
        "socratic/train-00000-of-00001.parquet": _parquet([("q", "a #### 1")]),
    })
    server.add_repo("dataset", "acme/sums", {
        "data/train.parquet": _parquet([("1+1", "2"), ("2+2", "4")], "problem", "solution"),
        "data/test.parquet": _parquet([("3+3", "6")], "problem", "solution"),
    })
    yield server
    server.stop()


def _rltui(tmp_path: Path, hub: FakeHub, *args: str, offline: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_CACHE=str(tmp_path / "hf_cache"),
               HF_ENDPOINT=hub.url, PYTHONUNBUFFERED="1")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([sys.executable, "-m", "rltui.cli", "--root", str(tmp_path / "localfs"),
                           "--batch", *args], capture_output=True, text=True, timeout=180, env=env)


def test_fetch_model_into_the_cache_and_as_a_localfs_name_then_models_lists_both(
        tmp_path: Path, hub: FakeHub, tiny_paths) -> None:
    done = _rltui(tmp_path, hub, "fetch", "model", REPO_ID)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"downloading {REPO_ID}" in done.stdout and "succeeded" in done.stderr
    commit = hub.repos[("model", REPO_ID)].commit
    snapshot = tmp_path / "hf_cache" / "models--acme--tiny-qwen" / "snapshots" / commit
    assert (snapshot / "model.safetensors").read_bytes() == (tiny_paths.base / "model.safetensors").read_bytes()
    job_logs = list((tmp_path / "localfs" / "jobs").glob("*-fetch-*/output.log"))
    assert len(job_logs) == 1 and f"downloaded {REPO_ID}" in job_logs[0].read_text()

    named = _rltui(tmp_path, hub, "fetch", "model", REPO_ID, "--as", "small")
    assert named.returncode == 0, named.stdout + named.stderr
    folder = tmp_path / "localfs" / "models" / "small"
    assert json.loads((folder / "fetch_info.json").read_text())["commit"] == commit
    assert not list((tmp_path / "localfs" / "models").glob(".tmp*"))

    again = _rltui(tmp_path, hub, "fetch", "model", REPO_ID, "--as", "small")
    assert again.returncode == 2 and "already exists" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1

    listed = _rltui(tmp_path, hub, "models", "--json", offline=True)
    assert listed.returncode == 0, listed.stderr
    models = {(m["name"], m["source"]): m for m in json.loads(listed.stdout)["models"]}
    cached, local = models[(REPO_ID, "cache")], models[("small", "localfs")]
    assert (cached["revision"], cached["commit"], cached["complete"]) == ("main", commit, True)
    assert cached["size"] >= len((tiny_paths.base / "model.safetensors").read_bytes())
    assert (local["repo_id"], local["commit"]) == (REPO_ID, commit)
    text = _rltui(tmp_path, hub, "models", offline=True).stdout
    assert REPO_ID in text and "main" in text and commit[:12] in text and "KiB" in text


def test_fetch_dataset_writes_gsm8k_jsonl_and_a_cut_leaves_nothing_partial(
        tmp_path: Path, hub: FakeHub) -> None:
    hub.cut("main/train-00000-of-00001.parquet", after_bytes=600)
    cut = _rltui(tmp_path, hub, "fetch", "dataset", "gsm8k", "--retries", "0")
    assert cut.returncode == 1, cut.stdout + cut.stderr
    assert "run it again" in cut.stdout + cut.stderr
    target = tmp_path / "localfs" / "datasets" / "gsm8k"
    assert not target.exists()
    assert not list((tmp_path / "localfs" / "datasets").glob(".tmp*"))
    snapshots = tmp_path / "hf_cache" / "datasets--openai--gsm8k" / "snapshots"
    assert not list(snapshots.glob("*/main/train-00000-of-00001.parquet"))

    hub.heal()
    done = _rltui(tmp_path, hub, "fetch", "dataset", "gsm8k")
    assert done.returncode == 0, done.stdout + done.stderr
    train = [json.loads(line) for line in (target / "train.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (target / "test.jsonl").read_text().splitlines()]
    assert [(r["question"], r["answer"]) for r in train] == TRAIN
    assert [(r["question"], r["answer"]) for r in test] == TEST
    info = json.loads((target / "fetch_info.json").read_text())
    assert (info["repo_id"], info["config"], info["rows"]) == ("openai/gsm8k", "main", {"train": 40, "test": 10})
    assert not any("socratic" in r for r in hub.requests if "/resolve/" in r)

    from trainer.data import load_split

    assert load_split(tmp_path / "localfs", "gsm8k_r1_template", "test")[0].gold == "0"


def test_fetch_dataset_renames_fields_and_marks_bare_answers(tmp_path: Path, hub: FakeHub) -> None:
    done = _rltui(tmp_path, hub, "fetch", "dataset", "acme/sums", "--question-field", "problem",
                  "--answer-field", "solution", "--as", "sums")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = (tmp_path / "localfs" / "datasets" / "sums" / "train.jsonl").read_text().splitlines()
    assert json.loads(rows[0]) == {"question": "1+1", "answer": "#### 2"}
    missing = _rltui(tmp_path, hub, "fetch", "dataset", "acme/sums", "--as", "sums2")
    assert missing.returncode == 2 and "no field 'question'" in missing.stdout + missing.stderr
    assert not (tmp_path / "localfs" / "datasets" / "sums2").exists()


@pytest.mark.parametrize("args, names", [
    (["fetch", "model", "not an id"], "'not an id'"),
    (["fetch", "model", "acme/x", "--revision", "a b"], "'a b'"),
    (["fetch", "model", "acme/x", "--as", "../up"], "../up"),
    (["fetch", "dataset", "nope"], "'nope'"),
    (["fetch", "dataset", "gsm8k", "--as", "9x"], "9x"),
    (["fetch", "model", "acme/x", "--retries", "-1"], "bad --retries: -1"),
])
def test_bad_fetch_input_is_one_line_exit_2_and_no_job(tmp_path: Path, hub: FakeHub, args, names) -> None:
    result = _rltui(tmp_path, hub, *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and names in lines[0], result.stderr
    assert not (tmp_path / "localfs" / "jobs").exists() or not any((tmp_path / "localfs" / "jobs").iterdir())


def test_status_and_the_run_detail_show_where_a_run_started(tmp_path: Path, hub: FakeHub) -> None:
    from rltui.runs import localfs
    from rltui.runs.index import Index
    from rltui.tui.run_detail import summary_text

    root = tmp_path / "localfs"
    layout = localfs.Layout(root).ensure()
    run = "run_2026-01-02_03-04-05"
    commit = "a09a35458c702b33eeacc393d103063234e8bc28"
    layout.run_dir(run).mkdir()
    localfs.write_yaml_atomic(layout.run_dir(run) / "config_resolved.yaml",
                              {"model": {"base": f"Qwen/Qwen2.5-1.5B-Instruct@{commit}"},
                               "data": {"dataset": "gsm8k_r1_template"}})
    localfs.write_json_atomic(layout.run_dir(run) / "provenance.json", {
        "base": {"spec": "Qwen/Qwen2.5-1.5B-Instruct", "kind": "hub", "repo_id": "Qwen/Qwen2.5-1.5B-Instruct",
                 "commit": commit, "revision": None, "path": "/x"},
        "start_adapter": {"path": "/sft/checkpoint-156", "label": "checkpoint-156", "global_step": 156,
                          "weights_sha256": "ab" * 32, "given": "/sft/checkpoint-156"}})
    localfs.write_json_atomic(layout.run_status(run), {"run": run, "step": 3, "target_step": 10,
                                                       "phase": "completed", "time": 1.0})
    text = _rltui(tmp_path, hub, "status").stdout
    assert "from checkpoint-156" in text and "Qwen2.5-1.5B-Instruct@a09a354" in text
    data = json.loads(_rltui(tmp_path, hub, "status", "--json").stdout)
    start = next(r for r in data["runs"] if r["name"] == run)["provenance"]
    assert start["base_commit"] == commit
    assert start["start_adapter"] == {"path": "/sft/checkpoint-156", "label": "checkpoint-156",
                                      "weights_sha256": "ab" * 32, "global_step": 156}
    record = Index(layout).scan().runs[run]
    line = summary_text(record).plain
    assert "from checkpoint-156" in line and "Qwen/Qwen2.5-1.5B-Instruct@a09a354" in line


def test_a_hub_that_cannot_be_reached_is_exit_1_to_retry_and_a_missing_repo_exit_2(
        tmp_path: Path, hub: FakeHub) -> None:
    import socket

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused_url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    closed.close()  # nothing listens there: every connection is refused
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_CACHE=str(tmp_path / "hf_cache"),
               HF_ENDPOINT=refused_url, PYTHONUNBUFFERED="1")
    root = tmp_path / "localfs"
    away = subprocess.run([sys.executable, "-m", "rltui.cli", "--root", str(root), "--batch", "fetch",
                           "model", REPO_ID, "--retries", "0"], capture_output=True, text=True, timeout=120,
                          env=env, check=False)
    assert away.returncode == 1, away.stdout + away.stderr
    line = next(x for x in away.stdout.splitlines() if x.startswith("fetch: error:"))
    assert f"model {REPO_ID}: the Hub ({refused_url}) cannot be reached" in line
    assert "run the same command again" in line and "bad input" not in away.stdout + away.stderr
    jobs = json.loads(subprocess.run([sys.executable, "-m", "rltui.cli", "--root", str(root), "--batch",
                                      "jobs", "--json"], capture_output=True, text=True, env=env,
                                     check=True).stdout)
    assert [(j["state"]["state"], j["state"]["last_reason"]) for j in jobs] == [("failed", "exit code 1")]
    assert not (tmp_path / "hf_cache").exists() or not any((tmp_path / "hf_cache").rglob("*.safetensors"))

    missing = _rltui(tmp_path, hub, "fetch", "model", "acme/no-such-model")
    assert missing.returncode == 2, missing.stdout + missing.stderr
    assert "no repo acme/no-such-model on the Hub" in missing.stdout + missing.stderr


def test_a_fetch_cut_off_is_run_again_by_its_keeper_and_completes(tmp_path: Path, hub: FakeHub) -> None:
    """The default: exit 1 is retried (here after 0.5 s, not 30), keeping the files already whole."""
    from dataclasses import replace

    from rltui.jobs import control
    from rltui.jobs.fetch_jobs import fetch_dataset_job
    from rltui.jobs.records import JobState, read_state
    from rltui.runs.localfs import Layout

    layout = Layout(tmp_path / "localfs").ensure()
    spec = fetch_dataset_job(layout, "gsm8k")
    assert (spec.restart.auto_resume, spec.restart.max_restarts, spec.restart.backoff_s) == (True, 3, 30.0)
    env = {"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_CACHE": str(tmp_path / "hf_cache"),
           "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}
    spec = spec.with_changes(env=env, restart=replace(spec.restart, backoff_s=0.5))
    hub.cut("main/train-00000-of-00001.parquet", after_bytes=600)
    control.launch(layout, spec)
    deadline = time.monotonic() + 120
    while (state := read_state(layout, spec.id)).state is not JobState.RESTARTING:
        assert not state.state.final and time.monotonic() < deadline, state.reasons
        time.sleep(0.05)
    assert state.cause and state.cause.startswith("fetch: error: dataset openai/gsm8k: download from")
    assert "restart 1 of the same command in 0.5s" in state.last_reason
    hub.heal()
    while not (state := read_state(layout, spec.id)).state.final:
        assert time.monotonic() < deadline, state.reasons
        time.sleep(0.1)
    assert (state.state, state.restarts, state.cause) == (JobState.SUCCEEDED, 1, None)
    rows = (layout.root / "datasets" / "gsm8k" / "train.jsonl").read_text().splitlines()
    assert [tuple(json.loads(r).values())[:2] for r in rows] == TRAIN
