"""The TUI's side of the live archive: the Bucket tab's data, restoring a bucket-only run, and
turning a running training job's live archive on or off.

Mixed into RlTuiApp (rltui.tui.app), like ActionsMixin. A worker reads the archive view every
ARCHIVE_INTERVAL_S (small local files: archive/status/*.json and the cached bucket catalog) and
lists the bucket itself at most every BUCKET_LIST_S, or at once on `R` with no run selected;
it posts ArchiveViewReady, which the Bucket pane draws. Nothing here reads a file on the UI thread.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from textual import work

from rltui.tui.messages import ArchiveViewReady
from rltui.tui.watcher import Change

if TYPE_CHECKING:
    from rltui.tui.app import RlTuiApp

ARCHIVE_INTERVAL_S = 5.0
BUCKET_LIST_S = 300.0  # a bucket is listed at most this often unless asked (`R` on no row)


class ArchiveMixin:
    archive_view: Any = None
    bucket_listed_at: float = 0.0
    bucket_settings_ok: bool | None = None  # None: not checked yet

    def on_mount(self: "RlTuiApp") -> None:  # Textual calls each class's on_mount in the MRO
        self.set_interval(ARCHIVE_INTERVAL_S, self.read_archive_view)

    @work(thread=True, group="archive-view", exclusive=True)
    def read_archive_view(self: "RlTuiApp", list_bucket: bool = False) -> None:
        from rltui.archive.view import archive_view

        if self.bucket_settings_ok is None:
            self.bucket_settings_ok = _settings_ok()
        now = time.time()
        due = self.bucket_settings_ok and (list_bucket or now - self.bucket_listed_at > BUCKET_LIST_S)
        if due:
            self.bucket_listed_at = now
        snap = self.snapshot
        local = set(snap.runs) | set(snap.legacy_runs) if snap is not None else set()
        view = archive_view(self.layout, local, refresh=bool(due))
        newest = {n: r.latest_complete for n, r in snap.runs.items()} if snap is not None else {}
        self.post_message(ArchiveViewReady(view, newest))

    def on_archive_view_ready(self: "RlTuiApp", message: ArchiveViewReady) -> None:
        self.archive_view = message.view
        if self.bucket_pane is not None:
            self.bucket_pane.show(message.view, message.newest_local)

    # ------------------------------------------------------------ restore, live archive

    def action_restore_run(self: "RlTuiApp") -> None:
        """Restore the bucket-only run under the cursor (Bucket tab); with none, list the bucket."""
        from rltui.tui.confirm import Confirm

        run = self.bucket_pane.selected if self.bucket_pane is not None else None
        if self.current_view != "bucket-view" or run is None:
            self.action_show_tab("bucket")
            self.notify("listing the bucket…")
            self.read_archive_view(list_bucket=True)
            return
        self.push_screen(
            Confirm(f"Restore run {run} from the bucket?",
                    "Its checkpoints, logs and evaluations are downloaded into this localfs.", "Restore"),
            lambda yes: self.restore_worker(run) if yes else None,
        )

    @work(thread=True, group="launch")
    def restore_worker(self: "RlTuiApp", run: str) -> None:
        from rltui.jobs import builders

        try:
            spec = builders.sync_job(self.layout, "restore", run)
        except Exception as e:
            self.call_from_thread(self.notify, f"could not restore {run}: {e}", severity="error")
            return
        self.call_from_thread(self.launch_spec, spec)

    def action_toggle_live_archive(self: "RlTuiApp") -> None:
        job = self.training_job()
        if job is None or not job.state.active:
            self.notify("select a run whose training job is running to turn its live archive on or off",
                        severity="warning")
            return
        self.live_archive_worker(job.id, job.run)

    @work(thread=True, group="control")
    def live_archive_worker(self: "RlTuiApp", job_id: str, run: str) -> None:
        from rltui.jobs import builders, control
        from rltui.jobs.records import ArchivePlan

        following = [j for j in (self.snapshot.jobs.values() if self.snapshot else ())
                     if j.kind == "sync" and j.state.active and follows(j.argv) == job_id]
        try:
            if following:
                for j in following:
                    control.stop(self.layout, j.id)
                verb = "off (a last pass, then it stops)"
            else:
                spec = builders.sync_job(self.layout, "follow", run, follow_job=job_id, archive=ArchivePlan())
                control.launch(self.layout, spec.with_changes(parent_job=job_id), self.sampler,
                               check_usage=False)
                verb = f"on (job {spec.id})"
        except Exception as e:
            self.call_from_thread(self.notify, f"could not change the live archive of {run}: {e}",
                                  severity="error")
            return
        self.call_from_thread(self.notify, f"live archive of {run} {verb}")
        self.changes_arrived({Change("job", job_id)})


def with_live_archive(spec: Any, on: bool) -> Any:
    """A training spec with its live archive on (the forms' tick box); S3 settings checked now,
    so a missing bucket is one line in the form rather than a failed archive job later."""
    if not on:
        return spec
    from rltui.archive.settings import load_settings
    from rltui.jobs.records import ArchivePlan

    load_settings()
    return spec.with_changes(archive=ArchivePlan())


def follows(argv: list[str]) -> str | None:
    """The training job a `sync --action follow` job's argv watches, or None."""
    try:
        return argv[argv.index("--follow-job") + 1]
    except (ValueError, IndexError):
        return None


def _settings_ok() -> bool:
    """Whether S3 settings name a bucket (else the bucket is never listed)."""
    from rltui.archive.settings import load_settings
    from rltui.errors import UsageError

    try:
        load_settings()
    except UsageError:
        return False
    return True
