"""Names and checks of a training run's files that the entry points need before torch loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rltui.runs import checkpoints, localfs
from trainer.errors import ConfigError

RESOLVED_CONFIG = "config_resolved.yaml"  # beside config.yaml: every default written out
MODEL_DIR = "model"  # the adapter inside step_N/
PROVENANCE = "provenance.json"  # beside config.yaml: the base model (Hub commit) and starting adapter


def existing_run_dir(layout: localfs.Layout, run: str) -> Path:
    """The folder of an existing training run, or ConfigError naming the bad or unknown name."""
    try:
        run_dir = layout.run_dir(run)
    except localfs.BadName as e:
        raise ConfigError(str(e)) from None
    if not run_dir.is_dir():
        raise ConfigError(f"no such training run: {run} (looked in {layout.training_runs})")
    return run_dir


def verify_checkpoint(step_dir: Path, run: str) -> dict[str, Any]:
    """training_info.json of a complete checkpoint, or ConfigError naming every problem."""
    problems = checkpoints.checkpoint_problems(step_dir)
    if problems:
        raise ConfigError(f"checkpoint {run}/{step_dir.name} is incomplete: {'; '.join(problems)}")
    try:
        return checkpoints.read_checkpoint_info(step_dir)
    except localfs.DamagedFile as e:
        raise ConfigError(f"checkpoint {run}/{step_dir.name}: {e}") from None
