"""A Hub dataset repo's parquet files -> ROOT/datasets/NAME/{train,test}.jsonl in GSM8K form.

GSM8K itself is `openai/gsm8k`, config `main`: `main/train-00000-of-00001.parquet` and
`main/test-00000-of-00001.parquet`, fields `question` and `answer` ("... #### 42"). Other repos
follow the Hub's conventions: parquet files under the config's folder (`CONFIG/...`), else under
`data/`, else anywhere; the split is the file name's first word (`train-0000...`, `test.parquet`)
or the folder's name. Fields are renamed with --question-field / --answer-field; an answer
without '####' becomes "#### ANSWER" so that the rewards read it as the gold answer.

Parquet is read with pyarrow alone (one well-kept library, no `datasets`: see ARCHITECTURE).
The folder is written atomically: every file is written in a staging folder beside it, then
renamed into place (a new folder as a whole; an existing one file by file).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from trainer.errors import ConfigError

SPLITS = ("train", "test")
SPLIT_ALIASES = {"train": "train", "test": "test", "validation": None, "valid": None, "dev": None}
ALIASES = {"gsm8k": ("openai/gsm8k", "main")}  # short name -> (repo id, config)


@dataclass(frozen=True)
class DatasetPlan:
    repo_id: str
    config: str | None
    name: str  # ROOT/datasets/NAME
    question_field: str = "question"
    answer_field: str = "answer"


def plan_dataset(spec: str, config: str | None, name: str | None, question_field: str | None,
                 answer_field: str | None) -> DatasetPlan:
    """`gsm8k` or a repo id with its options; ConfigError naming a bad value."""
    from rltui.runs.localfs import BadName, validate_dataset_name

    from trainer.hub import parse_hub_id

    repo_id, default_config = ALIASES.get(spec, (spec, None))
    parsed = parse_hub_id(repo_id)
    if parsed is None or parsed[1] is not None:
        raise ConfigError(f"dataset {spec!r}: use gsm8k or a Hub dataset id org/name "
                          "(a revision goes in --revision)")
    default_name = spec if spec in ALIASES else repo_id.rsplit("/", 1)[-1].lower().replace(".", "-")
    try:
        validate_dataset_name(name or default_name)
    except BadName as e:
        hint = "" if name else " (pass --as NAME)"
        raise ConfigError(f"{e}{hint}") from None
    return DatasetPlan(repo_id, config or default_config, name or default_name,
                       question_field or "question", answer_field or "answer")


def pick_split_files(files: list[str], config: str | None) -> dict[str, list[str]]:
    """{split: [parquet paths]} for train and test, by the conventions in the module docstring."""
    parquet = sorted(f for f in files if f.endswith(".parquet"))
    for scope in ([f"{config}/*"] if config else []) + ["data/*", "*"]:
        chosen = [f for f in parquet if fnmatch(f, scope)]
        by_split: dict[str, list[str]] = {}
        for path in chosen:
            split = _split_of(path, config)
            if split:
                by_split.setdefault(split, []).append(path)
        if by_split:
            return by_split
        if config and scope == f"{config}/*":
            break  # a config was named and has no parquet of its own: say so rather than guess
    return {}


def _split_of(path: str, config: str | None) -> str | None:
    parts = path.split("/")
    if config and parts[0] == config:
        parts = parts[1:]
    for word in (parts[-1].split(".")[0].split("-")[0].split("_")[0], *reversed(parts[:-1])):
        if word.lower() in SPLIT_ALIASES:
            return SPLIT_ALIASES[word.lower()]
    return None


def convert(files: dict[str, list[Path]], plan: DatasetPlan) -> dict[str, list[dict[str, str]]]:
    """Rows in GSM8K form per split; ConfigError naming a missing field."""
    import pyarrow.parquet as pq

    out: dict[str, list[dict[str, str]]] = {}
    for split, paths in files.items():
        rows: list[dict[str, str]] = []
        for path in paths:
            table = pq.read_table(path)
            for field in (plan.question_field, plan.answer_field):
                if field not in table.column_names:
                    raise ConfigError(f"dataset {plan.repo_id}: {Path(path).name} has no field "
                                      f"{field!r} (fields: {', '.join(table.column_names)}); "
                                      "pass --question-field / --answer-field")
            questions = table.column(plan.question_field).to_pylist()
            answers = table.column(plan.answer_field).to_pylist()
            rows.extend(_row(q, a) for q, a in zip(questions, answers) if q is not None and a is not None)
        out[split] = rows
    return out


def _row(question: Any, answer: Any) -> dict[str, str]:
    answer = str(answer)
    return {"question": str(question), "answer": answer if "####" in answer else f"#### {answer.strip()}"}


def write_dataset(folder: Path, rows: dict[str, list[dict[str, str]]], info: dict[str, Any]) -> None:
    """`folder`/{split}.jsonl and fetch_info.json, staged beside it and renamed into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp_{folder.name}.", dir=str(folder.parent)))
    try:
        names = []
        for split, split_rows in rows.items():
            names.append(f"{split}.jsonl")
            _write_durable(staging / f"{split}.jsonl",
                           "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in split_rows))
        names.append("fetch_info.json")
        _write_durable(staging / "fetch_info.json", json.dumps(dict(info, written=time.time()), indent=2))
        if not folder.exists():
            os.replace(staging, folder)
            return
        for name in names:  # an existing folder: each file replaced whole, fetch_info.json last
            os.replace(staging / name, folder / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_durable(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
