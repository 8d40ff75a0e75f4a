"""Base-model resolution, adapter loading and unloading, and the adapter-fits check."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from trainer.errors import ConfigError
from trainer.hub import resolve_model
from trainer.modeling import (
    check_adapter_fits,
    load_adapter,
    load_model_and_tokenizer,
    unload_adapter,
)


def _other_adapter(tmp_path: Path, **config) -> Path:
    """A real peft adapter saved from a differently shaped Qwen2."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    base = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2)
    base.update(config)
    model = get_peft_model(Qwen2ForCausalLM(Qwen2Config(**base)),
                           LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    out = tmp_path / "other_adapter"
    model.save_pretrained(out)
    return out


def test_resolve_base_model_refuses_a_missing_folder_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=str(tmp_path / "nope")):
        resolve_model(str(tmp_path / "nope"), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"), tmp_path)


def test_warmstart_adapter_fits_the_tiny_base(tiny_paths) -> None:
    check_adapter_fits(tiny_paths.base, tiny_paths.warmstart)


def test_adapter_of_another_width_does_not_fit(tiny_paths, tmp_path: Path) -> None:
    adapter = _other_adapter(tmp_path)
    with pytest.raises(ConfigError) as e:
        check_adapter_fits(tiny_paths.base, adapter)
    assert str(adapter) in str(e.value) and "shape" in str(e.value)
    model, _ = load_model_and_tokenizer(tiny_paths.base, "cpu", torch.float32)
    with pytest.raises(ConfigError, match="does not load"):
        load_adapter(model, adapter)


def test_adapter_with_modules_the_base_lacks_does_not_fit(tiny_paths, tmp_path: Path) -> None:
    adapter = _other_adapter(tmp_path, hidden_size=64, intermediate_size=192, num_hidden_layers=3)
    with pytest.raises(ConfigError, match=r"model\.layers\.2\..* is not in the base model"):
        check_adapter_fits(tiny_paths.base, adapter)


def test_adapter_folder_without_weights_is_named(tiny_paths, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_paths.warmstart, broken)
    (broken / "adapter_model.safetensors").unlink()
    model, _ = load_model_and_tokenizer(tiny_paths.base, "cpu", torch.float32)
    with pytest.raises(ConfigError, match=f"adapter {broken}: missing adapter_model.safetensors"):
        load_adapter(model, broken)
    with pytest.raises(ConfigError, match="missing adapter_model.safetensors"):
        check_adapter_fits(tiny_paths.base, broken)


def test_load_then_unload_gives_back_the_base_model_unchanged(tiny_paths) -> None:
    model, tokenizer = load_model_and_tokenizer(tiny_paths.base, "cpu", torch.float32)
    assert tokenizer.padding_side == "left"
    ids = tokenizer(["Tom has 3 pens."], return_tensors="pt")["input_ids"]
    before = model(input_ids=ids).logits
    with_adapter = load_adapter(model, tiny_paths.warmstart, adapter_name="step_1")
    adapted = with_adapter(input_ids=ids).logits
    assert not torch.allclose(adapted, before)
    base = unload_adapter(with_adapter)
    assert torch.equal(base(input_ids=ids).logits, before)
    again = load_adapter(base, tiny_paths.warmstart, adapter_name="step_2")
    assert torch.equal(again(input_ids=ids).logits, adapted)


def test_adapter_on_a_bf16_base_keeps_the_saved_float32_weights(tiny_paths, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    model, _ = load_model_and_tokenizer(tiny_paths.base, "cpu", torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) / 3)
    model.save_pretrained(tmp_path / "adapter")
    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    base, _ = load_model_and_tokenizer(tiny_paths.base, "cpu", torch.bfloat16)
    loaded = dict(load_adapter(base, tmp_path / "adapter").named_parameters())
    for key, tensor in saved.items():
        assert tensor.dtype == torch.float32
        assert torch.equal(loaded[key.replace(".weight", ".default.weight")], tensor), key
