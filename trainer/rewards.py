"""Reward functions and answer extraction: the one copy the trainer and the evaluator share.

Every reward has the plain signature `(prompts, completions, answers) -> list[float]`, where
`completions` are the decoded completion texts and `answers` the gold answers, already reduced to
a number string by `gold_answer`. A user adds one as `module:function` (see `load_reward`).

Answers are compared as normalised number strings: `normalize_number("$1,234.00") == "1234"`.
A completion's answer is the content of its *last* `<answer>…</answer>` block (an `<answer>` left
open at the very end, as a truncated completion leaves it, counts too). Inside the block a clean
number is taken as it is; otherwise the last number in the block is used (the soft fallback, so
"<answer>The total is $42.</answer>" reads as 42). A completion with no `<answer>` tag has no
answer: correctness needs the R1 template's tag, the format rewards measure the rest.
"""

from __future__ import annotations

import importlib
import re
from decimal import Decimal, InvalidOperation
from typing import Callable, Sequence

from trainer.errors import ConfigError

RewardFn = Callable[[Sequence[str], Sequence[str], Sequence[str]], list[float]]

_NUMBER = re.compile(r"^(\d+(\.\d*)?|\.\d+)$")
_NUMBER_IN_TEXT = re.compile(r"[-+]?\$?\s?\d[\d,]*(?:\.\d+)?|[-+]?\.\d+")
_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_OPEN_ANSWER_AT_END = re.compile(r"<answer>((?:(?!</?answer>).)*)$", re.DOTALL)
_STRICT_FORMAT = re.compile(r"^\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*$", re.DOTALL)
_SOFT_FORMAT = re.compile(r"<think>.*?</think>.*?<answer>.*?</answer>", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def normalize_number(text: str | None) -> str | None:
    """A number string in canonical form, or None when `text` is not one number.

    Removes spaces, thousands commas, a leading '$' or '+', a trailing '%' or '.', and trailing
    zeros after the decimal point: "$1,234.50" -> "1234.5", "-7.0" -> "-7", "+3" -> "3".
    """
    if text is None:
        return None
    s = text.strip().replace(",", "").replace(" ", "").replace("\u2212", "-")
    s = s.rstrip(".").rstrip("%")
    sign = ""
    if s and s[0] in "+-":
        sign, s = s[0], s[1:]
    s = s.removeprefix("$")
    if not sign and s and s[0] in "+-":  # "$-5" as well as "-$5"
        sign, s = s[0], s[1:]
    s = s.rstrip(".")
    if not _NUMBER.match(s):
        return None
    try:
        value = Decimal(s)
    except InvalidOperation:
        return None
    if sign == "-":
        value = -value
    out = format(value.normalize(), "f")
    return "0" if out in ("-0", "0") else out


def last_number(text: str) -> str | None:
    """The last number written anywhere in `text`, normalised; None when there is none."""
    for raw in reversed(_NUMBER_IN_TEXT.findall(text)):
        value = normalize_number(raw)
        if value is not None:
            return value
    return None


def gold_answer(answer_field: str) -> str:
    """The gold number of a GSM8K answer field: the text after the last '####', normalised.

    A field without '####' is taken whole. A gold answer that is not a number is kept stripped,
    so that non-numeric datasets still compare by exact text.
    """
    tail = answer_field.rsplit("####", 1)[-1].strip()
    return normalize_number(tail) or tail


def answer_block(completion: str) -> str | None:
    """The raw content of the last <answer> block (or of an <answer> left open at the end)."""
    blocks = _ANSWER_BLOCK.findall(completion)
    opened = _OPEN_ANSWER_AT_END.search(completion)
    if opened and (not blocks or completion.rfind("<answer>") > completion.rfind("</answer>")):
        return opened.group(1)
    return blocks[-1] if blocks else None


def extract_answer(completion: str) -> str | None:
    """The completion's answer, normalised (module docstring: the last tag wins, soft fallback)."""
    block = answer_block(completion)
    if block is None:
        return None
    return normalize_number(block) or last_number(block)


def is_correct(completion: str, gold: str) -> bool:
    predicted = extract_answer(completion)
    if predicted is None:
        return False
    gold_norm = normalize_number(gold) or gold.strip()
    return predicted == gold_norm


def correctness_reward(
    prompts: Sequence[str], completions: Sequence[str], answers: Sequence[str]
) -> list[float]:
    """1.0 when the completion's answer equals the gold answer, else 0.0."""
    return [1.0 if is_correct(c, a) else 0.0 for c, a in zip(completions, answers, strict=True)]


def is_strict_format(completion: str) -> bool:
    """Exactly `<think>…</think><answer>…</answer>` (whitespace around), each tag once."""
    if not _STRICT_FORMAT.match(completion):
        return False
    return all(completion.count(tag) == 1 for tag in _TAGS)


def format_reward_strict(
    prompts: Sequence[str], completions: Sequence[str], answers: Sequence[str]
) -> list[float]:
    """1.0 for a completion that is exactly a think block then an answer block, else 0.0."""
    return [1.0 if is_strict_format(c) else 0.0 for c in completions]


def _soft_format_score(completion: str) -> float:
    if _SOFT_FORMAT.search(completion):
        return 1.0
    return min(0.75, 0.25 * sum(completion.count(tag) == 1 for tag in _TAGS))


def format_reward_soft(
    prompts: Sequence[str], completions: Sequence[str], answers: Sequence[str]
) -> list[float]:
    """1.0 when a think block is followed by an answer block anywhere (other text allowed);
    otherwise 0.25 for each of the four tags that appears exactly once, at most 0.75."""
    return [_soft_format_score(c) for c in completions]


BUILTIN_REWARDS: dict[str, RewardFn] = {
    "correctness": correctness_reward,
    "format_strict": format_reward_strict,
    "format_soft": format_reward_soft,
}


def load_reward(spec: str) -> RewardFn:
    """A built-in reward by name, or a user function given as 'package.module:function'."""
    if spec in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[spec]
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ConfigError(
            f"unknown reward {spec!r} (use one of {', '.join(BUILTIN_REWARDS)} or 'module:function')"
        )
    module_name, func_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # an ImportError or an error raised while importing the user's module
        raise ConfigError(f"reward {spec!r}: cannot import module {module_name!r} ({e})") from None
    fn = getattr(module, func_name, None)
    if fn is None:
        raise ConfigError(f"reward {spec!r}: module {module_name!r} has no {func_name!r}")
    if not callable(fn):
        raise ConfigError(f"reward {spec!r}: {func_name!r} is not callable")
    return fn
