"""The training process: GRPO + LoRA with full-state checkpoints. Imports rltui.localfs only."""
