"""What a training run tells the outside world: status.json, the JSONL logs and TensorBoard.

Only rank 0 writes (a `RunLog` on any other rank does nothing). status.json follows
docs/ARCHITECTURE.md "File schemas" and is replaced atomically at every phase change and step;
its `time` is the last sign of progress, which the keeper's hang detection reads.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from rltui.runs import localfs, machine


class Phase(str, Enum):
    STARTING = "starting"
    LOADING = "loading"
    GENERATING = "generating"
    SCORING = "scoring"
    TRAINING = "training"
    SAVING = "saving"
    COMPLETED = "completed"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass
class RunStatus:
    run: str
    target_step: int
    world_size: int
    step: int = 0
    phase: Phase = Phase.STARTING
    latest_checkpoint: int | None = None
    parent: dict[str, Any] | None = None
    error: str | None = None
    started: float = field(default_factory=time.time)
    session: str = ""
    target_history: list[int] = field(default_factory=list)  # the original target, then extensions

    def as_json(self) -> dict[str, Any]:
        return {
            "run": self.run, "step": self.step, "target_step": self.target_step,
            "phase": self.phase.value, "pid": os.getpid(), "host": machine.this_host(),
            "time": time.time(), "started": self.started, "world_size": self.world_size,
            "latest_checkpoint": self.latest_checkpoint, "error": self.error,
            "parent": self.parent, "session": self.session,
            "target_history": self.target_history or [self.target_step],
        }


class RunLog:
    def __init__(self, layout: localfs.Layout, status: RunStatus, *, enabled: bool) -> None:
        self.layout = layout
        self.status = status
        self.enabled = enabled
        self._tb = None
        self.last_metrics: dict[str, float] = {}  # of the last step, for training_info.json

    @property
    def run(self) -> str:
        return self.status.run

    def phase(self, phase: Phase, **changes: Any) -> None:
        """Record a phase change (and any of step, latest_checkpoint, error) in status.json."""
        self.status.phase = phase
        for key, value in changes.items():
            setattr(self.status, key, value)
        if self.enabled:
            # not fsynced: status.json changes often and a torn write is impossible with rename
            localfs.write_json_atomic(self.layout.run_status(self.run), self.status.as_json(),
                                      durable=False)

    def step(self, record: dict[str, Any]) -> None:
        """One line of logs/train_log.jsonl plus its numbers as TensorBoard scalars."""
        if not self.enabled:
            return
        line = dict(record, session=self.status.session, time=time.time())
        localfs.append_jsonl(self.layout.train_log(self.run), line)
        writer = self._writer()
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                writer.add_scalar(key.replace(".", "/"), value, record["step"])
        writer.flush()

    def rollouts(self, step: int, rows: list[dict[str, Any]]) -> None:
        if self.enabled:
            for row in rows:
                localfs.append_jsonl(self.layout.rollouts_log(self.run), dict(row, step=step))

    def ratios(self, step: int, stats: dict[str, Any]) -> None:
        if self.enabled:
            localfs.append_jsonl(self.layout.ratios_log(self.run), dict(stats, step=step))

    def _writer(self):
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: the JSONL logs still have everything
                self._tb = _NoWriter()
                return self._tb
            self._tb = SummaryWriter(log_dir=str(self.layout.tensorboard_dir(self.run)))
        return self._tb

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class _NoWriter:
    def add_scalar(self, *args: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
