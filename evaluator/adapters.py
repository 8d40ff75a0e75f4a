"""One base model in memory, one checkpoint's LoRA adapter active at a time.

The first adapter is loaded with peft (`PeftModel.from_pretrained` injects LoRA layers into the
base). Every later adapter with the same settings (rank, alpha, target modules...) is *hot-swapped*:
its tensors are copied into the LoRA layers already there, which costs a file read instead of
re-wrapping every linear layer. An adapter that cannot be hot-swapped, or a swap that fails,
falls back to unload (the base's own layers back) + a fresh load, so every checkpoint still gets
exactly its own weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainer.modeling import ADAPTER_CONFIG, check_adapter_fits, load_adapter, unload_adapter

ADAPTER_NAME = "default"
# Hot-swapping copies tensors only: every setting that shapes or scales the LoRA layers must match
# (peft's hotswap accepts another rank or alpha without complaint and then computes wrong outputs).
SHAPE_KEYS = ("peft_type", "r", "lora_alpha", "target_modules", "use_rslora", "use_dora",
              "rank_pattern", "alpha_pattern", "modules_to_save", "bias", "fan_in_fan_out",
              "layers_to_transform", "layers_pattern", "exclude_modules", "lora_bias")


def lora_shape(adapter_dir: Path) -> dict[str, Any] | None:
    """The settings of an adapter that must match for a hot swap; None when unreadable."""
    try:
        config = json.loads((Path(adapter_dir) / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    shape = {k: config.get(k) for k in SHAPE_KEYS}
    if isinstance(shape["target_modules"], list):
        shape["target_modules"] = sorted(shape["target_modules"])
    return shape


class AdapterSwitcher:
    def __init__(self, base_model: Any, base_path: Path, device: str) -> None:
        self.model = base_model  # the plain base, or the PeftModel around it
        self.base_path = Path(base_path)
        self.device = device
        self.active: Path | None = None
        self.active_shape: dict[str, Any] | None = None
        self.hotswaps = 0
        self.fresh_loads = 0

    def base(self) -> Any:
        """The base model alone (any adapter unloaded)."""
        self._unload()
        return self.model

    def activate(self, adapter_dir: Path) -> Any:
        """The model with `adapter_dir`'s adapter active; trainer.errors.ConfigError naming the
        adapter when it cannot be (then the base may hold stray LoRA layers: see has_lora_layers)."""
        adapter_dir = Path(adapter_dir)
        check_adapter_fits(self.base_path, adapter_dir)  # headers only: nothing touched yet
        shape = lora_shape(adapter_dir)
        if self.active is not None and shape is not None and shape == self.active_shape:
            try:
                self._hotswap(adapter_dir)
                self.active, self.hotswaps = adapter_dir, self.hotswaps + 1
                return self.model
            except Exception:  # a bad file: start clean, below
                pass
        self._unload()
        self.model = load_adapter(self.model, adapter_dir, adapter_name=ADAPTER_NAME)
        self.active, self.active_shape = adapter_dir, shape
        self.fresh_loads += 1
        return self.model

    def has_lora_layers(self) -> bool:
        return any("lora_" in name for name, _ in self.model.named_modules())

    def _hotswap(self, adapter_dir: Path) -> None:
        from peft.utils.hotswap import hotswap_adapter

        hotswap_adapter(self.model, str(adapter_dir), adapter_name=ADAPTER_NAME,
                        torch_device=str(self.device))

    def _unload(self) -> None:
        self.model = unload_adapter(self.model)
        self.active = self.active_shape = None

