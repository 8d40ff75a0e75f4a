"""What a job asks of Slurm: `SlurmSpec`, from flags over the team's defaults in the localfs.

    defaults = read_settings(layout)          # ROOT/settings/slurm.yaml, {} when absent
    spec = SlurmSpec.from_flags(defaults, nodes=2, partition="gpu", ...)

`ROOT/settings/slurm.yaml` holds what a team sets once (every key optional):

    partition: gpu            # sbatch --partition
    account: my-team          # sbatch --account
    time: "24:00:00"          # sbatch --time (the allocation's time limit)
    nodes: 1                  # sbatch --nodes (one srun task per node, each running torchrun)
    gpus_per_node: 8          # sbatch --gpus-per-node; torchrun runs one process per GPU
    signal_before_s: 300      # sbatch --signal=B:TERM@S: save this long before the time limit
    sbatch_args: ["--qos=high", "--constraint=h100"]   # passed to sbatch as they are
    python: /shared/venv/bin/python   # the interpreter on the compute nodes (default: this one)
    rdzv_port: 29400          # base port of torchrun's c10d rendezvous (+ Slurm job id % 1000)

A flag given on the command line wins over the file. Standard library only (PyYAML when present).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from rltui.errors import UsageError
from rltui.runs.localfs import DamagedFile, Layout, read_yaml

SETTINGS_FILE = Path("settings") / "slurm.yaml"
SIGNAL_BEFORE_S = 300
RDZV_PORT = 29400
_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$|^\d+-\d+$")  # sbatch --time forms
_SIMPLE = re.compile(r"^[A-Za-z0-9_.,:+@=-]+$")  # partition / account names


@dataclass(frozen=True)
class SlurmSpec:
    """job.json's "slurm" part: what was asked of Slurm, and the id Slurm gave the job."""

    nodes: int = 1
    gpus_per_node: int | None = None
    partition: str | None = None
    time: str | None = None
    account: str | None = None
    sbatch_args: tuple[str, ...] = ()
    signal_before_s: int = SIGNAL_BEFORE_S
    python: str | None = None
    rdzv_port: int = RDZV_PORT
    job_id: str | None = None  # Slurm's job id, set once sbatch has accepted the job
    script: str | None = None  # the batch script (jobs/JOB_ID/slurm.sh)

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["sbatch_args"] = list(self.sbatch_args)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "SlurmSpec":
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        kw["sbatch_args"] = tuple(str(a) for a in d.get("sbatch_args") or ())
        return cls(**kw)

    def with_changes(self, **changes: Any) -> "SlurmSpec":
        return replace(self, **changes)

    @classmethod
    def from_flags(cls, defaults: dict[str, Any], **flags: Any) -> "SlurmSpec":
        """Flags (None = not given) over `defaults` (the settings file), validated."""
        merged = {k: v for k, v in defaults.items()}
        for key, value in flags.items():
            if key == "sbatch_args":
                merged[key] = list(defaults.get("sbatch_args") or ()) + list(value or ())
            elif value is not None:
                merged[key] = value
        return cls(**_validated(merged, ""))


def read_settings(layout: Layout) -> dict[str, Any]:
    """The team's defaults from ROOT/settings/slurm.yaml, validated; {} when there is none."""
    path = layout.root / SETTINGS_FILE
    try:
        data = read_yaml(path)
    except FileNotFoundError:
        return {}
    except (DamagedFile, UnicodeDecodeError) as e:
        raise UsageError(f"bad {path}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"bad {path}: expected a mapping of settings, got {type(data).__name__}")
    return _validated(data, f"{path}:")


def _validated(d: dict[str, Any], where: str) -> dict[str, Any]:
    known = {f.name for f in fields(SlurmSpec)} - {"job_id", "script"}
    out: dict[str, Any] = {}
    for key, value in d.items():
        if key not in known:
            raise UsageError(f"{where} unknown Slurm setting {key!r} (known: {', '.join(sorted(known))})")
        out[key] = _check(key, value, where)
    return out


def _check(key: str, value: Any, where: str) -> Any:
    """`where` names the settings file, or is "" for command-line flags (then named --flag)."""
    flag = key.replace("_", "-") if where else "--" + {"signal_before_s": "signal-before",
                                                         "sbatch_args": "sbatch-arg"}.get(key, key.replace("_", "-"))
    where = where + " " if where else ""
    if key in ("nodes", "gpus_per_node", "signal_before_s", "rdzv_port"):
        low = 0 if key == "signal_before_s" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (
                key == "rdzv_port" and value > 64535):
            raise UsageError(f"{where}bad {flag}: {value!r} (must be a whole number >= {low})")
        return value
    if key in ("partition", "account"):
        if not isinstance(value, str) or not _SIMPLE.match(value):
            raise UsageError(f"{where}bad {flag}: {value!r} (a Slurm {key} name)")
        return value
    if key == "time":
        if not isinstance(value, str) or not _TIME.match(value.strip()):
            raise UsageError(f"{where}bad {flag}: {value!r} (Slurm forms: MINUTES, HH:MM:SS, D-HH[:MM[:SS]])")
        return value.strip()
    if key == "python":
        if not isinstance(value, str) or not value.startswith("/"):
            raise UsageError(f"{where}bad {flag}: {value!r} (an absolute path on the compute nodes)")
        return value
    if key == "sbatch_args":
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(
                isinstance(a, str) and a.startswith("-") and "\n" not in a for a in value):
            raise UsageError(f"{where}bad {flag}: {value!r} (options like --qos=high, one each)")
        return tuple(value)
    raise AssertionError(key)  # pragma: no cover - _validated checks the names
