"""One base in memory, adapters switched: every checkpoint gets exactly its own weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evaluator.adapters import AdapterSwitcher
from trainer.errors import ConfigError
from trainer.modeling import load_adapter, load_model_and_tokenizer


def _adapter(base: Path, out: Path, seed: int, r: int = 8, alpha: int = 16,
             targets: str | list[str] = "all-linear") -> Path:
    from peft import LoraConfig, get_peft_model

    model, _ = load_model_and_tokenizer(base, "cpu", torch.float32)
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=targets,
                                             task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(out)
    return out


def _logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(["Tom has 3 pens. Tom gets 4 more."], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


def _fresh(base: Path, adapter: Path) -> torch.Tensor:
    model, tokenizer = load_model_and_tokenizer(base, "cpu", torch.float32)
    return _logits(load_adapter(model, adapter), tokenizer)


def test_switching_gives_each_adapter_exactly_its_own_weights(tiny_paths, tmp_path: Path) -> None:
    base = tiny_paths.base
    a, b = _adapter(base, tmp_path / "a", 1), _adapter(base, tmp_path / "b", 2)
    wide = _adapter(base, tmp_path / "wide", 3, r=16, alpha=8)  # another rank and scale
    narrow = _adapter(base, tmp_path / "narrow", 4, targets=["q_proj", "v_proj"])  # not swappable
    model, tokenizer = load_model_and_tokenizer(base, "cpu", torch.float32)
    plain = _logits(model, tokenizer)
    switcher = AdapterSwitcher(model, base, "cpu")
    for adapter in (a, b, a, wide, a, b, narrow, tiny_paths.warmstart):
        assert torch.allclose(_logits(switcher.activate(adapter), tokenizer), _fresh(base, adapter),
                              atol=1e-6)
    # same settings are hot-swapped; another rank, scale or set of targets is loaded afresh
    assert (switcher.hotswaps, switcher.fresh_loads) == (3, 5)
    assert torch.equal(_logits(switcher.base(), tokenizer), plain)
    assert not switcher.has_lora_layers()


def test_an_adapter_that_does_not_fit_leaves_the_active_one_in_place(tiny_paths, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    other = tmp_path / "other"
    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    get_peft_model(Qwen2ForCausalLM(config), LoraConfig(r=4, target_modules="all-linear",
                                                        task_type="CAUSAL_LM")).save_pretrained(other)
    model, tokenizer = load_model_and_tokenizer(tiny_paths.base, "cpu", torch.float32)
    switcher = AdapterSwitcher(model, tiny_paths.base, "cpu")
    before = _logits(switcher.activate(tiny_paths.warmstart), tokenizer)
    with pytest.raises(ConfigError, match=str(other)):
        switcher.activate(other)
    assert switcher.active == tiny_paths.warmstart
    assert torch.equal(_logits(switcher.model, tokenizer), before)
