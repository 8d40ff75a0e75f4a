"""The built-in tiny model: an ordinary HF folder, a warm-start adapter with RL signal, built once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from trainer.data import arith_split, build_prompt
from trainer.generation import generate
from trainer.hub import resolve_model
from trainer.modeling import load_adapter, load_model_and_tokenizer
from trainer.rewards import is_correct, is_strict_format
from trainer.tiny import ensure_tiny

REPO = Path(__file__).resolve().parents[2]


def test_base_is_an_ordinary_hugging_face_folder(tiny_paths) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_paths.base)
    tokenizer = AutoTokenizer.from_pretrained(tiny_paths.base)
    assert model.config.model_type == "qwen2"
    assert tokenizer.eos_token and tokenizer.pad_token and tokenizer.eos_token != tokenizer.pad_token
    text = "Ana has 12 pens.\n<think>12-5=7</think><answer>7</answer>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text  # byte-level BPE decodes back exactly
    assert len(tokenizer.tokenize("<answer>")) == 1


def test_warmstart_is_a_plain_peft_adapter(tiny_paths) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_paths.base)
    model = PeftModel.from_pretrained(base, tiny_paths.warmstart)
    assert any("lora_A" in name for name, _ in model.named_parameters())


def test_warmstarted_policy_answers_in_format_with_modest_accuracy(tiny_paths) -> None:
    model, tokenizer = load_model_and_tokenizer(tiny_paths.base, "cpu", torch.float32)
    model = load_adapter(model, tiny_paths.warmstart)
    examples = arith_split("test")[:64]
    prompts = [build_prompt(tokenizer, e.question, "r1_template") for e in examples]
    out = generate(model, tokenizer, prompts, max_new_tokens=20, do_sample=True, seed=0)
    correct = sum(is_correct(c, e.gold) for c, e in zip(out.texts, examples)) / len(examples)
    formatted = sum(map(is_strict_format, out.texts)) / len(examples)
    # RL needs both: well-formed answers, and right answers that are neither rare nor the rule
    assert formatted > 0.8
    assert 0.1 < correct < 0.8


def test_ensure_tiny_reuses_an_existing_build(tiny_root: Path) -> None:
    info = tiny_root / "models" / "tiny" / "tiny_info.json"
    before = info.stat().st_mtime_ns
    paths = ensure_tiny(tiny_root)
    assert paths.base == tiny_root / "models" / "tiny" / "base"
    assert info.stat().st_mtime_ns == before
    assert resolve_model("tiny", tiny_root).path == paths.base


BUILD_SMALL = """
import sys
from dataclasses import replace
from pathlib import Path
from trainer.tiny import TinySettings, ensure_tiny
settings = replace(TinySettings(), pretrain_steps=2, warmstart_steps=2, pretrain_batch=4,
                   warmstart_batch=4)
ensure_tiny(Path(sys.argv[1]), settings)
"""


def test_two_processes_building_at_once_build_it_once(tmp_path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", BUILD_SMALL, str(tmp_path)], cwd=REPO)
             for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    built = tmp_path / "models" / "tiny"
    assert (built / "tiny_info.json").is_file()
    assert (built / "base" / "config.json").is_file()
    assert (built / "warmstart" / "adapter_config.json").is_file()
    leftovers = [p.name for p in (tmp_path / "models").iterdir() if p.name.startswith(".tmp_")]
    assert leftovers == []
