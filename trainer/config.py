"""The training config: one typed object, parsed once from YAML, validated with errors that name
the key and the bad value (ConfigError, exit 2).

Field names follow TRL's GRPOConfig where it has one (num_generations, max_completion_length,
beta, epsilon, epsilon_high, loss_type, scale_rewards, num_iterations, learning_rate, ...). The
sections only group them; see configs/tiny.yaml for every key with its default.

    python -m trainer.config CFG     # exit 0 when CFG is a valid config; else its one line, exit 2

The manager runs that before it makes a training job (rltui/jobs/builders.py), so a config's bad
key or value is refused at `rltui --batch train` and in the TUI's form, with no job or run made.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from trainer.errors import ConfigError

LOSS_TYPES = ("grpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")
SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           choices: tuple[str, ...] | None = None) -> dict[str, Any]:
    return {"lo": lo, "hi": hi, "lo_open": lo_open, "choices": choices}


@dataclass
class ModelConfig:
    # "tiny" (built on first use under ROOT/models/tiny), a Hub id org/name[@revision] (through
    # the Hugging Face cache), a local HF folder, a ROOT/models/NAME, or "from_adapter" (the base
    # the starting adapter names); config_resolved.yaml pins a Hub id to its commit
    base: str = "tiny"
    # the adapter to start from: a peft folder, an HF Trainer / TRL checkpoint-N folder,
    # "warmstart" (the tiny model's built-in SFT adapter), or null for a fresh LoRA; --ckpt
    # overrides it
    init_adapter: Optional[str] = None
    precision: str = field(default="auto", metadata=_range(choices=PRECISIONS))
    gradient_checkpointing: bool = False


@dataclass
class LoraConfig:
    r: int = field(default=8, metadata=_range(1, 4096))
    alpha: float = field(default=16.0, metadata=_range(0.0, lo_open=True))
    dropout: float = field(default=0.0, metadata=_range(0.0, 0.99))
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class DataConfig:
    dataset: str = "arith_r1_template"  # NAME_TEMPLATE, e.g. gsm8k_r1_template
    split: str = "train"


@dataclass
class RewardConfig:
    function: str = "correctness"  # a built-in name or "module:function"
    weight: float = 1.0


@dataclass
class GRPOConfig:
    num_generations: int = field(default=4, metadata=_range(2, 1024))
    per_device_prompts: int = field(default=4, metadata=_range(1, 100_000))
    gradient_accumulation_steps: int = field(default=1, metadata=_range(1, 10_000))
    num_iterations: int = field(default=1, metadata=_range(1, 100))
    max_prompt_length: int = field(default=256, metadata=_range(1, 1_000_000))
    max_completion_length: int = field(default=64, metadata=_range(1, 1_000_000))
    temperature: float = field(default=1.0, metadata=_range(0.0, 100.0, lo_open=True))
    top_p: float = field(default=1.0, metadata=_range(0.0, 1.0, lo_open=True))
    beta: float = field(default=0.0, metadata=_range(0.0, 1e6))
    epsilon: float = field(default=0.2, metadata=_range(0.0, 1.0, lo_open=True))
    epsilon_high: Optional[float] = field(default=None, metadata=_range(0.0, 100.0, lo_open=True))
    loss_type: str = field(default="dr_grpo", metadata=_range(choices=LOSS_TYPES))
    scale_rewards: str = field(default="group", metadata=_range(choices=SCALE_REWARDS))
    mask_truncated_completions: bool = False
    forward_batch_size: int = field(default=16, metadata=_range(1, 100_000))  # sequences per forward

    @property
    def clip_high(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high


@dataclass
class OptimConfig:
    learning_rate: float = field(default=1e-4, metadata=_range(0.0, 10.0, lo_open=True))
    lr_scheduler_type: str = field(default="constant_with_warmup", metadata=_range(choices=SCHEDULERS))
    warmup_steps: int = field(default=0, metadata=_range(0, 10_000_000))
    min_lr_ratio: float = field(default=0.0, metadata=_range(0.0, 1.0))
    max_grad_norm: float = field(default=1.0, metadata=_range(0.0))  # 0 turns clipping off
    weight_decay: float = field(default=0.0, metadata=_range(0.0, 10.0))
    adam_beta1: float = field(default=0.9, metadata=_range(0.0, 1.0))
    adam_beta2: float = field(default=0.999, metadata=_range(0.0, 1.0))


@dataclass
class TrainingConfig:
    total_steps: int = field(default=100, metadata=_range(1, 100_000_000))
    seed: int = field(default=0, metadata=_range(0, 2**31 - 1))
    save_every: int = field(default=50, metadata=_range(0, 100_000_000))  # 0: only at the end/stop
    keep_last: int = field(default=3, metadata=_range(1, 100_000_000))
    keep_every: int = field(default=0, metadata=_range(0, 100_000_000))  # also keep every M-th; 0: none
    log_every: int = field(default=1, metadata=_range(1, 100_000_000))  # train_log and tensorboard
    log_rollouts_every: int = field(default=10, metadata=_range(0, 100_000_000))  # 0: never
    rollouts_per_log: int = field(default=4, metadata=_range(1, 100_000))
    cpu_threads: int = field(default=1, metadata=_range(0, 1024))  # 0: torch's default


@dataclass
class ArchiveConfig:
    """The run's live archive to S3 (rltui.archive.follow). Read by the manager, which starts
    the archive beside the trainer; the trainer itself never uploads anything."""

    enabled: bool = False
    interval_s: float = field(default=10.0, metadata=_range(0.0, lo_open=True))
    keep_latest: bool = False  # delete archived local checkpoints but the newest
    keep_every: Optional[int] = field(default=None, metadata=_range(1))
    local_budget: Optional[str] = None  # e.g. "50G": delete the oldest archived while over it
    bandwidth: Optional[str] = None  # e.g. "20M": upload bytes per second


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rewards: list[RewardConfig] = field(default_factory=lambda: [RewardConfig()])
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """A short hash of everything that shapes training (the resolved values; not where the
        run is archived, which may change between sessions of one run)."""
        shaping = {k: v for k, v in self.to_dict().items() if k != "archive"}
        text = json.dumps(shaping, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- parsing


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file; every problem is a ConfigError naming it."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as e:
        raise ConfigError(f"config file unreadable: {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config {path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at "
                          f"offset {e.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else "syntax error"
        raise ConfigError(f"config {path}: not valid YAML ({first})") from None
    return config_from_dict(data if data is not None else {}, source=str(path))


def config_from_dict(data: Any, source: str = "config") -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: must be a mapping of sections, got {type(data).__name__}")
    cfg = _build(Config, data, "", source)
    _check_cross_fields(cfg, source)
    return cfg


def _build(cls: type, data: dict[str, Any], prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(f"{source}: unknown key '{where}' (known here: {known})")
        kwargs[key] = _coerce(hints[key], value, where, source, names[key].metadata)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str, source: str, meta: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union and type(None) in args:
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(inner, value, where, source, meta)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{where}' must be a mapping, got {value!r}")
        return _build(tp, value, f"{where}.", source)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: '{where}' must be a list, got {value!r}")
        (item,) = args
        return [_coerce(item, v, f"{where}[{i}]", source, meta) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: '{where}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: '{where}' must be an integer, got {value!r}")
        _check_range(value, where, source, meta)
        return value
    if tp is float:
        if isinstance(value, str):
            try:  # YAML 1.1 reads 1e-4 as a string; accept what a user means
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: '{where}' must be a number, got {value!r}")
        _check_range(float(value), where, source, meta)
        return float(value)
    if tp is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{source}: '{where}' must be a non-empty string, got {value!r}")
        choices = meta.get("choices") if meta else None
        if choices and value not in choices:
            raise ConfigError(f"{source}: '{where}' = {value!r}: must be one of {', '.join(choices)}")
        return value
    raise TypeError(f"unsupported config type {tp!r} for {where}")


def _check_range(value: float, where: str, source: str, meta: Any) -> None:
    if not meta:
        return
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value <= lo if meta.get("lo_open") else value < lo):
        op = ">" if meta.get("lo_open") else ">="
        raise ConfigError(f"{source}: '{where}' = {value!r}: must be {op} {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{source}: '{where}' = {value!r}: must be <= {hi}")


def _check_cross_fields(cfg: Config, source: str) -> None:
    if not cfg.rewards:
        raise ConfigError(f"{source}: 'rewards' must name at least one reward function")
    if not cfg.lora.target_modules:
        raise ConfigError(f"{source}: 'lora.target_modules' must not be empty")
    if cfg.optim.warmup_steps > cfg.training.total_steps:
        raise ConfigError(
            f"{source}: 'optim.warmup_steps' = {cfg.optim.warmup_steps}: must be <= "
            f"training.total_steps ({cfg.training.total_steps})"
        )


def main(argv: list[str] | None = None) -> int:
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m trainer.config CFG", file=sys.stderr)
        return 2
    try:
        load_config(args[0])
    except ConfigError as e:
        print(str(e).splitlines()[0] if str(e) else "bad config", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
