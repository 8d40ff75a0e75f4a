"""The open app follows the disk: a checkpoint, an eval result or a job written by someone else
appears without a key press; filtering and sorting the runs table; quitting says what keeps running."""

from __future__ import annotations

import errno
from pathlib import Path

from rltui.runs.localfs import Layout
from rltui.tui.runs_table import RunsTable
from rltui.tui.watcher import RootWatcher
from tui_kit import (
    NOW, RUNS, make_test_app, pilot_test, started, wait_until, write_checkpoint, write_eval, write_job,
)


def latest_shown(app, run: str):
    table = app.query_one(RunsTable)
    return table.runs[run].latest_complete if run in table.runs else None


@pilot_test
async def test_a_checkpoint_written_by_the_test_appears_in_the_open_app(tui_root: Path) -> None:
    app = make_test_app(tui_root, watch=True)
    async with app.run_test(size=(160, 30)) as pilot:  # wide: the ckpt column is shown
        await started(pilot)
        assert await wait_until(pilot, lambda: app.watcher is not None and app.watcher.mode.value == "inotify")
        run = RUNS["running"]
        assert latest_shown(app, run) == 10
        write_checkpoint(Layout(tui_root), run, 11, 40)
        assert await wait_until(pilot, lambda: latest_shown(app, run) == 11)
        assert str(app.query_one(RunsTable).get_cell(run, "ckpt")) == "11"


@pilot_test
async def test_the_selected_runs_checkpoints_and_eval_results_update_live(tui_root: Path) -> None:
    app = make_test_app(tui_root, watch=True)
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot)
        run = RUNS["stopped"]
        await pilot.press("slash", *run, "enter")
        assert await wait_until(pilot, lambda: app.query_one("RunDetail").run is not None
                                and app.query_one("RunDetail").run.name == run)
        write_eval(Layout(tui_root), run, "arith", {15: 0.55})
        table = app.query_one("#checkpoints")
        assert await wait_until(pilot, lambda: "arith 55.0%" in str(table.get_row("15")[3]))


@pilot_test
async def test_a_new_job_appears_in_the_jobs_pane_and_the_status_bar(tui_root: Path) -> None:
    app = make_test_app(tui_root, watch=True)
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot)
        await pilot.press("2")
        assert await wait_until(pilot, lambda: app.watcher is not None)
        write_job(Layout(tui_root), "20261124-000000-eval-dddd", "eval", RUNS["unknown"], "succeeded")
        pane = app.query_one("JobsPane")
        assert await wait_until(pilot, lambda: "20261124-000000-eval-dddd" in pane.jobs)
        assert "20261124-000000-eval-dddd" in pane.table.shown


@pilot_test
async def test_exhausted_inotify_falls_back_to_polling_and_says_so(tui_root: Path, monkeypatch) -> None:
    def exhausted() -> object:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    original = RootWatcher.__init__

    def patched(self, *args, **kwargs):
        kwargs.update(observer_factory=exhausted, poll_interval_s=0.2)
        original(self, *args, **kwargs)

    monkeypatch.setattr(RootWatcher, "__init__", patched)
    app = make_test_app(tui_root, watch=True)
    async with app.run_test(size=(120, 30)) as pilot:
        await started(pilot)
        bar = app.query_one("StatusBar")
        assert await wait_until(pilot, lambda: "ENOSPC" in bar.watch_mode)
        assert "polling" in str(bar.render())
        write_checkpoint(Layout(tui_root), RUNS["running"], 12, 40)
        assert await wait_until(pilot, lambda: latest_shown(app, RUNS["running"]) == 12)


@pilot_test
async def test_filter_by_status_name_or_dataset(tui_root: Path) -> None:
    app = make_test_app(tui_root)
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot)
        table = app.query_one(RunsTable)
        assert len(table.shown) == 6  # five runs and one legacy run
        await pilot.press("slash", *"crashed")
        assert table.shown == [RUNS["crashed"]]
        await pilot.press("ctrl+u", *"gsm8k")
        assert table.shown == [RUNS["crashed"]]
        await pilot.press("ctrl+u", *"arith 11-2")
        assert sorted(table.shown) == sorted(RUNS[s] for s in ("completed", "running", "stopped", "unknown"))
        await pilot.press("ctrl+u", *"ARITH stopped")
        assert table.shown == [RUNS["stopped"]]
        await pilot.press("ctrl+u", "enter")
        assert len(table.shown) == 6


@pilot_test
async def test_sort_cycles_columns_and_reverses(tui_root: Path) -> None:
    app = make_test_app(tui_root)
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot)
        table = app.query_one(RunsTable)
        assert table.shown[0] == RUNS["running"]  # default: most recent progress first
        for _ in range(2):  # age -> status -> name
            await pilot.press("s")
        assert table.sort_key == "name"
        assert table.shown == sorted(table.shown)
        await pilot.press("S")
        assert table.shown == sorted(table.shown, reverse=True)


