"""The resume form: from the latest complete checkpoint or the selected one, for more steps.

Usage:
    app.push_screen(ResumeForm(layout, run="run_...", step=40), callback)   # -> JobSpec
"""

from __future__ import annotations

from typing import Any, Iterable

from textual.widget import Widget

from rltui.tui.archive_actions import with_live_archive
from rltui.tui.form_backend import backend_fields, with_backend
from rltui.tui.form_base import JobForm


class ResumeForm(JobForm):
    @property
    def heading(self) -> str:
        run, step, newest = self.context["run"], self.context.get("step"), self.context.get("newest")
        if step is not None and newest is not None and step < newest:
            # an older step never touches the run: trainer.resume_training forks a new one
            return f"Resume {run} from step {step}: makes a NEW run (newest is step {newest})"
        return f"Resume {run}"

    def fields(self) -> Iterable[Widget]:
        step = self.context.get("step")
        yield self.text("from_step", "from step", "latest" if step is None else str(step),
                        "latest or a step number", flag="--from-step")
        yield self.text("additional_steps", "more steps", "", "optional: steps beyond the checkpoint",
                        flag="--additional-steps")
        yield self.check("auto_resume", "auto-resume after a crash", False)
        yield self.check("archive", "archive live to S3 while it trains", False)
        yield from backend_fields(self)

    def build(self) -> Any:
        from rltui.jobs import builders

        from_step: str | int = self.value("from_step") or "latest"
        spec = builders.resume_job(
            self.fs_layout, self.context["run"],
            from_step=from_step,
            additional_steps=self.optional_int("additional_steps", "--additional-steps"),
            auto_resume=self.checked("auto_resume"),
        )
        return with_live_archive(with_backend(self, spec), self.checked("archive"))
