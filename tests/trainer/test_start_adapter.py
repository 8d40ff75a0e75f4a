"""The starting adapter's intake (`--ckpt` / model.init_adapter): which folders are taken, what
is said about the rest, and when a base model named by the adapter is the one in use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rltui.runs.checkpoints import sha256_file
from trainer.errors import ConfigError
from trainer.start_adapter import global_step_of, open_start_adapter, same_base


def _adapter(folder: Path, base: str = "Qwen/Qwen2.5-1.5B-Instruct") -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4,
                                                            "base_model_name_or_path": base}))
    (folder / "adapter_model.safetensors").write_bytes(b"weights of " + folder.name.encode())
    return folder


def _hf_checkpoint(folder: Path, step: int) -> Path:
    _adapter(folder)
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin",
                 "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes(b"x")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "epoch": 1.0}))
    return folder


def test_a_peft_folder_is_taken_whole_with_its_weights_sha256(tmp_path: Path) -> None:
    folder = _adapter(tmp_path / "sft_adapter")
    start = open_start_adapter(str(folder))
    assert (start.path, start.label, start.global_step) == (folder, "sft_adapter", None)
    assert start.weights_sha256 == sha256_file(folder / "adapter_model.safetensors")
    assert start.base_named == "Qwen/Qwen2.5-1.5B-Instruct" and start.intake_line() is None


def test_an_hf_checkpoint_gives_its_adapter_its_global_step_and_one_line_on_the_rest(tmp_path: Path) -> None:
    folder = _hf_checkpoint(tmp_path / "out" / "checkpoint-156", 156)
    start = open_start_adapter(str(folder))
    assert (start.path, start.label, start.global_step) == (folder, "checkpoint-156", 156)
    line = start.intake_line()
    assert line is not None and "\n" not in line and "global_step 156" in line
    assert all(n in line for n in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"))
    assert "tokenizer" not in line and "adapter_model" not in line
    assert start.record()["global_step"] == 156


def test_an_output_dir_of_checkpoints_is_refused_naming_them(tmp_path: Path) -> None:
    for step in (50, 100, 156):
        _hf_checkpoint(tmp_path / "out" / f"checkpoint-{step}", step)
    with pytest.raises(ConfigError, match=r"checkpoint-50, checkpoint-100, checkpoint-156; name one"):
        open_start_adapter(str(tmp_path / "out"))


def test_our_step_folder_gives_its_model_adapter_and_bad_folders_are_named(tmp_path: Path) -> None:
    step = tmp_path / "run" / "training_state" / "step_40"
    _adapter(step / "model")
    start = open_start_adapter(str(step))
    assert (start.path, start.label) == (step / "model", "step_40")
    with pytest.raises(ConfigError, match="adapter not found: .*nope"):
        open_start_adapter(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="missing adapter_config.json"):
        open_start_adapter(str(tmp_path / "empty"))


def test_global_step_falls_back_to_the_folder_number(tmp_path: Path) -> None:
    folder = _adapter(tmp_path / "checkpoint-7")
    (folder / "trainer_state.json").write_text("{not json")
    assert global_step_of(folder) == 7
    assert global_step_of(tmp_path) is None


def test_same_base_by_name_path_repo_id_and_the_tiny_rule(tmp_path: Path) -> None:
    base = tmp_path / "models" / "tiny" / "base"
    base.mkdir(parents=True)
    assert same_base("Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct@abc", tmp_path,
                     "Qwen/Qwen2.5-1.5B-Instruct")
    assert not same_base("Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-1.5B-Instruct", tmp_path, "Qwen/Qwen2.5-1.5B-Instruct")
    assert same_base(str(base), "mine", base, None)
    assert same_base("/elsewhere/models/tiny/base", "tiny", base, None)
    assert same_base(None, "anything", base, None)


def test_a_base_other_than_the_adapters_is_one_warning_and_from_adapter_needs_one(
        tiny_root: Path, tiny_paths, tmp_path: Path, capsys) -> None:
    import shutil

    import yaml

    from trainer import rl_runner
    from trainer.session import prepare

    adapter = tmp_path / "sft"
    shutil.copytree(tiny_paths.warmstart, adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps(dict(config, base_model_name_or_path="acme/other")))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"base": "tiny"}, "data": {"dataset": "arith_r1_template"}}))
    session = prepare(rl_runner.parse_args(["--cfg", str(cfg), "--root", str(tiny_root), "--ckpt", str(adapter)]))
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "acme/other" in warnings[0] and "tiny" in warnings[0]
    assert session.cfg.model.init_adapter == str(adapter)
    assert session.provenance["start_adapter"]["weights_sha256"] == sha256_file(adapter / "adapter_model.safetensors")

    cfg.write_text(yaml.safe_dump({"model": {"base": "from_adapter"}, "data": {"dataset": "arith_r1_template"}}))
    with pytest.raises(ConfigError, match="from_adapter needs a starting adapter"):
        prepare(rl_runner.parse_args(["--cfg", str(cfg), "--root", str(tiny_root)]))
