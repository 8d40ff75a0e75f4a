"""The rltui terminal UI: runs, the selected run, jobs and GPUs over one localfs, kept live.

Usage:
    rltui [--root DIR]                    (rltui.cli calls run_tui)
    app = make_app(root, sampler=FakeSampler(...), launcher=..., clock=...)   # tests, benchmarks

The app never reads a file on its own thread: the first scan, every refresh, GPU sampling and
launches run in thread workers that post messages back. The watcher (inotify or polling) names
what changed; only that run, eval folder or job is re-read. Jobs are started through rltui.jobs,
detached, so quitting leaves them running (and says so).
"""

from __future__ import annotations

import gc
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import ContentSwitcher, Footer, Input, Tab, Tabs

from rltui.runs.localfs import Layout
from rltui.text import clean_lines
from rltui.runs.records import JobRecord, RunRecord
from rltui.tui.actions import ActionsMixin
from rltui.tui.archive_actions import ArchiveMixin
from rltui.tui.commands import COMMANDS
from rltui.tui.filter_box import FilterBox
from rltui.tui.live import LiveIndex, QuickRead
from rltui.tui.messages import GpuSampled, QuickListReady, SnapshotReady, WatchModeChanged
from rltui.tui.run_detail import RunDetail
from rltui.tui.runs_table_store import StoreRunsTable
from rltui.tui.store_link import StoreLink
from rltui.tui.runs_table import RunsTable
from rltui.tui.status_bar import StatusBar
from rltui.tui.watcher import Change, RootWatcher, WatchMode, poll_signatures

if TYPE_CHECKING:  # imported where first used, after the first frame, which needs none of them
    from rltui.gpu import GpuSnapshot, Sampler
    from rltui.runs.index import Index, Snapshot
    from rltui.tui.bucket_pane import BucketPane
    from rltui.tui.gpu_pane import GpuPane
    from rltui.tui.jobs_pane import JobsPane

GPU_INTERVAL_S = 2.0  # NVML at most twice a second (issue 7); nvitop's default is 2 s
RECLASSIFY_S = 10.0  # a trainer that dies writes nothing: re-apply the status rule now and then
SLURM_POLL_S = 3.0  # how often the TUI asks Slurm about unfinished Slurm jobs
QUICK_WAIT_S = 0.3  # the first frame waits this long at most for the runs' status.json files
MANY_CHANGES = 20  # more changed runs than this: redraw the table once rather than row by row
TEXTUAL_DUPLICATES = {"Keys", "Quit"}  # Textual's palette entries that ours replace

