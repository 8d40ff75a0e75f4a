"""rltui: run manager for GRPO + LoRA fine-tuning. Deliberately imports nothing (fast start)."""

__version__ = "0.1.0"
