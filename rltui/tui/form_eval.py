"""The evaluate form: which dataset, which checkpoint steps, what fraction of the test set.

Usage:
    app.push_screen(EvalForm(layout, run="run_...", dataset="arith"), callback)   # -> JobSpec
"""

from __future__ import annotations

from typing import Any, Iterable

from textual.widget import Widget

from rltui.tui.form_backend import backend_fields, with_backend
from rltui.tui.form_base import JobForm


class EvalForm(JobForm):
    @property
    def heading(self) -> str:
        return f"Evaluate {self.context['run']}"

    def fields(self) -> Iterable[Widget]:
        yield self.text("dataset", "dataset", self.context.get("dataset") or "", "the run's dataset",
                        flag="--eval-dataset")
        yield self.text("steps", "steps", self.context.get("steps") or "", "optional: 1,5,10 (empty: all)",
                        flag="--steps")
        yield self.text("subset_frac", "subset", "", "optional: fraction of the test set, 0-1",
                        flag="--subset-frac")
        yield from backend_fields(self)

    def build(self) -> Any:
        from rltui.jobs import builders

        return with_backend(self, builders.eval_job(
            self.fs_layout, self.context["run"],
            dataset=self.optional_text("dataset"),
            steps=self.optional_text("steps"),
            subset_frac=self.optional_float("subset_frac", "--subset-frac"),
        ))
