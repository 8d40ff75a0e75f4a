"""The training process: GRPO + LoRA with full-state checkpoints. Imports rltui.localfs only."""

import os

# Nothing is downloaded at run time (models are local folders): keep transformers and peft from
# looking names up on a hub, which costs a DNS timeout per lookup on a box without network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
