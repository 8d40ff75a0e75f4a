"""Answer extraction, normalisation and the reward functions on GSM8K-style cases."""

from __future__ import annotations

import sys
import textwrap

import pytest

from trainer.errors import ConfigError
from trainer.rewards import (
    correctness_reward,
    extract_answer,
    format_reward_soft,
    format_reward_strict,
    gold_answer,
    is_correct,
    load_reward,
    normalize_number,
)


@pytest.mark.parametrize("raw, expected", [
    ("42", "42"),
    ("1,234", "1234"),
    ("$1,234.00", "1234"),
    ("-7", "-7"),
    ("-$5", "-5"),
    ("$-5", "-5"),
    ("+3", "3"),
    ("3.50", "3.5"),
    ("0.25", "0.25"),
    (".5", "0.5"),
    ("18.0", "18"),
    ("42.", "42"),
    (" 1 000 ", "1000"),
    ("50%", "50"),
    ("-0", "0"),
    ("100", "100"),
])
def test_normalize_number_canonicalises_gsm8k_spellings(raw: str, expected: str) -> None:
    assert normalize_number(raw) == expected


@pytest.mark.parametrize("raw", ["", "abc", "12 apples", "1/2", "--3", None])
def test_normalize_number_refuses_text_that_is_not_one_number(raw) -> None:
    assert normalize_number(raw) is None


def test_gold_answer_is_the_normalised_text_after_the_last_marker() -> None:
    assert gold_answer("She pays 2*3 = <<2*3=6>>6 dollars.\n#### 1,200") == "1200"
    assert gold_answer("x #### 3 #### $-4.0") == "-4"
    assert gold_answer("no marker 17") == "no marker 17"
    assert gold_answer("#### 17") == "17"


@pytest.mark.parametrize("completion, expected", [
    ("<think>3+4=7</think><answer>7</answer>", "7"),
    ("<think>big</think><answer>$1,234.00</answer>", "1234"),
    ("<think>owes</think><answer> -12 </answer>", "-12"),
    ("<think>half</think><answer>2.50</answer>", "2.5"),
    ("<think>t</think><answer>The total is $42.</answer>", "42"),
    ("<answer>1</answer> then <answer>2</answer>", "2"),
    ("<answer>1</answer> and finally <answer>3", "3"),
    ("<think>3+4=7</think> the answer is 7", None),
    ("", None),
    ("<answer>none</answer>", None),
])
def test_extract_answer_takes_the_last_answer_tag(completion: str, expected: str | None) -> None:
    assert extract_answer(completion) == expected


def test_correctness_compares_normalised_numbers() -> None:
    completions = [
        "<think>a</think><answer>1,000</answer>",
        "<think>a</think><answer>999</answer>",
        "1000",  # right number, no answer tag
        "<think>a</think><answer>$1000.00</answer>",
    ]
    rewards = correctness_reward(["q"] * 4, completions, ["1000"] * 4)
    assert rewards == [1.0, 0.0, 0.0, 1.0]
    assert is_correct("<answer>-3</answer>", gold_answer("... #### -3"))
    assert not is_correct("<answer>3</answer>", "-3")


def test_strict_format_needs_exactly_think_then_answer() -> None:
    completions = [
        "<think>3+4=7</think><answer>7</answer>",
        "  <think>\nwork\n</think>\n<answer>\n7\n</answer>\n",
        "<think>x</think>extra<answer>7</answer>",
        "<answer>7</answer><think>x</think>",
        "<think>x</think><answer>7</answer><answer>8</answer>",
        "<think>x</think><answer>7",
        "7",
    ]
    assert format_reward_strict([""] * 7, completions, [""] * 7) == [1, 1, 0, 0, 0, 0, 0]


def test_soft_format_allows_text_between_and_gives_part_credit_per_tag() -> None:
    completions = [
        "<think>x</think>extra<answer>7</answer> trailing",
        "<think>x</think> and <answer>7",  # three tags once each
        "<answer>7</answer>",
        "nothing",
    ]
    assert format_reward_soft([""] * 4, completions, [""] * 4) == [1.0, 0.75, 0.5, 0.0]


def test_load_reward_finds_builtins_and_user_functions(tmp_path, monkeypatch) -> None:
    assert load_reward("correctness") is correctness_reward
    assert load_reward("format_strict") is format_reward_strict
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent("""
        def length_penalty(prompts, completions, answers):
            return [-len(c) / 100 for c in completions]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = load_reward("my_rewards:length_penalty")
    assert fn(["p"], ["abcd"], ["1"]) == [-0.04]
    sys.modules.pop("my_rewards", None)


@pytest.mark.parametrize("spec, named", [
    ("accuracy", "'accuracy'"),
    ("no_such_module_xyz:f", "no_such_module_xyz"),
    ("trainer.rewards:missing_fn", "missing_fn"),
    ("trainer.rewards:BUILTIN_REWARDS", "not callable"),
    ("a:b:c", "'a:b:c'"),
])
def test_load_reward_refuses_bad_spec_naming_it(spec: str, named: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_reward(spec)
    assert named in str(e.value)
    assert "\n" not in str(e.value)
