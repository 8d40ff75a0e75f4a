"""Dataset names, one rule for the manager, the trainer and the evaluator (standard library only).

Usage:
    resolve_dataset_name("arith")             # -> "arith_r1_template" (the one template there is)
    resolve_dataset_name("gsm8k_r1_template") # -> unchanged
    dataset_files(layout, "gsm8k_r1_template", "test")   # where its jsonl may be, in order

A full name is `SOURCE_TEMPLATE` (`gsm8k_r1_template`). A short name is a SOURCE alone (`arith`,
`gsm8k`): it stands for SOURCE_TEMPLATE when exactly one TEMPLATE exists, and is refused with the
choices listed otherwise. `arith` is built in; any other SOURCE is read from GSM8K-format jsonl.
"""

from __future__ import annotations

from pathlib import Path

from rltui.runs.localfs import BadName, Layout, validate_dataset_name

TEMPLATES = ("r1_template",)
BUILT_IN = ("arith",)


def split_dataset_name(name: str) -> tuple[str, str] | None:
    """(SOURCE, TEMPLATE) of a full name; None for a short one."""
    for template in TEMPLATES:
        suffix = "_" + template
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], template
    return None


def resolve_dataset_name(name: str) -> str:
    """The full name `name` stands for; BadName (naming it and the choices) when it is none."""
    validate_dataset_name(name)
    if split_dataset_name(name) is not None:
        return name
    if name.endswith("template"):  # meant as a full name, with a template there is not
        raise BadName(f"bad dataset name: {name!r} (use SOURCE_TEMPLATE with TEMPLATE one of "
                      f"{', '.join(TEMPLATES)}, or SOURCE alone, e.g. arith or gsm8k)")
    choices = [f"{name}_{t}" for t in TEMPLATES]
    if len(choices) == 1:
        return choices[0]
    raise BadName(f"dataset {name!r} is short for more than one dataset: {', '.join(choices)}")


def dataset_files(layout: Layout, name: str, split: str) -> list[Path]:
    """Where a split of a (full-named) dataset may be read from, first found wins."""
    source, _template = split_dataset_name(name) or (name, "")
    folders = [layout.dataset_dir(source), layout.dataset_dir(name),
               layout.root / "rlp_datasets" / "processed" / name]
    return [folder / f"{split}.jsonl" for folder in folders]


def missing_split(layout: Layout, name: str, split: str) -> str | None:
    """Why `split` of dataset `name` cannot be read (None when it can: built in, or a file found)."""
    source = (split_dataset_name(name) or (name, ""))[0]
    if source in BUILT_IN:
        return None
    places = dataset_files(layout, name, split)
    if any(p.is_file() for p in places):
        return None
    return (f"dataset {name!r} has no {split} split here; looked for "
            + ", ".join(str(p) for p in places))
