"""The new-training form: config file, starting adapter, GPUs or process count, auto-resume,
evaluation after training.

Usage:
    app.push_screen(TrainForm(layout, default_cfg="configs/tiny.yaml",
                        flag="--cfg"), callback)   # -> JobSpec
"""

from __future__ import annotations

from typing import Any, Iterable

from textual.widget import Widget

from rltui.errors import UsageError
from rltui.tui.archive_actions import with_live_archive
from rltui.tui.form_backend import backend_fields, with_backend
from rltui.tui.form_base import JobForm


def parse_gpu_list(raw: str) -> list[int] | None:
    """'0,1' -> [0, 1]; '' -> None (any free GPU, or the CPU on a box without one)."""
    if not raw:
        return None
    try:
        ids = [int(part) for part in raw.replace(" ", "").split(",") if part]
    except ValueError:
        raise UsageError(f"bad --gpus: {raw!r} (use GPU numbers like 0,1)") from None
    if not ids or any(i < 0 for i in ids):
        raise UsageError(f"bad --gpus: {raw!r} (use GPU numbers like 0,1)")
    return ids


class TrainForm(JobForm):
    heading = "New training run"

    def fields(self) -> Iterable[Widget]:
        yield self.text("cfg", "config file", self.context.get("default_cfg", ""), "configs/tiny.yaml",
                        flag="--cfg")
        yield self.text("ckpt", "start adapter", "", "optional: an adapter folder", flag="--ckpt")
        yield self.text("steps", "steps", "", "optional: the config's total_steps", flag="--steps")
        yield self.text("nproc", "processes", "1", "torchrun processes (1: no torchrun)", flag="--nproc")
        yield self.text("gpus", "GPUs", "", "optional: 0,1 (empty: any free)", flag="--gpus")
        yield self.text("eval_after", "eval after", "", "optional: a dataset, e.g. arith", flag="--eval-after")
        yield self.check("auto_resume", "auto-resume after a crash", False)
        yield self.check("archive", "archive live to S3 while it trains", False)
        yield from backend_fields(self)

    def build(self) -> Any:
        from rltui.jobs import builders

        cfg = self.value("cfg")
        if not cfg:
            raise UsageError("bad --cfg: '' (give a config file)")
        spec = builders.train_job(
            self.fs_layout, cfg,
            ckpt=self.optional_text("ckpt"),
            steps=self.optional_int("steps", "--steps"),
            nproc=self.optional_int("nproc", "--nproc") or 1,
            gpus=parse_gpu_list(self.value("gpus")),
            auto_resume=self.checked("auto_resume"),
            eval_after=self.optional_text("eval_after"),
        )
        return with_live_archive(with_backend(self, spec), self.checked("archive"))
