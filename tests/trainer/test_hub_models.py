"""Base models named by Hub id, through huggingface_hub's real client, with no internet.

- a Hugging Face cache in the Hub's own layout holding the tiny model as `acme/tiny-qwen`: train,
  resume and evaluate resolve it without a single request (HF_ENDPOINT points at a recording
  stand-in for the Hub, so any request would be seen);
- an uncached id is downloaded from a local stand-in for the Hub (tests/trainer/fake_hub.py),
  progress in the output; a connection cut mid-file leaves nothing partial in the cache and
  the next try completes;
- offline (or unreachable) and uncached: exit 2, one line naming the id and the fetch command.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fake_hub import FakeHub, folder_files, make_hub_cache

REPO = Path(__file__).resolve().parents[2]
REPO_ID = "acme/tiny-qwen"
pytestmark = pytest.mark.slow


@pytest.fixture
def hub():
    server = FakeHub().start()
    yield server
    server.stop()


@pytest.fixture
def tiny_files(tiny_paths) -> dict[str, bytes]:
    return folder_files(tiny_paths.base)


def _env(tmp_path: Path, hub: FakeHub, offline: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_CACHE=str(tmp_path / "hf_cache"),
               HF_ENDPOINT=hub.url, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def _config(tmp_path: Path, base: str, steps: int = 1) -> Path:
    cfg = {"model": {"base": base}, "data": {"dataset": "arith_r1_template"},
           "grpo": {"num_generations": 2, "per_device_prompts": 2, "max_completion_length": 8},
           "training": {"total_steps": steps, "save_every": 1, "cpu_threads": 1}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _py(module: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def _run_name(out: str) -> str:
    return next(line.split()[1] for line in out.splitlines() if line.startswith("run: "))


def test_a_cached_hub_id_trains_resumes_and_evaluates_without_a_request(
        tmp_path: Path, hub: FakeHub, tiny_files: dict[str, bytes]) -> None:
    root = tmp_path / "localfs"
    snapshot = make_hub_cache(tmp_path / "hf_cache", REPO_ID, tiny_files)
    commit = snapshot.name
    # online settings, the Hub (a recording stand-in) reachable: a cached id is still not asked for
    train = _py("trainer.rl_runner", ["--cfg", str(_config(tmp_path, REPO_ID, steps=2)),
                                      "--root", str(root)], _env(tmp_path, hub))
    assert train.returncode == 0, train.stderr[-3000:]
    run = _run_name(train.stdout)
    offline = _env(tmp_path, hub, offline=True)
    resume = _py("trainer.resume_training", ["--training-run", run, "--from-step", "2",
                                             "--additional-steps", "1", "--no-torchrun",
                                             "--root", str(root)], offline)
    assert resume.returncode == 0, resume.stderr[-3000:]
    evaluate = _py("evaluator.eval_batch", ["--training-run", run, "--steps", "3", "--root", str(root),
                                            "--subset-frac", "0.02", "--max-new-tokens", "8"], offline)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert hub.requests == []

    run_dir = root / "training_runs" / run
    resolved = yaml.safe_load((run_dir / "config_resolved.yaml").read_text())
    assert resolved["model"]["base"] == f"{REPO_ID}@{commit}"
    base = json.loads((run_dir / "provenance.json").read_text())["base"]
    assert (base["repo_id"], base["commit"], base["kind"]) == (REPO_ID, commit, "hub")
    info = json.loads((run_dir / "training_state" / "step_3" / "training_info.json").read_text())
    assert info["provenance"]["base"]["commit"] == commit
    eval_dir = root / "eval_runs" / f"{run}_arith_r1_template"
    summary = json.loads((eval_dir / "step_3_arith_r1_template" / "summary.json").read_text())
    assert summary["error"] is None
    assert commit in yaml.safe_load((eval_dir / "eval_config.yaml").read_text())["base_model"]


def test_saving_from_a_hub_adapter_asks_the_hub_nothing(
        tmp_path: Path, hub: FakeHub, tiny_files: dict[str, bytes], tiny_paths) -> None:
    # An SFT adapter from the Hub names its base by Hub id. peft's save_pretrained, left to decide
    # whether to save the embeddings, asked the Hub for that id's config.json at every save: one
    # request a checkpoint, two warnings each where the box has no network.
    import shutil

    make_hub_cache(tmp_path / "hf_cache", REPO_ID, tiny_files)
    adapter = tmp_path / "sft_adapter"
    shutil.copytree(tiny_paths.warmstart, adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps(dict(config, base_model_name_or_path=REPO_ID)))
    train = _py("trainer.rl_runner", ["--cfg", str(_config(tmp_path, REPO_ID, steps=2)), "--ckpt", str(adapter),
                                      "--root", str(tmp_path / "localfs")], _env(tmp_path, hub))
    assert train.returncode == 0, train.stderr[-3000:]
    assert hub.requests == []  # steps 0, 1 and 2 saved
    assert "Could not find a config file" not in train.stderr
    assert "is_gradient_checkpointing" not in train.stderr  # (peft's read of a deprecated name: no action for anyone)


def test_an_uncached_hub_id_downloads_and_after_a_cut_nothing_partial_is_left(
        tmp_path: Path, hub: FakeHub, tiny_files: dict[str, bytes]) -> None:
    root = tmp_path / "localfs"
    repo = hub.add_repo("model", REPO_ID, tiny_files)
    weights = len(tiny_files["model.safetensors"])
    hub.cut("model.safetensors", after_bytes=weights // 3)
    cfg = _config(tmp_path, REPO_ID)
    env = _env(tmp_path, hub)

    cut = _py("trainer.rl_runner", ["--cfg", str(cfg), "--root", str(root)], env)
    assert cut.returncode == 1, cut.stdout[-2000:] + cut.stderr[-2000:]
    error = cut.stderr.strip().splitlines()[-1]
    assert f"base model {REPO_ID}" in error and "run it again" in error
    snapshot = tmp_path / "hf_cache" / "models--acme--tiny-qwen" / "snapshots" / repo.commit
    assert not (snapshot / "model.safetensors").exists()  # nothing partial where a reader looks
    assert not list((tmp_path / "hf_cache").rglob("*.incomplete"))
    assert not (root / "training_runs").exists() or not any((root / "training_runs").iterdir())

    hub.heal()
    again = _py("trainer.rl_runner", ["--cfg", str(cfg), "--root", str(root)], env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"downloading {REPO_ID}" in again.stdout and f"downloaded {REPO_ID}" in again.stdout
    assert (snapshot / "model.safetensors").read_bytes() == tiny_files["model.safetensors"]
    gets = [r for r in hub.file_requests("model.safetensors") if r.startswith("GET")]
    assert len(gets) >= 3  # the cut one, the refused retry, the one that completed
    run_dir = root / "training_runs" / _run_name(again.stdout)
    assert json.loads((run_dir / "provenance.json").read_text())["base"]["commit"] == repo.commit


def test_offline_and_uncached_is_exit_2_with_one_line_naming_the_fetch_command(
        tmp_path: Path, hub: FakeHub) -> None:
    result = _py("trainer.rl_runner", ["--cfg", str(_config(tmp_path, REPO_ID + "@v1")),
                                       "--root", str(tmp_path / "localfs")],
                 _env(tmp_path, hub, offline=True))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{REPO_ID}@v1" in lines[0] and f"rltui --batch fetch model {REPO_ID} --revision v1" in lines[0]
    assert hub.requests == []


@pytest.mark.parametrize("situation", ["offline", "refused", "silent"])
def test_an_uncached_id_fails_within_5_s_when_the_hub_cannot_answer(
        situation: str, tmp_path: Path, monkeypatch) -> None:
    from huggingface_hub import constants

    from trainer.errors import ConfigError
    from trainer.hub import resolve_model

    silent = socket.socket()  # accepts connections (the kernel does) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    refused_port = refused.getsockname()[1]
    refused.close()  # nothing listens there any more
    endpoint = {"offline": "http://127.0.0.1:9", "refused": f"http://127.0.0.1:{refused_port}",
                "silent": f"http://127.0.0.1:{silent.getsockname()[1]}"}[situation]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", situation == "offline")
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    started = time.monotonic()
    try:
        with pytest.raises(ConfigError) as failure:
            resolve_model(REPO_ID, tmp_path)
    finally:
        silent.close()
    assert time.monotonic() - started < 5.0
    message = str(failure.value)
    assert "\n" not in message and REPO_ID in message
    assert f"rltui --batch fetch model {REPO_ID}" in message


def test_model_names_tiny_folder_localfs_and_hub_ids_resolve_without_the_network(
        tiny_root: Path, tmp_path: Path) -> None:
    import shutil

    from trainer.errors import ConfigError
    from trainer.hub import parse_hub_id, resolve_model

    assert parse_hub_id("acme/tiny-qwen@main") == ("acme/tiny-qwen", "main")
    assert parse_hub_id("acme/tiny-qwen") == ("acme/tiny-qwen", None)
    assert parse_hub_id("tiny") is None and parse_hub_id("a/b/c") is None
    tiny = resolve_model("tiny", tiny_root)
    assert (tiny.kind, tiny.pinned) == ("tiny", "tiny")
    folder = resolve_model(str(tiny.path), tiny_root)
    assert (folder.kind, folder.path) == ("folder", tiny.path)
    fetched = tiny_root / "models" / "qwen-small"
    shutil.copytree(tiny.path, fetched)
    (fetched / "fetch_info.json").write_text(json.dumps({"repo_id": REPO_ID, "commit": "c" * 40}))
    named = resolve_model("qwen-small", tiny_root)
    assert (named.kind, named.path, named.repo_id, named.commit) == ("localfs", fetched, REPO_ID, "c" * 40)
    assert named.pinned == "qwen-small"
    with pytest.raises(ConfigError, match="base model not found: no such thing"):
        resolve_model("no such thing", tiny_root)


def test_download_progress_is_whole_lines_of_bytes_done(monkeypatch) -> None:
    from trainer import hub

    said: list[str] = []
    monkeypatch.setattr(hub, "PROGRESS_EVERY_S", 0.0)
    bar = hub.line_progress(REPO_ID, said.append)(total=3_000_000, unit="B", desc="Downloading bytes")
    bar.update(1_500_000)
    quiet = hub.line_progress(REPO_ID, said.append)(total=10, unit="it", desc="Fetching 3 files")
    quiet.update(3)
    bar.close()
    quiet.close()
    assert len(said) == 1  # the files bar says nothing; the bytes bar one line per interval
    assert said[0].startswith(f"download {REPO_ID}: 1.4 MiB of 2.9 MiB (50%)")
    assert "\r" not in said[0] and "\n" not in said[0]
