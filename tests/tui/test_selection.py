"""The TUI never acts on the wrong run: sort and filter keep the selected run (and so the next
action's target), Escape closes the filter, the sort column is marked, confirmations name the
run, stop on a run means its training job, and at 80 columns the table and the footer's Help and Quit fit."""

from __future__ import annotations

import os
from pathlib import Path

from rltui.runs.localfs import Layout
from rltui.tui.runs_table import RunsTable
from tui_kit import (
    NOW, RUNS, Recorded, make_test_app, pilot_test, record_only_launcher, started, wait_until, write_job,
)


async def pick(pilot, name: str) -> RunsTable:
    """Move the cursor (arrow keys only) to `name`."""
    table = pilot.app.query_one(RunsTable)
    table.focus()
    for _ in range(len(table.shown)):
        if table.selected == name:
            break
        await pilot.press("down")
    assert table.selected == name
    return table


async def resume_form_run(pilot) -> str:
    await pilot.press("r")
    assert await wait_until(pilot, lambda: pilot.app.screen.__class__.__name__ == "ResumeForm")
    run = pilot.app.screen.context["run"]
    await pilot.press("escape")
    return run


@pilot_test
async def test_sorting_keeps_the_selected_run_and_the_next_actions_target(tui_root: Path) -> None:
    app = make_test_app(tui_root, launcher=record_only_launcher(Recorded([])))
    async with app.run_test(size=(160, 40)) as pilot:
        await started(pilot)
        table = await pick(pilot, RUNS["stopped"])
        orders = set()
        for _ in range(5):  # status, name, data, step, ... : the rows move, the choice does not
            await pilot.press("s")
            orders.add(tuple(table.shown))
            assert table.selected == RUNS["stopped"], table.sort_key
        assert len(orders) > 1  # the rows did move
        await pilot.press("S")
        assert table.selected == RUNS["stopped"]
        assert await resume_form_run(pilot) == RUNS["stopped"]


@pilot_test
async def test_the_sort_column_is_marked_in_the_header(tui_root: Path) -> None:
    app = make_test_app(tui_root)
    async with app.run_test(size=(160, 40)) as pilot:
        await started(pilot)
        table = app.query_one(RunsTable)
        labels = lambda: {str(c.label) for c in table.columns.values()}  # noqa: E731
        assert "age▲" in labels()
        await pilot.press("s", "s")  # age -> status -> run
        assert "run▲" in labels() and "age" in labels()
        await pilot.press("S")
        assert "run▼" in labels()


@pilot_test
async def test_a_filter_that_hides_the_choice_gives_it_back_when_cleared(tui_root: Path) -> None:
    app = make_test_app(tui_root, launcher=record_only_launcher(Recorded([])))
    async with app.run_test(size=(160, 40)) as pilot:
        await started(pilot)
        table = await pick(pilot, RUNS["stopped"])
        await pilot.press("slash", *"crash")
        assert await wait_until(pilot, lambda: table.shown == [RUNS["crashed"]])
        assert table.selected == RUNS["crashed"]  # the only run shown
        await pilot.press("enter")
        assert await resume_form_run(pilot) == RUNS["crashed"]  # what is shown is what is acted on
        await pilot.press("slash", "escape")
        assert await wait_until(pilot, lambda: len(table.shown) == 6)
        assert table.selected == RUNS["stopped"]
        assert await resume_form_run(pilot) == RUNS["stopped"]


@pilot_test
async def test_escape_closes_the_filter_and_the_next_key_goes_to_the_table(tui_root: Path) -> None:
    app = make_test_app(tui_root)
    async with app.run_test(size=(160, 40)) as pilot:
        await started(pilot)
        box = app.query_one("#filter")
        await pilot.press("slash", *"arith")
        assert box.display and box.has_focus
        await pilot.press("escape")
        assert not box.display and app.query_one(RunsTable).has_focus
        assert box.value == "" and len(app.query_one(RunsTable).shown) == 6
        await pilot.press("s")  # a key for the table now, not a letter in the box
        assert box.value == "" and app.query_one(RunsTable).sort_key == "status"


@pilot_test
async def test_stop_and_kill_confirmations_name_the_run(tui_root: Path) -> None:
    app = make_test_app(tui_root)
    async with app.run_test(size=(160, 40)) as pilot:
        await started(pilot)
        await pick(pilot, RUNS["running"])
        for key in ("x", "k"):
            await pilot.press(key)
            assert await wait_until(pilot, lambda: app.screen.__class__.__name__ == "Confirm")
            assert RUNS["running"] in app.screen.question, app.screen.question
            await pilot.press("n")


