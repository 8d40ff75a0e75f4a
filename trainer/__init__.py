"""The training process: GRPO + LoRA with full-state checkpoints. Imports rltui.runs only.

No Hugging Face setting is forced here: HF_HOME, HF_HUB_CACHE, HF_TOKEN, HF_ENDPOINT and
HF_HUB_OFFLINE mean what they mean to every Hugging Face tool (trainer.hub). Models are loaded
from local folders with `local_files_only`, so loading itself never asks the Hub anything.
"""
