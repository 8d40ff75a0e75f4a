"""The evaluation process: many checkpoints, one base-model load. Imports rltui.runs.localfs only."""