@pilot_test
async def test_quitting_says_which_jobs_keep_running(tui_root: Path) -> None:
    app = make_test_app(tui_root)
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot)
        await pilot.press("q")
    assert "1 job(s) still running and will keep running: 20261121-100000-train-aaaa" in app.return_value


@pilot_test
async def test_help_and_full_screen_log_open_and_close_with_the_keyboard(tui_root: Path) -> None:
    app = make_test_app(tui_root)
    async with app.run_test(size=(80, 24)) as pilot:
        await started(pilot)
        await pilot.press("question_mark")
        assert type(app.screen).__name__ == "HelpScreen"
        await pilot.press("escape", "2")
        await pilot.pause(0.3)
        await pilot.press("l")
        assert type(app.screen).__name__ == "LogScreen"
        assert await wait_until(pilot, lambda: app.screen.query_one("LogPane").line_count > 0)
        await pilot.press("escape")
        assert type(app.screen).__name__ != "LogScreen"


@pilot_test
async def test_the_plot_cycles_through_train_metrics_and_eval_accuracy(tui_root: Path) -> None:
    app = make_test_app(tui_root)
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot)
        await pilot.press("slash", *RUNS["completed"], "enter")
        detail = app.query_one("RunDetail")
        assert await wait_until(pilot, lambda: detail.history is not None and detail.history.points)
        names = detail.series_names()
        assert await wait_until(pilot, lambda: app.query_one("MetricsPlot").series.name == names[0])
        assert names[:2] == ["reward_mean", "loss"] and names[-1] == "eval accuracy arith"
        seen = []
        for _ in names:
            seen.append(app.query_one("MetricsPlot").series.name)
            await pilot.press("m")
        assert seen == names
        assert app.query_one("MetricsPlot").series.points[0] == (1.0, round(0.1 + 0.8 / 30, 4))


def test_the_quick_first_screen_lists_every_run_from_status_json_alone(tui_root: Path) -> None:
    from rltui.tui.live import quick_runs

    runs = {r.name: r for r in quick_runs(Layout(tui_root), NOW)}
    assert sorted(runs) == sorted(RUNS.values())
    assert runs[RUNS["completed"]].status.value == "completed"
    assert runs[RUNS["stopped"]].status.value == "stopped"
    assert runs[RUNS["unknown"]].status.value == "unknown"
    assert (runs[RUNS["running"]].step, runs[RUNS["running"]].target_step) == (12, 40)


@pilot_test
async def test_switching_tabs_in_the_first_moments_waits_for_the_lazy_panes(tui_root: Path) -> None:
    app = make_test_app(tui_root)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("3")  # before the hidden panes are mounted
        assert await wait_until(pilot, lambda: app.current_view == "gpus-view")
        await pilot.press("2")
        assert await wait_until(pilot, lambda: app.current_view == "jobs-view")


@pilot_test
async def test_a_new_status_of_the_top_run_redraws_its_row_not_the_table(tui_root: Path) -> None:
    import dataclasses

    app = make_test_app(tui_root)
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot)
        table = app.query_one(RunsTable)
        run = table.runs[table.shown[0]]  # sorted by age: the most recent progress first
        rebuilds = table.generation
        table.update_run(dataclasses.replace(run, step=(run.step or 0) + 1, updated=run.updated + 5), run.name)
        assert table.generation == rebuilds and table.shown[0] == run.name
        assert str(table.get_cell(run.name, "step")).startswith(str((run.step or 0) + 1))
        older = table.runs[table.shown[1]]  # it moves to the top: the table is sorted again
        table.update_run(dataclasses.replace(older, updated=run.updated + 10), older.name)
        assert table.generation == rebuilds + 1 and table.shown[0] == older.name


@pilot_test
async def test_the_status_rule_is_applied_again_on_a_timer(tui_root: Path, monkeypatch) -> None:
    import rltui.tui.app as app_module

    monkeypatch.setattr(app_module, "RECLASSIFY_S", 0.05)
    app = make_test_app(tui_root)  # an index passed in: no quick first list
    calls = []
    app.reclassify = lambda: calls.append(1)
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot)
        assert await wait_until(pilot, lambda: len(calls) >= 2)


@pilot_test
async def test_a_snapshot_that_arrives_while_the_app_closes_is_dropped_not_raised(tui_root: Path) -> None:
    # the index worker's last message can land after the runs table is gone (seen once in CI:
    # NoMatches for RunsTable, raised from run_test's exit)
    import threading

    from rltui.tui.messages import QuickListReady, SnapshotReady

    app = make_test_app(tui_root)
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot)
        await app.query_one(RunsTable).remove()
        app.post_message(SnapshotReady(app.snapshot))
        app.post_message(QuickListReady([], threading.Event()))
        app.loaded = False
        app.post_message(QuickListReady([], threading.Event()))
        await pilot.pause()
        assert app.is_running and not app.query(RunsTable)
