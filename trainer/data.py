"""Datasets by name and the prompt templates of the trainer and the evaluator.

A dataset name is `SOURCE_TEMPLATE`, e.g. `gsm8k_r1_template` or `arith_r1_template`, or SOURCE
alone (`arith`) while there is one template (the rule: rltui.runs.datasets):

- `arith` is built in: synthetic one-step arithmetic word problems in GSM8K format
  ({"question", "answer": "... #### 42"}), generated deterministically from a fixed seed, with
  disjoint train and test splits. Nothing is downloaded.
- any other SOURCE is read from jsonl files in GSM8K format, looked for in this order:
  ROOT/datasets/SOURCE/SPLIT.jsonl, ROOT/datasets/NAME/SPLIT.jsonl,
  ROOT/rlp_datasets/processed/NAME/SPLIT.jsonl (the seed workflow's layout).

TEMPLATE says how a question becomes a prompt (`build_prompt`); `r1_template` asks for
`<think>…</think><answer>…</answer>`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rltui.runs.datasets import TEMPLATES, dataset_files as _dataset_files, resolve_dataset_name
from rltui.runs.localfs import BadName, Layout
from trainer.errors import ConfigError
from trainer.rewards import gold_answer

SPLITS = ("train", "test")
ARITH_SEED = 1234
ARITH_TEST_SIZE = 300

R1_SYSTEM = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The Assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., "
    "<think> reasoning process here </think><answer> answer here </answer>."
)
# Without a chat template (the tiny model) the prompt stays short: every token costs CPU time.
R1_PLAIN = "{question}\nReply as <think>...</think><answer>...</answer>.\n"


@dataclass(frozen=True)
class Example:
    question: str
    answer: str  # the dataset's full answer field ("... #### 42")
    gold: str  # the normalised gold answer ("42")


@dataclass(frozen=True)
class DatasetName:
    name: str
    source: str
    template: str


def parse_dataset_name(name: str) -> DatasetName:
    """Split `SOURCE_TEMPLATE` (a short name resolved first); ConfigError naming the bad name."""
    try:
        name = resolve_dataset_name(name)
    except BadName as e:
        raise ConfigError(str(e)) from None
    for template in TEMPLATES:
        suffix = "_" + template
        if name.endswith(suffix) and len(name) > len(suffix):
            return DatasetName(name, name[: -len(suffix)], template)
    raise ConfigError(
        f"bad dataset name: {name!r} (use SOURCE_TEMPLATE with TEMPLATE one of {', '.join(TEMPLATES)},"
        " e.g. arith_r1_template or gsm8k_r1_template)"
    )


def load_split(root: Path, dataset: str, split: str) -> list[Example]:
    """The examples of one split of a dataset, in file order (arith: generated order)."""
    if split not in SPLITS:
        raise ConfigError(f"bad split: {split!r} (use {' or '.join(SPLITS)})")
    parsed = parse_dataset_name(dataset)
    if parsed.source == "arith":
        return arith_split(split)
    places = dataset_files(Path(root), parsed, split)
    for path in places:
        if path.is_file():
            return read_gsm8k_jsonl(path)
    looked = ", ".join(str(p) for p in places)
    raise ConfigError(f"dataset {dataset!r} split {split!r} not found; looked for {looked}")


def dataset_files(root: Path, parsed: DatasetName, split: str) -> list[Path]:
    return _dataset_files(Layout(root), parsed.name, split)


def read_gsm8k_jsonl(path: Path) -> list[Example]:
    examples: list[Example] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record: Any = json.loads(line)
            except ValueError:
                raise ConfigError(f"{path}:{lineno}: not a JSON line") from None
            if not isinstance(record, dict) or not isinstance(record.get("question"), str) \
                    or not isinstance(record.get("answer"), str):
                raise ConfigError(f"{path}:{lineno}: needs string fields 'question' and 'answer'")
            examples.append(Example(record["question"], record["answer"], gold_answer(record["answer"])))
    if not examples:
        raise ConfigError(f"{path}: no examples")
    return examples


# ---------------------------------------------------------------- the built-in arithmetic task

_NAMES = ("Tom", "Ana", "Li", "Sam", "Mia", "Ben", "Eva", "Max")
_ITEMS = ("apples", "pens", "cards", "books", "coins", "eggs")
# (question pattern, operator, working pattern)
_PATTERNS = (
    ("{n} has {a} {i}. {n} gets {b} more. How many {i} does {n} have?", "+"),
    ("{n} has {a} {i} and buys {b} more. How many {i} now?", "+"),
    ("{n} has {a} {i}. {n} gives away {b}. How many {i} are left?", "-"),
    ("{n} had {a} {i} and lost {b}. How many {i} remain?", "-"),
)
_MAX_OPERAND = 20


def _arith_all() -> list[Example]:
    """Every arithmetic question, shuffled by the fixed seed (the split is a cut of this list)."""
    out: list[Example] = []
    for pattern, op in _PATTERNS:
        for name in _NAMES:
            for item in _ITEMS:
                for a in range(1, _MAX_OPERAND + 1):
                    for b in range(1, _MAX_OPERAND + 1):
                        if op == "-" and b > a:
                            continue
                        c = a + b if op == "+" else a - b
                        q = pattern.format(n=name, i=item, a=a, b=b)
                        out.append(Example(q, f"{a}{op}{b}={c}\n#### {c}", str(c)))
    random.Random(ARITH_SEED).shuffle(out)
    return out


_ARITH_CACHE: dict[str, list[Example]] = {}


def arith_split(split: str) -> list[Example]:
    """Deterministic and disjoint: the first ARITH_TEST_SIZE shuffled questions are the test split."""
    if not _ARITH_CACHE:
        every = _arith_all()
        _ARITH_CACHE["test"] = every[:ARITH_TEST_SIZE]
        _ARITH_CACHE["train"] = every[ARITH_TEST_SIZE:]
    return list(_ARITH_CACHE[split])


def r1_solution(example: Example) -> str:
    """The R1-formatted target a supervised warm-start teaches: working in think, number in answer."""
    working = example.answer.rsplit("####", 1)[0].strip()
    return f"<think>{working}</think><answer>{example.gold}</answer>"


# ---------------------------------------------------------------- prompts


def build_prompt(tokenizer: Any, question: str, template: str) -> str:
    """The prompt text for `question`: the tokenizer's chat template when it has one, else plain."""
    if template not in TEMPLATES:
        raise ConfigError(f"bad template: {template!r} (use one of {', '.join(TEMPLATES)})")
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": R1_SYSTEM}, {"role": "user", "content": question}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return R1_PLAIN.format(question=question)
