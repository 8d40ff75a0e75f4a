"""The typed config: defaults, the shipped configs, and one clear ConfigError per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.config import Config, config_from_dict, load_config
from trainer.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_shipped_configs_load_and_use_trl_names():
    tiny = load_config(REPO / "configs" / "tiny.yaml")
    assert tiny.model.base == "tiny" and tiny.grpo.loss_type in ("grpo", "dr_grpo", "dapo")
    real = load_config(REPO / "configs" / "qwen2_5_1_5b_gsm8k.yaml")
    assert real.data.dataset == "gsm8k_r1_template"
    assert real.model.base == "Qwen/Qwen2.5-1.5B-Instruct"
    assert real.model.precision in ("auto", "bf16")
    assert real.grpo.num_generations == 8


def test_empty_config_gives_defaults_and_a_stable_hash():
    a, b = config_from_dict({}), Config()
    assert a == b and a.hash() == b.hash()
    assert config_from_dict({"grpo": {"beta": 0.1}}).hash() != a.hash()


def test_epsilon_high_defaults_to_epsilon():
    assert config_from_dict({"grpo": {"epsilon": 0.3}}).grpo.clip_high == 0.3
    assert config_from_dict({"grpo": {"epsilon_high": 0.28}}).grpo.clip_high == 0.28


def test_yaml_scientific_notation_reads_as_a_number(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  learning_rate: 1e-4\n")  # YAML 1.1 reads this as a string
    assert load_config(p).optim.learning_rate == 1e-4


@pytest.mark.parametrize("data, named", [
    ({"grpo": {"num_generation": 8}}, "'grpo.num_generation'"),
    ({"trainer": {}}, "'trainer'"),
    ({"rewards": [{"function": "correctness", "wieght": 1}]}, "'rewards[0].wieght'"),
    ({"grpo": {"num_generations": "8"}}, "'grpo.num_generations' must be an integer, got '8'"),
    ({"grpo": {"num_generations": 1}}, "'grpo.num_generations' = 1: must be >= 2"),
    ({"grpo": {"beta": -0.1}}, "'grpo.beta' = -0.1: must be >= 0.0"),
    ({"grpo": {"epsilon": 0}}, "'grpo.epsilon' = 0.0: must be > 0.0"),
    ({"grpo": {"loss_type": "ppo"}}, "'grpo.loss_type' = 'ppo': must be one of grpo, dr_grpo, dapo"),
    ({"grpo": {"top_p": 1.5}}, "'grpo.top_p' = 1.5: must be <= 1.0"),
    ({"model": {"gradient_checkpointing": "yes"}}, "'model.gradient_checkpointing' must be true or false"),
    ({"lora": {"target_modules": "q_proj"}}, "'lora.target_modules' must be a list"),
    ({"lora": {"target_modules": []}}, "'lora.target_modules' must not be empty"),
    ({"rewards": []}, "'rewards' must name at least one"),
    ({"training": {"total_steps": 5}, "optim": {"warmup_steps": 6}}, "'optim.warmup_steps' = 6"),
    ({"grpo": 3}, "'grpo' must be a mapping"),
])
def test_bad_values_raise_one_config_error_naming_key_and_value(data, named):
    with pytest.raises(ConfigError) as e:
        config_from_dict(data, source="c.yaml")
    message = str(e.value)
    assert named in message and message.startswith("c.yaml: ")
    assert "\n" not in message


def test_missing_and_unparsable_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("grpo: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n")
    with pytest.raises(ConfigError, match="must be a mapping of sections"):
        load_config(top)
