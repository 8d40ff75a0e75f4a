"""The fetch form: download a model or a dataset from the Hugging Face Hub, as a job.

Usage:
    app.push_screen(FetchForm(layout), callback)   # -> JobSpec (rltui.jobs.fetch_jobs)

A model goes into the Hugging Face cache (or ROOT/models/NAME with "as"); a dataset becomes
ROOT/datasets/NAME/{train,test}.jsonl. The job's progress lines show in the Jobs pane's log. A
network failure restarts it "retries" times (`--retries`), 30 s apart and doubling.
"""

from __future__ import annotations

from typing import Any, Iterable

from textual.widget import Widget

from rltui.tui.form_base import JobForm

WHAT = ["dataset", "model"]


class FetchForm(JobForm):
    heading = "Fetch from the Hugging Face Hub"

    def fields(self) -> Iterable[Widget]:
        yield self.choice("what", "what", WHAT, "dataset")
        yield self.text("repo", "repo", "gsm8k", "gsm8k, org/name (dataset) or org/name (model)")
        yield self.text("revision", "revision", "", "branch, tag or commit (default: main)", flag="--revision")
        yield self.text("as_name", "as", "", "local name (optional)", flag="--as")
        yield self.text("config", "config", "", "dataset config, e.g. main (optional)", flag="--config")
        from rltui.jobs.fetch_jobs import FETCH_RETRIES

        yield self.text("retries", "retries", str(FETCH_RETRIES.max_restarts),
                        "restarts after a network failure (0: none)", flag="--retries")

    def build(self) -> Any:
        from rltui.jobs import fetch_jobs

        revision, as_name = self.optional_text("revision"), self.optional_text("as_name")
        retries = self.optional_int("retries", "--retries")
        retries = fetch_jobs.FETCH_RETRIES.max_restarts if retries is None else retries
        if self.value("what") == "model":
            return fetch_jobs.fetch_model_job(self.fs_layout, self.value("repo"), revision, as_name, retries)
        return fetch_jobs.fetch_dataset_job(self.fs_layout, self.value("repo"), revision=revision,
                                            config=self.optional_text("config"), as_name=as_name,
                                            retries=retries)
