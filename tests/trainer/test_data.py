"""Datasets by name, the built-in arith task and prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.data import (
    Example,
    arith_split,
    build_prompt,
    load_split,
    parse_dataset_name,
    r1_solution,
)
from trainer.errors import ConfigError
from trainer.rewards import gold_answer, is_correct, is_strict_format


def test_dataset_name_splits_into_source_and_template() -> None:
    parsed = parse_dataset_name("gsm8k_r1_template")
    assert (parsed.source, parsed.template) == ("gsm8k", "r1_template")
    assert parse_dataset_name("my_math_r1_template").source == "my_math"


def test_a_short_dataset_name_stands_for_its_one_template() -> None:
    parsed = parse_dataset_name("arith")
    assert (parsed.name, parsed.source, parsed.template) == ("arith_r1_template", "arith", "r1_template")
    assert load_split(Path("/nonexistent"), "arith", "test") == arith_split("test")


@pytest.mark.parametrize("name", ["r1_template", "_r1_template", "../x_r1_template",
                                  "9gsm_r1_template", "gsm8k_chat_template"])
def test_bad_dataset_name_is_a_config_error_naming_it(name: str) -> None:
    with pytest.raises(ConfigError, match="bad dataset name"):
        load_split(Path("/nonexistent"), name, "test")


def test_arith_splits_are_deterministic_and_disjoint() -> None:
    train, test = arith_split("train"), arith_split("test")
    assert len(test) == 300 and len(train) > 10_000
    assert not {e.question for e in train} & {e.question for e in test}
    assert load_split(Path("/nonexistent"), "arith_r1_template", "test") == test
    assert arith_split("test")[0] == test[0]


def test_arith_examples_are_gsm8k_format_with_consistent_gold() -> None:
    for e in arith_split("test")[:50]:
        assert e.gold == gold_answer(e.answer)
        a, op_b = e.answer.split("\n")[0].split("=")[0], e.answer.split("=")[1].split("\n")[0]
        assert str(eval(a)) == op_b == e.gold  # the working line is right arithmetic
        solution = r1_solution(e)
        assert is_strict_format(solution) and is_correct(solution, e.gold)


def test_gsm8k_is_read_from_datasets_folder(tmp_path: Path) -> None:
    folder = tmp_path / "datasets" / "gsm8k"
    folder.mkdir(parents=True)
    rows = [{"question": "How many?", "answer": "2 + 2 = 4\n#### 4"},
            {"question": "Cost?", "answer": "#### $1,500"}]
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_split(tmp_path, "gsm8k_r1_template", "test") == [
        Example("How many?", "2 + 2 = 4\n#### 4", "4"), Example("Cost?", "#### $1,500", "1500")]


def test_gsm8k_is_read_from_the_seed_processed_folder(tmp_path: Path) -> None:
    folder = tmp_path / "rlp_datasets" / "processed" / "gsm8k_r1_template"
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text(json.dumps({"question": "q", "answer": "#### 1"}) + "\n")
    assert load_split(tmp_path, "gsm8k_r1_template", "train")[0].gold == "1"


def test_missing_dataset_names_every_place_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_split(tmp_path, "gsm8k_r1_template", "test")
    message = str(e.value)
    assert str(tmp_path / "datasets" / "gsm8k" / "test.jsonl") in message
    assert str(tmp_path / "rlp_datasets" / "processed" / "gsm8k_r1_template" / "test.jsonl") in message


def test_damaged_dataset_line_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "datasets" / "gsm8k"
    folder.mkdir(parents=True)
    (folder / "test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{"question": 3}\n')
    with pytest.raises(ConfigError, match=r"test.jsonl:2: needs string fields"):
        load_split(tmp_path, "gsm8k_r1_template", "test")


class _ChatTokenizer:
    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert not tokenize and add_generation_prompt
        return "|".join(f"{m['role']}:{m['content']}" for m in messages) + "|assistant:"


class _PlainTokenizer:
    chat_template = None


def test_prompt_uses_the_chat_template_when_the_tokenizer_has_one() -> None:
    prompt = build_prompt(_ChatTokenizer(), "What is 2+2?", "r1_template")
    assert prompt.startswith("system:") and "<answer>" in prompt
    assert prompt.endswith("user:What is 2+2?|assistant:")


def test_prompt_is_short_plain_text_without_chat_template() -> None:
    prompt = build_prompt(_PlainTokenizer(), "What is 2+2?", "r1_template")
    assert prompt.startswith("What is 2+2?\n") and "<think>" in prompt and len(prompt) < 80
    with pytest.raises(ConfigError, match="bad template"):
        build_prompt(_PlainTokenizer(), "q", "chatml")
