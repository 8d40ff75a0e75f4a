"""The adapter a new run starts from (`--ckpt` / `model.init_adapter`), and the record of it.

Accepted folders:
- a peft adapter folder (adapter_config.json + adapter_model.safetensors or .bin);
- an HF Trainer / TRL checkpoint, `checkpoint-N/`: the same adapter files plus trainer_state.json,
  optimizer.pt, scheduler.pt, rng_state*.pth, training_args.bin. The adapter is taken; the rest
  belongs to another optimizer and another loop and is not used (one line says so). The
  checkpoint's `global_step` comes from trainer_state.json;
- a checkpoint of ours, `step_N/` (its adapter is step_N/model/).
A folder holding checkpoint-N folders (a TRL output_dir) is refused with the names inside, since
which one is meant is the user's choice.

`model.base: from_adapter` takes the base from the adapter's `base_model_name_or_path`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.errors import ConfigError
from trainer.modeling import ADAPTER_CONFIG, ADAPTER_WEIGHTS, adapter_problems

FROM_ADAPTER = "from_adapter"
TRAINER_STATE = "trainer_state.json"
_HF_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class StartAdapter:
    given: str  # as named (--ckpt or model.init_adapter)
    path: Path  # the peft adapter folder
    weights_sha256: str
    base_named: str | None  # adapter_config.json's base_model_name_or_path
    global_step: int | None = None  # trainer_state.json's, for an HF Trainer / TRL checkpoint
    not_used: tuple[str, ...] = ()  # the checkpoint's other files

    @property
    def label(self) -> str:
        """How a person names it: 'checkpoint-156', 'step_40', or the folder's name."""
        folder = self.path.parent if self.path.name == "model" else self.path
        return folder.name

    def record(self) -> dict[str, Any]:
        return {"path": str(self.path), "given": self.given, "label": self.label,
                "weights_sha256": self.weights_sha256, "global_step": self.global_step,
                "base_model_name_or_path": self.base_named}

    def intake_line(self) -> str | None:
        """The one line about an HF checkpoint's files that are not used, or None."""
        if not self.not_used:
            return None
        step = f" (global_step {self.global_step})" if self.global_step is not None else ""
        return (f"starting adapter {self.label}{step}: taking its LoRA adapter; not used: "
                f"{', '.join(self.not_used)} (this run starts its own optimizer, schedule and RNG)")


def open_start_adapter(spec: str) -> StartAdapter:
    """The StartAdapter a folder name stands for; ConfigError naming the folder otherwise."""
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"adapter not found: {spec} (not a folder)")
    folder = folder.absolute()
    adapter = folder / "model" if (folder / "model" / ADAPTER_CONFIG).is_file() else folder
    problems = adapter_problems(adapter)
    if problems:
        inner = sorted(p.name for p in folder.iterdir() if p.is_dir() and _HF_CHECKPOINT.match(p.name))
        if inner:
            inner.sort(key=lambda n: int(_HF_CHECKPOINT.match(n).group(1)))
            raise ConfigError(f"adapter {spec}: not an adapter folder but holds checkpoints "
                              f"{', '.join(inner)}; name one, e.g. {folder / inner[-1]}")
        raise ConfigError(f"adapter {spec}: {'; '.join(problems)}")
    config = _read_json(adapter / ADAPTER_CONFIG, spec)
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    weights = next(adapter / w for w in ADAPTER_WEIGHTS if (adapter / w).is_file())
    from rltui.runs.checkpoints import sha256_file

    return StartAdapter(
        given=spec, path=adapter, weights_sha256=sha256_file(weights),
        base_named=str(base) if base else None, global_step=global_step_of(folder),
        not_used=_not_used(folder) if adapter == folder and (folder / TRAINER_STATE).is_file() else (),
    )


def global_step_of(folder: Path) -> int | None:
    """An HF Trainer / TRL checkpoint's global_step (trainer_state.json, else checkpoint-N's N)."""
    state_file = Path(folder) / TRAINER_STATE
    if not state_file.is_file():
        return None
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = None
    step = state.get("global_step") if isinstance(state, dict) else None
    if isinstance(step, int) and not isinstance(step, bool):
        return step
    match = _HF_CHECKPOINT.match(folder.name)
    return int(match.group(1)) if match else None


def _not_used(folder: Path) -> tuple[str, ...]:
    adapter_files = {ADAPTER_CONFIG, *ADAPTER_WEIGHTS, "README.md"}
    tokenizer = ("tokenizer", "special_tokens_map", "vocab", "merges", "added_tokens", "chat_template")
    return tuple(sorted(
        p.name for p in folder.iterdir()
        if p.name not in adapter_files and not p.name.startswith(tokenizer)
    ))


def _read_json(path: Path, spec: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"adapter {spec}: unreadable {path.name} ({e})") from None


def same_base(named: str | None, spec: str, resolved_path: Path, repo_id: str | None) -> bool:
    """Whether an adapter's base_model_name_or_path names the base model in use."""
    if not named or named == spec:
        return True
    tiny_named = named == "tiny" or named.rstrip("/").endswith("models/tiny/base")
    if tiny_named and str(resolved_path).rstrip("/").endswith("models/tiny/base"):
        return True  # the built-in model, wherever it was built
    named_path = Path(named).expanduser()
    if named_path.is_dir():
        try:
            return named_path.resolve() == Path(resolved_path).resolve()
        except OSError:
            return False
    return repo_id is not None and named.partition("@")[0] == repo_id
