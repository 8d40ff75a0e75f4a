"""Starting GRPO from an SFT checkpoint written by TRL's SFTTrainer (a real HF `checkpoint-N`).

TRL is a test extra (pyproject [test]); a few SFT steps on the tiny model on the CPU write the
checkpoint once per module. The run that starts from it must begin with exactly its adapter, and
record where it came from; `--ckpt-path` evaluation of the same folder must work.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("trl")

SFT_STEPS = 3


@pytest.fixture(scope="module")
def sft_checkpoint(tiny_paths, tmp_path_factory) -> Path:
    """TRL SFTTrainer, LoRA on the tiny base, SFT_STEPS steps, one checkpoint: checkpoint-3/."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    out = tmp_path_factory.mktemp("sft")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_paths.base))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_paths.base), dtype=torch.float32)
    data = Dataset.from_dict({"text": [f"{i} + {i + 1} = {2 * i + 1}" for i in range(24)]})
    args = SFTConfig(output_dir=str(out), max_steps=SFT_STEPS, save_steps=SFT_STEPS,
                     per_device_train_batch_size=4, learning_rate=1e-2, max_length=32,
                     report_to=[], use_cpu=True, logging_steps=1, disable_tqdm=True, seed=0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                   peft_config=lora).train()
    checkpoint = out / f"checkpoint-{SFT_STEPS}"
    assert (checkpoint / "trainer_state.json").is_file() and (checkpoint / "optimizer.pt").is_file()
    return checkpoint


def _config(tmp_path: Path, base: str) -> Path:
    cfg = {"model": {"base": base}, "data": {"dataset": "arith_r1_template"},
           "grpo": {"num_generations": 2, "per_device_prompts": 2, "max_completion_length": 8},
           "training": {"total_steps": 1, "save_every": 1, "cpu_threads": 1}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(argv: list[str]) -> tuple[int, str, str]:
    from trainer import rl_runner

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = rl_runner.main(argv)
    return code, out.getvalue(), err.getvalue()


def test_a_run_from_a_trl_checkpoint_starts_from_its_adapter_and_records_it(
        sft_checkpoint: Path, tiny_root: Path, tmp_path: Path, kit) -> None:
    from rltui.runs.checkpoints import sha256_file

    # model.base: from_adapter -> the base TRL trained on (its base_model_name_or_path)
    code, out, err = _run(["--cfg", str(_config(tmp_path, "from_adapter")), "--root", str(tiny_root),
                           "--ckpt", str(sft_checkpoint)])
    assert code == 0, err
    run = next(line.split()[1] for line in out.splitlines() if line.startswith("run: "))
    intake = [line for line in out.splitlines() if "not used:" in line]
    assert len(intake) == 1 and f"checkpoint-{SFT_STEPS}" in intake[0]
    assert "optimizer.pt" in intake[0] and "trainer_state.json" in intake[0]

    run_dir = tiny_root / "training_runs" / run
    step0 = run_dir / "training_state" / "step_0"
    from safetensors.torch import load_file

    ours = load_file(str(step0 / "model" / "adapter_model.safetensors"))
    theirs = load_file(str(sft_checkpoint / "adapter_model.safetensors"))
    assert ours.keys() == theirs.keys() and len(ours) > 0
    import torch

    assert all(torch.equal(ours[k], theirs[k]) for k in ours), "step 0 is not the SFT adapter"

    sha = sha256_file(sft_checkpoint / "adapter_model.safetensors")
    provenance = json.loads((run_dir / "provenance.json").read_text())
    start = provenance["start_adapter"]
    assert start["path"] == str(sft_checkpoint) and start["weights_sha256"] == sha
    assert start["global_step"] == SFT_STEPS and start["label"] == f"checkpoint-{SFT_STEPS}"
    info = json.loads((run_dir / "training_state" / "step_1" / "training_info.json").read_text())
    assert info["provenance"]["start_adapter"]["weights_sha256"] == sha
    resolved = yaml.safe_load((run_dir / "config_resolved.yaml").read_text())
    assert resolved["model"]["init_adapter"] == str(sft_checkpoint)
    assert Path(resolved["model"]["base"]).resolve() == Path(start["base_model_name_or_path"]).resolve()


def test_ckpt_path_evaluates_a_trl_checkpoint_as_its_global_step(sft_checkpoint: Path,
                                                                  tiny_root: Path) -> None:
    from evaluator import eval_batch

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = eval_batch.main(["--ckpt-path", str(sft_checkpoint), "--root", str(tiny_root),
                                "--eval-dataset", "arith_r1_template", "--subset-frac", "0.02",
                                "--max-new-tokens", "8"])
    assert code == 0, err.getvalue()
    folder = tiny_root / "eval_runs" / f"checkpoint-{SFT_STEPS}_arith_r1_template"
    summary = json.loads((folder / f"step_{SFT_STEPS}_arith_r1_template" / "summary.json").read_text())
    assert summary["error"] is None and summary["n"] >= 1
    assert summary["checkpoint"]["path"] == str(sft_checkpoint)
