"""The app's actions: open a form, confirm, and hand the result to rltui.jobs in a worker.
Nothing here reads a file on the UI thread: a form checks its input in a worker (form_base),
the run and checkpoint chosen come from the index's records.

Mixed into RlTuiApp (rltui.tui.app), which provides `layout`, `launcher`, `sampler`,
`selected_run()`, `selected_job()` and the widgets. Every action is bound to a key (shown in
the Footer) and listed in the command palette. Screens are imported when first opened: they
are not needed for the first frame, which the app must draw as soon as it can.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textual import work

from rltui.tui.watcher import Change

if TYPE_CHECKING:
    from rltui.tui.app import RlTuiApp

DEFAULT_CONFIGS = ("configs/tiny.yaml", "configs/default.yaml")


class ActionsMixin:
    default_cfg = ""  # the first of DEFAULT_CONFIGS that exists, found off the UI thread

    def on_mount(self: "RlTuiApp") -> None:  # Textual calls each class's on_mount in the MRO
        self.find_default_config()

    @work(thread=True, group="default-config")
    def find_default_config(self: "RlTuiApp") -> None:
        from pathlib import Path

        self.default_cfg = next((c for c in DEFAULT_CONFIGS if Path(c).is_file()), "")

    # ------------------------------------------------------------ forms that launch jobs

    def action_new_training(self: "RlTuiApp") -> None:
        from rltui.tui.form_train import TrainForm

        self.push_screen(TrainForm(self.layout, default_cfg=self.default_cfg), self.launch_spec)

    def action_resume(self: "RlTuiApp") -> None:
        run = self.need_run("resume")
        if run is None:
            return
        from rltui.tui.form_resume import ResumeForm
        from rltui.tui.run_detail import RunDetail

        step = self.query_one(RunDetail).selected_step
        chosen = next((c for c in run.checkpoints if c.step == step and c.complete), None)
        self.push_screen(ResumeForm(self.layout, run=run.name, step=chosen.step if chosen else None,
                                    newest=run.latest_complete), self.launch_spec)

    def action_evaluate(self: "RlTuiApp") -> None:
        from rltui.tui.form_eval import EvalForm

        run = self.need_run("evaluate")
        if run is not None:
            self.push_screen(EvalForm(self.layout, run=run.name, dataset=run.dataset), self.launch_spec)

    def action_archive(self: "RlTuiApp") -> None:
        from rltui.tui.form_archive import ArchiveForm

        run = self.selected_run()
        self.push_screen(ArchiveForm(self.layout, run=run.name if run else None), self.launch_spec)

    def action_fetch(self: "RlTuiApp") -> None:
        from rltui.tui.form_fetch import FetchForm

        self.push_screen(FetchForm(self.layout), self.launch_spec)

    def need_run(self: "RlTuiApp", what: str) -> Any:
        run = self.selected_run()
        if run is None:
            self.notify(f"select a run to {what} first", severity="warning")
        return run

    def launch_spec(self: "RlTuiApp", spec: Any) -> None:
        if spec is not None:
            self.launch_worker(spec)

    @work(thread=True, group="launch")
    def launch_worker(self: "RlTuiApp", spec: Any) -> None:
        from rltui.jobs import control

        try:
            if self.launcher is not None:
                self.launcher(self.layout, spec)
            else:
                control.launch(self.layout, spec, self.sampler)
        except Exception as e:  # shown to the user; the job record says the rest
            self.call_from_thread(self.notify, f"could not launch {spec.title or spec.id}: {e}",
                                  severity="error", timeout=10)
            return
        self.call_from_thread(self.notify, f"launched job {spec.id}: {spec.title}", timeout=5)
        self.changes_arrived({Change("job", spec.id)} | ({Change("run", spec.run)} if spec.run else set()))

    # ------------------------------------------------------------ stopping and killing

    def action_stop_job(self: "RlTuiApp") -> None:
        from rltui.tui.confirm import Confirm

        job = self.need_active_job("stop")
        if job is not None:
            self.push_screen(
                Confirm(f"Stop job {job.id}{_of_run(job)}?",
                        "A training run saves at its next step boundary, then exits.", "Stop"),
                lambda yes: self.control_worker("stop", job.id) if yes else None,
            )

    def action_kill_job(self: "RlTuiApp") -> None:
        from rltui.tui.confirm import Confirm

        job = self.need_active_job("kill")
        if job is not None:
            self.push_screen(
                Confirm(f"Kill job {job.id}{_of_run(job)}?",
                        "Its processes die at once; work since the last checkpoint is lost.", "Kill"),
                lambda yes: self.control_worker("kill", job.id) if yes else None,
            )

    def need_active_job(self: "RlTuiApp", what: str) -> Any:
        job = self.selected_job()
        if job is None or not job.state.active:
            self.notify(f"no running job selected to {what}", severity="warning")
            return None
        return job

    @work(thread=True, group="control")
    def control_worker(self: "RlTuiApp", verb: str, job_id: str) -> None:
        from rltui.jobs import control

        try:
            (control.stop if verb == "stop" else control.kill)(self.layout, job_id)
        except Exception as e:
            self.call_from_thread(self.notify, f"could not {verb} {job_id}: {e}", severity="error")
            return
        self.call_from_thread(self.notify, f"{verb} sent to job {job_id}")
        self.changes_arrived({Change("job", job_id)})

    # ------------------------------------------------------------ auto-resume, logs, help

    def action_toggle_auto_resume(self: "RlTuiApp") -> None:
        job = self.training_job()
        if job is None:
            self.notify("select a run with a training job (or that job) to toggle auto-resume",
                        severity="warning")
            return
        self.toggle_worker(job.id)

    def training_job(self: "RlTuiApp") -> Any:
        """The selected training job (Jobs tab), else the selected run's newest training job."""
        if self.current_view == "jobs-view" and self.jobs_pane is not None:
            job = self.jobs_pane.selected
            return job if job is not None and job.trains else None
        run = self.selected_run()
        if run is None or self.snapshot is None:
            return None
        jobs = [j for j in self.snapshot.jobs_of(run.name) if j.trains]
        return max(jobs, key=lambda j: (j.created or 0.0, j.id)) if jobs else None

    @work(thread=True, group="control")
    def toggle_worker(self: "RlTuiApp", job_id: str) -> None:
        from rltui.jobs import control

        try:
            on = control.toggle_auto_resume(self.layout, job_id)
        except Exception as e:
            self.call_from_thread(self.notify, f"could not change auto-resume: {e}", severity="error")
            return
        self.call_from_thread(self.notify, f"auto-resume {'on' if on else 'off'} for job {job_id}")
        self.changes_arrived({Change("job", job_id)})

    def action_open_log(self: "RlTuiApp") -> None:
        from rltui.tui.log_pane import LogPane
        from rltui.tui.log_screen import LogScreen

        from rltui.tui.run_detail import RunDetail

        if self.current_view == "jobs-view" and self.jobs_pane is not None:
            pane = self.jobs_pane.query_one("#job-log", LogPane)
        else:
            pane = self.query_one(RunDetail).log_pane
        if pane is None or pane.path is None:
            self.notify("no log to open here", severity="warning")
            return
        self.push_screen(LogScreen(pane.path, str(pane.border_title or pane.path)))

    def action_help(self: "RlTuiApp") -> None:
        from rltui.tui.commands import COMMANDS
        from rltui.tui.help_screen import HelpScreen

        self.push_screen(HelpScreen(COMMANDS))


def _of_run(job: Any) -> str:
    """ " (run NAME)" for a confirmation: the user sees which run the job belongs to."""
    return f" ({job.kind or 'job'} of run {job.run})" if job.run else ""
