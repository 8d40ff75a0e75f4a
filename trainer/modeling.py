"""Loading a base model, its tokenizer and LoRA adapters; checking an adapter fits a base model.

One copy for the trainer and the evaluator. A base model name (a Hub id, a folder, a localfs
model or `tiny`) is turned into a local folder by trainer.hub first (a Hub id through the Hugging
Face cache, downloading once when it is not there); every load here reads that folder and passes
`local_files_only`, so no load looks anything up on the Hub. This module does not import
trainer.hub (which builds `tiny` with trainer.tiny, which loads through here).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainer.errors import ConfigError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
           "fp32": "float32", "float32": "float32"}


def torch_dtype(dtype: Any):
    """A torch dtype from a torch dtype or a name such as 'bf16', 'float32'."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPES.get(str(dtype).lower())
    if name is None:
        raise ConfigError(f"bad dtype: {dtype!r} (use one of {', '.join(_DTYPES)})")
    return getattr(torch, name)


def quiet_transformers() -> None:
    """No per-load progress bars or advisory warnings in job logs. Also peft's read of the property
    transformers 5 deprecated (`is_gradient_checkpointing`, as it wraps a model): a FutureWarning
    in every training job's log that nobody running rltui can act on."""
    import warnings

    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def load_tokenizer(path: Path):
    """The model folder's tokenizer, left-padding (batched generation), with a pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_and_tokenizer(path: Path, device: Any, dtype: Any):
    """(model in eval mode on `device`, tokenizer) from a local HF folder; SDPA attention."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ConfigError(f"base model {path}: no config.json (not a Hugging Face model folder)")
    quiet_transformers()
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch_dtype(dtype), attn_implementation="sdpa", local_files_only=True
    )
    model.to(device)
    model.eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def enable_checkpointing(model) -> None:
    """Gradient checkpointing on, non-reentrant (the form LoRA's frozen inputs need), by the name
    the installed transformers gives it: `activation_checkpointing_enable` since transformers 5,
    where `gradient_checkpointing_enable` warns and goes in v6. Read back with
    trainer.qwen2_train.checkpointing."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def adapter_problems(adapter_dir: Path) -> list[str]:
    """Why `adapter_dir` is not a peft adapter folder; empty when it looks like one."""
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        return ["not a folder"]
    problems = []
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        problems.append(f"missing {ADAPTER_CONFIG}")
    if not any((adapter_dir / w).is_file() for w in ADAPTER_WEIGHTS):
        problems.append(f"missing {ADAPTER_WEIGHTS[0]}")
    return problems


def load_adapter(model, adapter_dir: Path, adapter_name: str = "default", *, is_trainable: bool = False):
    """`model` with the LoRA adapter from `adapter_dir` loaded and active; returns the PeftModel.

    A plain model is wrapped (PeftModel.from_pretrained); a PeftModel gets one more adapter.
    Any failure is a ConfigError naming the adapter folder and why.
    """
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    problems = adapter_problems(adapter_dir)
    if problems:
        raise ConfigError(f"adapter {adapter_dir}: {'; '.join(problems)}")
    # Not low_cpu_mem_usage: with a bf16 base it rounds float32 adapter weights through bf16
    # (peft 0.21), so the adapter evaluated would not be the adapter saved.
    try:
        if isinstance(model, PeftModel):
            model.load_adapter(str(adapter_dir), adapter_name=adapter_name, is_trainable=is_trainable)
            model.set_adapter(adapter_name)
            return model
        return PeftModel.from_pretrained(
            model, str(adapter_dir), adapter_name=adapter_name, is_trainable=is_trainable
        )
    except Exception as e:  # peft raises RuntimeError, ValueError, KeyError, OSError...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"adapter {adapter_dir} does not load: {reason}") from None


def unload_adapter(model):
    """The base model back from a PeftModel, LoRA layers removed (not merged); others unchanged."""
    from peft import PeftModel

    return model.unload() if isinstance(model, PeftModel) else model


def check_adapter_fits(base_path: Path, adapter_dir: Path) -> None:
    """ConfigError naming the adapter folder unless every LoRA tensor fits a module of the base.

    Reads only file headers (config.json, safetensors shapes), so it is cheap even for a 1.5B base.
    """
    adapter_dir = Path(adapter_dir)
    problems = adapter_problems(adapter_dir)
    if problems:
        raise ConfigError(f"adapter {adapter_dir}: {'; '.join(problems)}")
    adapter_shapes = _adapter_shapes(adapter_dir)
    base_shapes = _safetensors_shapes(Path(base_path))
    if not adapter_shapes:
        raise ConfigError(f"adapter {adapter_dir}: no LoRA tensors in its weights file")
    for key, shape in sorted(adapter_shapes.items()):
        module, kind = _lora_module(key)
        if module is None:
            continue
        base_shape = base_shapes.get(f"{module}.weight")
        if base_shape is None:
            raise ConfigError(
                f"adapter {adapter_dir} does not fit base model {base_path}: "
                f"module {module} (from {key}) is not in the base model")
        out_features, in_features = base_shape[0], base_shape[-1]
        if (kind == "lora_A" and shape[-1] != in_features) or (kind == "lora_B" and shape[0] != out_features):
            raise ConfigError(
                f"adapter {adapter_dir} does not fit base model {base_path}: {key} has shape "
                f"{list(shape)} but {module} is {out_features}x{in_features}")


def _lora_module(key: str) -> tuple[str | None, str]:
    """'base_model.model.model.layers.0.q_proj.lora_A.weight' -> ('model.layers.0.q_proj', 'lora_A')."""
    for kind in ("lora_A", "lora_B"):
        marker = f".{kind}."
        if marker in key:
            module = key.split(marker)[0].removeprefix("base_model.model.")
            return module, kind
    return None, ""


def _adapter_shapes(adapter_dir: Path) -> dict[str, tuple[int, ...]]:
    weights = adapter_dir / ADAPTER_WEIGHTS[0]
    if weights.is_file():
        return _header_shapes(weights, adapter_dir)
    import torch

    try:
        state = torch.load(adapter_dir / ADAPTER_WEIGHTS[1], map_location="meta", weights_only=True)
    except Exception as e:
        raise ConfigError(f"adapter {adapter_dir}: unreadable {ADAPTER_WEIGHTS[1]} ({e})") from None
    return {k: tuple(v.shape) for k, v in state.items()}


def _safetensors_shapes(base_path: Path) -> dict[str, tuple[int, ...]]:
    index = base_path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    shapes: dict[str, tuple[int, ...]] = {}
    for name in files:
        path = base_path / name
        if not path.is_file():
            raise ConfigError(f"base model {base_path}: missing {name}")
        shapes.update(_header_shapes(path, base_path))
    return shapes


def _header_shapes(path: Path, owner: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:
        raise ConfigError(f"{owner}: unreadable {path.name} ({e})") from None