class RlTuiApp(StoreLink, ArchiveMixin, ActionsMixin, App[str]):
    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute, so subclasses elsewhere find it
    TITLE = "rltui"
    ENABLE_COMMAND_PALETTE = True
    BINDINGS = [Binding(c.key, c.action, c.label, show=c.footer, tooltip=c.help) for c in COMMANDS]

    def notify(self, message: str, **kwargs: Any) -> None:  # type: ignore[override]
        """Every notification shown made safe: messages may quote a file or an error, so they
        are plain text (no markup: a '[' in a reason is shown, not parsed) without escapes."""
        kwargs.setdefault("markup", False)
        super().notify(clean_lines(message), **kwargs)

    def __init__(
        self,
        root: Path,
        *,
        sampler: Sampler | None = None,
        launcher: Callable[[Layout, Any], Any] | None = None,
        index: Index | None = None,
        clock: Callable[[], float] = time.time,
        watch: bool = True,
        force_polling: bool = False,
        gpu_interval_s: float = GPU_INTERVAL_S,
        quick_first: bool | None = None,
        store: bool = True,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.layout = Layout(self.root)
        self.clock = clock
        self.given_index = index
        self.live = LiveIndex(self.make_index)
        self.sampler = sampler
        self.launcher = launcher
        self.watch_enabled = watch
        # a first screen from status.json alone; off when the index is given (tests fix its clock)
        self.quick_first = index is None if quick_first is None else quick_first
        self.force_polling = force_polling
        self.gpu_interval_s = max(0.5, gpu_interval_s)
        self.snapshot: Snapshot | None = None
        self.gpu_snapshot: GpuSnapshot | None = None
        self.watcher: RootWatcher | None = None
        self.loaded = False  # the first scan is shown
        self.scanned = threading.Event()  # the first scan is done (set from its worker)
        self.quick_read: QuickRead | None = None
        self.quick_posted = False
        self.jobs_pane: JobsPane | None = None  # made by mount_hidden
        self.gpu_pane: GpuPane | None = None
        self.bucket_pane: BucketPane | None = None
        self.hidden_mounted = False  # mount_hidden has run
        self.store_enabled = store  # the metrics store: kept current, best-reward column

    def make_index(self) -> Index:
        from rltui.runs.index import Index

        return self.given_index or Index(self.layout, now=self.clock)

    def run(self, *args: Any, **kwargs: Any) -> str | None:
        """Run in the terminal. What is imported and built by now (Textual, Rich, rltui, this app)
        lives as long as the process: frozen, the collections while the first frame is built do
        not walk it again (a full one took ~17 ms of that frame at 1,000 runs)."""
        gc.freeze()
        return super().run(*args, **kwargs)

    # ------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield Tabs(Tab("1 Runs", id="runs"), Tab("2 Jobs", id="jobs"), Tab("3 GPUs", id="gpus"),
                   Tab("4 Bucket", id="bucket"), id="tabs")
        # the Jobs and GPUs panes, hidden at start, join the switcher in mount_hidden
        with ContentSwitcher(initial="runs-view", id="views"):
            with RunsView(id="runs-view"):
                yield FilterBox(id="filter")
                yield StoreRunsTable(self.clock, id="runs-table", store_columns=self.store_enabled)
                yield RunDetail(id="detail")
        yield StatusBar(self.root, self.clock, id="status")
        yield Footer(compact=True)

    def on_load(self) -> None:
        if self.quick_first:  # status.json files are read while the screen is being built
            self.quick_read = QuickRead(self.layout, self.clock())
            self.quick_read.start()

    def on_mount(self) -> None:
        self.query_one("#filter").display = False
        self.query_one(RunsTable).focus()
        if not self.watch_enabled:
            self.query_one(StatusBar).watch_mode = "off"
        # queued after the callbacks that wait for the first frame, so those run first
        self.call_after_refresh(self.call_later, self.mount_hidden)
        if self.quick_read is not None:
            # Waiting briefly costs less than drawing the whole screen twice (empty, then listed);
            # on a slow filesystem the empty screen comes first and the list when read.
            self.quick_read.join(QUICK_WAIT_S)
            self.post_quick_list()
        self.initial_scan()
        self.set_interval(RECLASSIFY_S, self.reclassify)
        self.set_interval(SLURM_POLL_S, self.poll_slurm)

    async def mount_hidden(self) -> None:
        """What the first frame does not show: the Jobs and GPUs tabs, the run detail's tabs."""
        from rltui.tui.gpu_pane import GpuPane
        from rltui.tui.bucket_pane import BucketPane
        from rltui.tui.jobs_pane import JobsPane

        self.jobs_pane = JobsPane(self.clock, id="jobs-view")
        self.gpu_pane = GpuPane(id="gpus-view")
        self.bucket_pane = BucketPane(id="bucket-view")
        self.jobs_pane.display = self.gpu_pane.display = self.bucket_pane.display = False
        if self.snapshot is not None:  # arrived before the panes
            self.jobs_pane.set_jobs(list(self.snapshot.jobs.values()))
        if self.gpu_snapshot is not None:
            self.gpu_pane.show(self.gpu_snapshot)
        await self.query_one("#views").mount(self.jobs_pane, self.gpu_pane, self.bucket_pane)
        self.read_archive_view()
        await self.query_one(RunDetail).mount_hidden()
        self.hidden_mounted = True

    def post_quick_list(self) -> None:
        quick = self.quick_read
        if quick is not None and not self.quick_posted and not quick.is_alive() and quick.runs is not None:
            self.quick_posted = True
            self.post_message(QuickListReady(quick.runs, quick.drawn))

    def start_sampling(self) -> None:
        """GPU sampling starts once the runs are on screen; it is not needed for the first frame."""
        if self.sampler is not None or self.watch_enabled:
            self.sample_gpus()
            self.set_interval(self.gpu_interval_s, self.sample_gpus)

    # ------------------------------------------------------------ workers

    @work(thread=True, exclusive=True, group="scan")
    def initial_scan(self) -> None:
        """First screen, full scan, then the watcher: in that order, so each frame comes soonest.

        The watcher starts after the scan; changes made meanwhile are found by comparing the
        file signatures taken before the scan with those at the watcher's start.
        """
        if self.quick_read is not None:
            self.quick_read.join()
            self.call_from_thread(self.post_quick_list)  # unless on_mount could already
            if self.quick_posted:
                self.quick_read.drawn.wait(timeout=2.0)  # drawn before the scan takes the GIL
        baseline = poll_signatures(self.root) if self.watch_enabled else None
        snapshot = self.live.scan()
        self.scanned.set()
        drawn = threading.Event()
        self.post_message(SnapshotReady(snapshot, drawn=drawn))
        if baseline is not None:
            drawn.wait(timeout=2.0)
            self.start_watcher(baseline)

    def start_watcher(self, baseline: dict) -> None:
        def on_mode(mode: WatchMode, reason: str) -> None:
            self.post_message(WatchModeChanged(mode.value, reason))

        self.watcher = RootWatcher(self.root, self.changes_arrived, force_polling=self.force_polling,
                                   on_mode=on_mode)
        self.watcher.start(baseline)

    def changes_arrived(self, changes: set[Change]) -> None:
        """From the watcher's thread: queue the changes; start a refresh unless one is running."""
        if self.live.add(changes):
            self.call_from_thread(self.refresh_changed)

    @work(thread=True, group="refresh")
    def refresh_changed(self) -> None:
        while (update := self.live.drain()) is not None:
            self.post_message(SnapshotReady(update.snapshot, update.runs, update.jobs))

    @work(thread=True, exclusive=True, group="reclassify")
    def reclassify(self) -> None:
        if self.snapshot is not None:
            update = self.live.reclassify()
            self.post_message(SnapshotReady(update.snapshot, update.runs, update.jobs))

    @work(thread=True, exclusive=True, group="slurm")
    def poll_slurm(self) -> None:
        """Slurm jobs have no keeper: while a job has not ended, ask Slurm (one call for all, in
        rltui.jobs.backends.slurm); the state.json files it changes arrive through the watcher."""
        snapshot = self.snapshot
        if snapshot is not None and any(not job.state.ended for job in snapshot.jobs.values()):
            from rltui.jobs.backends.slurm import refresh

            refresh(self.layout)

    @work(thread=True, exclusive=True, group="gpu")
    def sample_gpus(self) -> None:
        if self.sampler is None:
            from rltui.gpu import default_sampler

            self.sampler = default_sampler()
        snapshot = self.sampler.sample()
        self.scanned.wait(timeout=30)  # GPU processes are shown by job, so the jobs come first
        index_snapshot = self.live.index.snapshot
        if any(g.processes for g in snapshot.gpus):
            from rltui.gpu import attribute
            from rltui.jobs.usage import job_owners

            snapshot = attribute(snapshot, job_owners(index_snapshot.active_jobs))
        self.post_message(GpuSampled(snapshot))

    # ------------------------------------------------------------ messages from workers

    def on_snapshot_ready(self, message: SnapshotReady) -> None:
        self.snapshot = message.snapshot
        if not self.query(RunsTable):  # closing: a worker's last snapshot after the widgets went
            return
        self.store_changed(message.runs)  # the metrics store follows the index, in a worker
        table = self.query_one(RunsTable)
        jobs = self.jobs_pane  # None before mount_hidden, which gives it self.snapshot's jobs
        many = message.runs is not None and len(message.runs) > MANY_CHANGES
        if message.runs is None or not self.loaded or many:
            table.set_runs(all_runs(message.snapshot))
            if jobs is not None:
                jobs.set_jobs(list(message.snapshot.jobs.values()))
            if not self.loaded:
                self.call_after_refresh(self.start_sampling)
            self.loaded = True
        else:
            for name in sorted(message.runs):
                table.update_run(message.snapshot.run(name), name)
            if jobs is not None and message.jobs:
                jobs.update_jobs({j: message.snapshot.jobs.get(j) for j in sorted(message.jobs)})
            if message.jobs:
                self.show_selected_run()
        bar = self.query_one(StatusBar)
        bar.jobs_running = len(running_jobs(message.snapshot))
        bar.mark_updated()
        if message.drawn is not None:
            self.call_after_refresh(message.drawn.set)

    def on_quick_list_ready(self, message: QuickListReady) -> None:
        if not self.loaded and self.query(RunsTable):  # (none while closing)
            self.query_one(RunsTable).set_runs(message.runs, partial=True)
        self.call_after_refresh(message.drawn.set)

    def on_gpu_sampled(self, message: GpuSampled) -> None:
        self.gpu_snapshot = message.snapshot
        if self.gpu_pane is not None:  # else mount_hidden shows it
            self.gpu_pane.show(message.snapshot)

    def on_watch_mode_changed(self, message: WatchModeChanged) -> None:
        self.query_one(StatusBar).watch_mode = message.reason if message.mode == "polling" else message.mode

    def on_runs_table_run_chosen(self, message: RunsTable.RunChosen) -> None:
        self.show_selected_run()

    def show_selected_run(self) -> None:
        run = self.selected_run()
        job = self.active_job_of(run)
        if job is not None and job.path is not None:
            log, title = job.path / "output.log", f"job {job.id} output"
        elif run is not None:
            log, title = run.path / "logs" / "train_log.jsonl", "train_log.jsonl"
        else:
            log, title = None, ""
        self.query_one(RunDetail).show_run(run, log, title)

    # ------------------------------------------------------------ selection

    def selected_run(self) -> RunRecord | None:
        name = self.query_one(RunsTable).selected
        return self.snapshot.run(name) if self.snapshot and name else None

    def active_job_of(self, run: RunRecord | None) -> JobRecord | None:
        if run is None or self.snapshot is None:
            return None
        # its training job first: an --archive run's live archive is a newer active job beside
        # it, and `x` on the run means the training (rltui.jobs.control.job_for, the same rule)
        jobs = [j for j in self.snapshot.jobs_of(run.name) if j.state.active]
        return max(jobs, key=lambda j: (j.trains, j.created or 0.0)) if jobs else None

    def selected_job(self) -> JobRecord | None:
        """The job under the cursor on the Jobs tab, else the selected run's active job."""
        if self.current_view == "jobs-view" and self.jobs_pane is not None:
            return self.jobs_pane.selected
        return self.active_job_of(self.selected_run())

    @property
    def current_view(self) -> str:
        return self.query_one("#views", ContentSwitcher).current or "runs-view"

    # ------------------------------------------------------------ tabs and filter

    @on(Tabs.TabActivated, "#tabs")
    def tab_activated(self, event: Tabs.TabActivated) -> None:
        self.switch_view(f"{event.tab.id}-view")

    def switch_view(self, view: str) -> None:
        if not self.query(f"#{view}"):  # a lazily mounted pane, asked for in the first moments
            self.call_after_refresh(self.switch_view, view)
            return
        self.query_one("#views", ContentSwitcher).current = view
        target = {"runs-view": "#runs-table", "jobs-view": "#jobs-table",
                  "bucket-view": "#bucket-table"}.get(view)
        if target is not None:
            self.query_one(target).focus()

    def action_show_tab(self, tab: str) -> None:
        self.query_one("#tabs", Tabs).active = tab

    def action_filter(self) -> None:
        self.action_show_tab("runs")
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    @on(Input.Changed, "#filter")
    def filter_changed(self, event: Input.Changed) -> None:
        self.query_one(RunsTable).set_filter(event.value)

    @on(Input.Submitted, "#filter")
    def filter_submitted(self) -> None:
        self.query_one(RunsTable).focus()

    @on(FilterBox.Closed)
    def filter_closed(self) -> None:
        self.query_one(RunsTable).focus()

    def action_cycle_metric(self, by: int = 1) -> None:
        name = self.query_one(RunDetail).cycle_metric(by)
        self.notify(f"plotting {name}", timeout=2)

    def action_pick_metric(self) -> None:
        from rltui.tui.metric_picker import MetricPicker

        detail = self.query_one(RunDetail)
        self.push_screen(MetricPicker(detail.series_names(), detail.metric), self.metric_picked)

    def metric_picked(self, name: str | None) -> None:
        if name is not None:
            self.query_one(RunDetail).show_metric(name)
            self.query_one("#detail-tabs").active = "tab-plot"

    # ------------------------------------------------------------ palette and quitting

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        for command in COMMANDS:
            yield SystemCommand(command.title, command.help, _palette_callback(self, command.action))
        # Textual's own Keys and Quit would list Help and Quit twice (ours quit saying which jobs
        # keep running, and our help names every key)
        for command in super().get_system_commands(screen):
            if command.title not in TEXTUAL_DUPLICATES:
                yield command

    def action_quit_app(self) -> None:
        self.exit(quit_message(self.snapshot))

    def on_unmount(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()


class RunsView(Vertical):
    """The runs tab: filter box, runs table and the selected run's detail, stacked."""


def _palette_callback(app: App, action: str) -> Callable[[], Any]:
    return lambda: app.run_action(action)


def all_runs(snapshot: Snapshot) -> list[RunRecord]:
    return [*snapshot.runs.values(), *snapshot.legacy_runs.values()]


def running_jobs(snapshot: Snapshot | None) -> list[JobRecord]:
    """Active jobs whose keeper lives (an orphaned one is lost, whatever its state file says)."""
    return [j for j in snapshot.active_jobs if not j.orphaned] if snapshot else []


def quit_message(snapshot: Snapshot | None) -> str:
    active = running_jobs(snapshot)
    if not active:
        return "rltui: no jobs running."
    ids = ", ".join(j.id for j in active)
    return (f"rltui: {len(active)} job(s) still running and will keep running: {ids}\n"
            "       `rltui --batch status` shows them; `rltui` opens this view again.")


def make_app(root: Path, **kwargs: Any) -> RlTuiApp:
    """The one factory for the CLI, the tests and the benchmark."""
    return RlTuiApp(Path(root), **kwargs)


WATCH_ENV = "RLTUI_WATCH"  # "poll": poll the localfs every 2 s instead of inotify (auto on NFS & co)


def run_tui(root: Path) -> int:
    app = make_app(root, force_polling=os.environ.get(WATCH_ENV, "").strip().lower() == "poll")
    message = app.run()
    if message:
        print(message)
    return int(app.return_code or 0)
