"""Which checkpoints an evaluation covers, where their adapters are, and what they were trained on.

Two sources:
- a training run, `--training-run RUN`: every `training_state/step_N/` (its adapter in `model/`),
  complete or not; an incomplete one is evaluated as a failure that names what is missing.
- any folder, `--ckpt-path DIR`: an adapter folder (adapter_config.json inside), a `step_N/`
  folder, or a folder holding `step_N/` folders (a training run, its training_state, or an older
  run under rl_runs/ whose step_N folders are adapters themselves).

An HF Trainer / TRL `checkpoint-N` folder is an adapter folder evaluated as step N (its
trainer_state.json's global_step).

The base model and the default dataset come from the run's config (`config_resolved.yaml`, else
`config.yaml`) found in the run folder or above DIR; failing that, from the adapter's own
`base_model_name_or_path`: a local folder, one under ROOT/models/, or a Hub id (trainer.hub).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rltui.runs import checkpoints, localfs
from trainer.errors import ConfigError
from trainer.modeling import ADAPTER_CONFIG, ADAPTER_WEIGHTS, adapter_problems
from trainer.runfiles import MODEL_DIR, RESOLVED_CONFIG
from trainer.start_adapter import global_step_of

RUN_CONFIGS = (RESOLVED_CONFIG, "config.yaml")


@dataclass(frozen=True)
class Checkpoint:
    step: int
    folder: Path  # the step folder (or the adapter folder itself)
    adapter: Path  # the peft adapter folder
    problems: tuple[str, ...] = ()  # why it cannot be evaluated; empty when it can
    fingerprint: str = ""  # the adapter weights' sha256: a re-saved step is evaluated again


@dataclass
class RunSource:
    """What is evaluated and what it was trained with."""

    name: str  # the RUN of eval_runs/RUN_DATASET
    checkpoints: list[Checkpoint]
    config_path: Path | None = None
    config: Any = None  # trainer.config.Config, when a run config was found
    adapter_base: str | None = None  # base_model_name_or_path of the first adapter
    notes: list[str] = field(default_factory=list)


def from_training_run(layout: localfs.Layout, run: str) -> RunSource:
    run_dir = layout.run_dir(run)
    if not run_dir.is_dir():
        raise ConfigError(f"training run not found: {run} (no folder {run_dir})")
    found = [_step_checkpoint(step, folder) for step, folder in
             checkpoints.list_step_dirs(layout.training_state(run))]
    source = RunSource(run, found)
    _attach_config(source, run_dir)
    return source


def from_path(path: Path, name: str | None) -> RunSource:
    path = Path(path).expanduser().absolute()
    if not path.is_dir():
        raise ConfigError(f"--ckpt-path {path}: not a folder")
    if (path / ADAPTER_CONFIG).is_file() or (path / MODEL_DIR / ADAPTER_CONFIG).is_file():
        step = localfs.parse_step_dir(path.name)
        if step is None and path.name == MODEL_DIR:
            step = localfs.parse_step_dir(path.parent.name)
        folder = path.parent if path.name == MODEL_DIR and step is not None else path
        default_name = _run_name_above(folder) if step is not None else path.name
        if step is None:  # an HF Trainer / TRL checkpoint-N folder is evaluated as its step
            step = global_step_of(path)
        found = [_step_checkpoint(step if step is not None else 0, folder)]
    else:
        state = path / "training_state" if (path / "training_state").is_dir() else path
        found = [_step_checkpoint(step, folder) for step, folder in checkpoints.list_step_dirs(state)]
        if not found:
            raise ConfigError(f"--ckpt-path {path}: no adapter folder and no step_N folders inside")
        default_name = path.parent.name if path.name == "training_state" else path.name
    run_name = name or default_name
    try:
        localfs.validate_name(run_name, "run name")
    except localfs.BadName as e:
        raise ConfigError(f"{e} (derived from --ckpt-path; pass --training-run NAME)") from None
    source = RunSource(run_name, found)
    for folder in [path, *path.parents][:4]:
        if any((folder / c).is_file() for c in RUN_CONFIGS):
            _attach_config(source, folder)
            break
    else:
        _attach_adapter_base(source)
    return source


def _run_name_above(step_folder: Path) -> str:
    parent = step_folder.parent
    return parent.parent.name if parent.name == "training_state" else parent.name


def _step_checkpoint(step: int, folder: Path) -> Checkpoint:
    adapter = folder / MODEL_DIR if (folder / MODEL_DIR).is_dir() else folder
    if (folder / localfs.CHECKPOINT_INFO).exists() or adapter != folder:
        problems = checkpoints.checkpoint_problems(folder)  # a checkpoint of ours: the full rule
    else:
        problems = []  # an older run's bare adapter folder: no manifest to check against
    if not problems:
        problems = adapter_problems(adapter)
    fingerprint = "" if problems else _fingerprint(folder, adapter)
    return Checkpoint(step, folder, adapter, tuple(problems), fingerprint)


def _fingerprint(folder: Path, adapter: Path) -> str:
    weights = next((adapter / w for w in ADAPTER_WEIGHTS if (adapter / w).is_file()))
    rel = weights.relative_to(folder).as_posix() if adapter != folder else weights.name
    try:
        recorded = checkpoints.read_checkpoint_info(folder)["files"][rel]["sha256"]
        if isinstance(recorded, str):
            return recorded
    except (FileNotFoundError, localfs.DamagedFile, KeyError, TypeError):
        pass
    return checkpoints.sha256_file(weights)


def _attach_config(source: RunSource, folder: Path) -> None:
    from trainer.config import config_from_dict

    for name in RUN_CONFIGS:
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = localfs.read_yaml(path)
        except localfs.DamagedFile as e:
            raise ConfigError(str(e)) from None
        source.config = config_from_dict(data if data is not None else {}, source=str(path))
        source.config_path = path
        return
    source.notes.append(f"no run config in {folder}")
    _attach_adapter_base(source)


def _attach_adapter_base(source: RunSource) -> None:
    for ckpt in source.checkpoints:
        try:
            config = json.loads((ckpt.adapter / ADAPTER_CONFIG).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(config, dict) and config.get("base_model_name_or_path"):
            source.adapter_base = str(config["base_model_name_or_path"])
            return


def resolve_base(source: RunSource, root: Path) -> Path:
    """The base model folder for this source (see module docstring for the order)."""
    from trainer.hub import parse_hub_id, resolve_model

    def resolve_base_model(spec: str, root: Path) -> Path:
        return resolve_model(spec, root).path

    if source.config is not None:
        return resolve_base_model(source.config.model.base, root)
    named = source.adapter_base
    if named == "tiny" or (named or "").rstrip("/").endswith("models/tiny/base"):
        return resolve_base_model("tiny", root)  # the built-in model, wherever it was built
    if named:
        candidates = [Path(named).expanduser(), localfs.Layout(root).models / Path(named).name]
        for candidate in candidates:
            if (candidate / "config.json").is_file():
                return candidate.absolute()
        if parse_hub_id(named) is not None and not Path(named).is_absolute():
            return resolve_base_model(named, root)  # a Hub id, as TRL writes it
        raise ConfigError(
            f"cannot find the base model of {source.name}: its adapter names {named!r}, which is "
            f"neither a local folder, nor under {localfs.Layout(root).models}, nor a Hub id")
    raise ConfigError(f"cannot tell the base model of {source.name}: no run config and no "
                      "base_model_name_or_path in its adapter_config.json")
