"""The evaluation process: many checkpoints, one base-model load. Imports rltui.localfs only."""
