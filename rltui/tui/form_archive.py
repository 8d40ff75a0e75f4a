"""The archive form: back up one run or all (optionally cleaning up, keeping the latest
checkpoint), restore a run, or list what is backed up in S3.

Usage:
    app.push_screen(ArchiveForm(layout, run="run_..."), callback)   # -> JobSpec
"""

from __future__ import annotations

from typing import Any, Iterable

from textual.widget import Widget

from rltui.tui.form_base import JobForm

ACTIONS = ["backup", "backup-all", "list-backups", "restore"]


class ArchiveForm(JobForm):
    heading = "Archive to S3"

    def fields(self) -> Iterable[Widget]:
        yield self.choice("action", "action", ACTIONS, "backup")
        yield self.text("run", "run", self.context.get("run") or "", "for backup and restore", flag="--training-run")
        yield self.check("cleanup", "clean up local files verified in S3", False)
        yield self.check("keep_latest", "keep the latest checkpoint locally", False)

    def build(self) -> Any:
        from rltui.jobs import builders

        action = self.value("action")
        run = self.optional_text("run") if action in ("backup", "restore") else None
        return builders.sync_job(
            self.fs_layout, action, run=run,
            cleanup=self.checked("cleanup"), keep_latest=self.checked("keep_latest"),
        )