@pilot_test
async def test_stop_on_a_run_asks_about_its_training_job_not_the_newer_live_archive(tui_root: Path) -> None:
    # an --archive run has its live-archive job beside the training, started after it: `x` on the
    # run once asked to stop that one, leaving the training running
    layout = Layout(tui_root)
    write_job(layout, "20261121-100500-sync-dddd", "sync", RUNS["running"], "running",
              keeper_pid=os.getpid(), created=NOW - 60)
    app = make_test_app(tui_root)
    async with app.run_test(size=(160, 40)) as pilot:
        await started(pilot)
        await pick(pilot, RUNS["running"])
        await pilot.press("x")
        assert await wait_until(pilot, lambda: app.screen.__class__.__name__ == "Confirm")
        assert app.screen.question.startswith("Stop job 20261121-100000-train-aaaa"), app.screen.question
        await pilot.press("n")
        await pilot.press("2")  # on the Jobs tab the job under the cursor is the one asked about
        pane = app.query_one("JobsPane")
        assert await wait_until(pilot, lambda: pane.selected is not None)
        while pane.selected.id != "20261121-100500-sync-dddd":
            await pilot.press("down")
        await pilot.press("x")
        assert await wait_until(pilot, lambda: app.screen.__class__.__name__ == "Confirm")
        assert app.screen.question.startswith("Stop job 20261121-100500-sync-dddd"), app.screen.question


@pilot_test
async def test_at_80_columns_the_table_fits_and_the_footer_shows_help_and_quit(tui_root: Path) -> None:
    app = make_test_app(tui_root)
    async with app.run_test(size=(80, 24)) as pilot:
        await started(pilot)
        table = app.query_one(RunsTable)
        assert table.virtual_size.width <= table.size.width  # no sideways scrolling
        assert {"status", "name", "step", "reward", "eval", "age"} <= set(table.column_keys)
        from textual.widgets import Footer

        footer = app.query_one(Footer)
        shown = [w for w in footer.query("FooterKey") if w.region.right <= 80 and w.region.width]
        labels = {w.description for w in shown}
        assert {"Help", "Quit"} <= labels, labels
        await pilot.press("slash", *"crash", "enter")  # the filter line takes a row: still no sideways scroll
        await pilot.pause()
        assert table.virtual_size.width <= table.size.width


@pilot_test
async def test_the_palette_lists_help_and_quit_once_each(tui_root: Path) -> None:
    app = make_test_app(tui_root)
    async with app.run_test(size=(160, 40)) as pilot:
        await started(pilot)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Keys" not in titles and "Quit" not in titles
        assert titles.count("Help") == 1 and titles.count("Quit rltui") == 1


@pilot_test
async def test_resuming_an_older_checkpoint_says_it_makes_a_new_run(tui_root: Path) -> None:
    app = make_test_app(tui_root, launcher=record_only_launcher(Recorded([])))
    async with app.run_test(size=(160, 40)) as pilot:
        await started(pilot)
        await pick(pilot, RUNS["completed"])
        detail = app.query_one("RunDetail")
        assert await wait_until(pilot, lambda: detail.run is not None and detail.run.name == RUNS["completed"])
        await pilot.press("r")
        assert await wait_until(pilot, lambda: app.screen.__class__.__name__ == "ResumeForm")
        assert "NEW run" not in app.screen.heading  # the newest checkpoint: the run itself goes on
        await pilot.press("escape")
        app.query_one("#checkpoints").focus()
        await pilot.press("down", "r")  # step 20 of 10, 20, 30
        assert await wait_until(pilot, lambda: app.screen.__class__.__name__ == "ResumeForm")
        assert "from step 20: makes a NEW run" in app.screen.heading


@pilot_test
async def test_a_refresh_that_reorders_the_rows_keeps_the_selected_run(tui_root: Path) -> None:
    app = make_test_app(tui_root)
    async with app.run_test(size=(160, 40)) as pilot:
        await started(pilot)
        table = await pick(pilot, RUNS["stopped"])
        await pilot.press("s", "s")  # sorted by run name
        runs = list(table.runs.values())
        table.set_runs(list(reversed(runs)))  # what a refresh hands the table
        await pilot.pause()
        assert table.selected == RUNS["stopped"]
        assert await resume_form_run(pilot) == RUNS["stopped"]
