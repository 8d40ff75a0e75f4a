"""Which folders are runs, and which run owns an `eval_runs/` folder: one rule for every reader.

Usage:
    from rltui.runs import folders
    for name, path in folders.run_folders(layout):          # training_runs/ (links count)
        ...
    owner = folders.eval_owner(layout, "exp_v2_arith", runs={"exp", "exp_v2"})
    owner.run, owner.dataset, owner.how                      # "exp_v2", "arith", "recorded"
    folders.eval_folders_of(layout, "exp")                   # the eval folders `exp` owns

The index, the TUI's quick list and watcher, the keeper and the archive (backup, cleanup,
restore) all ask here, so they agree on what a run is and whose evaluations are whose.

A run folder: an entry of `training_runs/` (or `rl_runs/` for legacy runs) that is a folder or a
link to one (a run moved to another disk and linked back is still a run), whose name is a valid
name (`localfs.validate_name`) not starting with a dot.

An eval folder `eval_runs/F` belongs to the run its own `eval_config.yaml` names (the evaluator
writes it first, with `run` and `dataset`), if F is that run's name, '_' and the dataset. A folder
without a readable record belongs to an existing run only when exactly one existing run's name
fits `RUN_DATASET`; a folder that two runs' names fit (`exp` and `exp_v2` both fit
`exp_v2_arith`) belongs to neither, so nothing of one run is ever taken for the other's.
Never a prefix alone. Standard library only: the trainer and evaluator import rltui.runs too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Iterable

from rltui.runs.localfs import BadName, Layout, validate_name

EVAL_CONFIG = "eval_config.yaml"
_MAX_CONFIG_BYTES = 1 << 20


# ---------------------------------------------------------------- run folders


def is_run_folder_name(name: str) -> bool:
    """A name a run folder may have: valid (letters, digits, '.', '_', '-'), no leading dot."""
    if name.startswith("."):
        return False
    try:
        validate_name(name)
    except BadName:
        return False
    return True


def list_run_folders(folder: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """(name, path) of the run folders in `folder`, sorted by name; none if it is absent."""
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError:
        return []
    out = []
    for e in entries:
        if not is_run_folder_name(e.name):
            continue
        try:
            if not e.is_dir():  # follows a link: a linked run counts
                continue
        except OSError:
            continue
        out.append((e.name, e.path))
    return sorted(out)


def run_folders(layout: Layout) -> list[tuple[str, str]]:
    """The runs of `training_runs/`, as (name, path)."""
    return list_run_folders(layout.training_runs)


def legacy_run_folders(layout: Layout) -> list[tuple[str, str]]:
    """The older runs of `rl_runs/` (read-only), as (name, path)."""
    return list_run_folders(layout.rl_runs)


def run_names(layout: Layout) -> set[str]:
    """Every run name of this localfs, training and legacy: the names eval folders may match."""
    return {n for n, _p in run_folders(layout)} | {n for n, _p in legacy_run_folders(layout)}


# ---------------------------------------------------------------- eval folders


@dataclass(frozen=True)
class EvalOwner:
    """Who owns an eval folder. `run` is None when no run does (ambiguous, unknown, or a record
    that contradicts the folder's name); `how` says why, for messages."""

    run: str | None
    dataset: str
    how: str  # "recorded", "name", or why nobody owns it


def read_eval_record(path: str | os.PathLike[str]) -> tuple[str | None, str | None] | None:
    """(run, dataset) as `eval_config.yaml` in the eval folder `path` records them; None when the
    file is missing, unreadable or records no run. Reads YAML block style (what yaml.safe_dump
    writes) and JSON (what localfs writes without PyYAML) with the standard library."""
    try:
        with open(os.path.join(path, EVAL_CONFIG), "rb") as f:
            data = f.read(_MAX_CONFIG_BYTES)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return parse_eval_record(text)


def parse_eval_record(text: str) -> tuple[str | None, str | None] | None:
    """(run, dataset) from the text of an eval_config.yaml; None if it names no run."""
    found: dict[str, str] = {}
    if text.lstrip().startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            return None
        if isinstance(obj, dict):
            found = {k: obj[k] for k in ("run", "dataset") if isinstance(obj.get(k), str)}
    else:
        for line in text.splitlines():
            key, sep, value = line.partition(":")
            if sep and key in ("run", "dataset") and key not in found:
                found[key] = _scalar(value.strip())
    run = found.get("run")
    if not run or not is_run_folder_name(run):
        return None
    dataset = found.get("dataset")
    return run, (dataset if dataset else None)


def _scalar(value: str) -> str:
    """A plain or quoted YAML scalar as written by safe_dump for a simple name."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _fits(folder: str, run: str) -> str | None:
    """The dataset if `folder` reads RUN_DATASET for this run (dataset starting with a letter)."""
    if not folder.startswith(run + "_"):
        return None
    dataset = folder[len(run) + 1:]
    return dataset if dataset[:1].isalpha() else None


def _splits(folder: str) -> list[tuple[str, str]]:
    """Every (run, dataset) reading of RUN_DATASET, the dataset starting with a letter."""
    out = []
    i = folder.find("_")
    while i != -1:
        if folder[i + 1:i + 2].isalpha():
            out.append((folder[:i], folder[i + 1:]))
        i = folder.find("_", i + 1)
    return out


def decide_eval_owner(
    folder: str, recorded: tuple[str | None, str | None] | None, runs: Collection[str]
) -> EvalOwner:
    """The rule, given what the folder records and the runs that exist (see the module doc)."""
    if recorded is not None:
        run, dataset = recorded
        fitted = _fits(folder, run) if run else None
        if run and fitted is not None and (dataset is None or dataset == fitted):
            return EvalOwner(run, fitted, "recorded")
        return EvalOwner(None, "", f"{EVAL_CONFIG} names run {run!r} and dataset {dataset!r}, "
                                   f"which does not match the folder name {folder!r}")
    fitting = [run for run, _dataset in _splits(folder) if run in runs]
    if len(fitting) == 1:
        return EvalOwner(fitting[0], _fits(folder, fitting[0]) or "", "name")
    if fitting:
        return EvalOwner(None, "", f"no {EVAL_CONFIG}, and the names of runs "
                                   f"{', '.join(fitting)} all fit {folder!r}")
    return EvalOwner(None, "", f"no {EVAL_CONFIG}, and no run here has a name that fits {folder!r}")


def eval_owner(layout: Layout, folder: str, runs: Collection[str] | None = None) -> EvalOwner:
    """Who owns `eval_runs/folder`; `runs` defaults to the runs of this localfs."""
    recorded = read_eval_record(layout.eval_runs / folder)
    if recorded is None and runs is None:
        runs = run_names(layout)
    return decide_eval_owner(folder, recorded, runs or ())


def eval_folders(layout: Layout) -> list[tuple[str, str]]:
    """(name, path) of the folders of `eval_runs/` (links to folders count), sorted."""
    return list_run_folders(layout.eval_runs)


def eval_folders_of(
    layout: Layout, run: str, runs: Collection[str] | None = None, *, follow_links: bool = True
) -> list[tuple[str, Path]]:
    """(dataset, path) of the eval folders that `run` owns, sorted by folder name.

    Only folders named RUN_* can be run's (the evaluator names them so); whose they are is then
    decided by the rule. `follow_links=False` leaves out folders that are links (the archive
    never writes or deletes through a link)."""
    names = None if runs is None else set(runs)
    out = []
    for name, path in eval_folders(layout):
        if _fits(name, run) is None:
            continue
        if not follow_links and os.path.islink(path):
            continue
        if names is None:
            names = run_names(layout) | {run}
        owner = eval_owner(layout, name, names)
        if owner.run == run:
            out.append((owner.dataset, Path(path)))
    return out


def owned_by(layout: Layout, run: str, folders: Iterable[str],
             runs: Collection[str] | None = None) -> dict[str, EvalOwner]:
    """The owner of each of `folders` (names under eval_runs/), for a run's archive: a folder a
    manifest of `run` lists that another run owns is left alone."""
    names = set(runs) if runs is not None else run_names(layout) | {run}
    return {f: eval_owner(layout, f, names) for f in folders}
