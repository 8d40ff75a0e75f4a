"""Marks, the compare screen, filter expressions and the best-reward column (the metrics store in
the TUI), driven with Pilot; screenshots of the compare screen at 80x24 and 160x48."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tui_kit import RUNS, make_test_app, pilot_test, started, wait_until

from rltui.runs import localfs
from rltui.runs.compare import differing_config
from rltui.runs.store import Store, store_path
from rltui.tui.compare_screen import CompareScreen
from rltui.tui.overlay_plot import OverlayPlot
from rltui.tui.runs_table_store import BEST_REWARD, StoreRunsTable

SIZES = [(80, 24), (160, 48)]


async def store_ready(pilot) -> StoreRunsTable:
    await started(pilot)
    app = pilot.app
    assert await wait_until(pilot, lambda: app.store_passes > 0)
    return app.query_one(StoreRunsTable)


async def filter_by(pilot, text: str) -> None:
    await pilot.press("slash", *text, "enter")


@pilot_test
async def test_space_marks_runs_and_c_overlays_their_curves(tui_root: Path) -> None:
    app = make_test_app(tui_root, store=True)
    async with app.run_test(size=(160, 48)) as pilot:
        table = await store_ready(pilot)
        first, second = table.shown[0], table.shown[1]
        await pilot.press("space", "space")  # marks the run under the cursor, then the next one
        assert table.marked_runs() == [first, second]
        assert str(table.rows[first].label) == "●" and table.rows[table.shown[2]].label is None
        await pilot.press("c")
        screen = app.screen
        assert isinstance(screen, CompareScreen) and screen.runs == [first, second]
        assert await wait_until(pilot, lambda: screen.drawn_metric is not None)
        title, series = screen.query_one(OverlayPlot).data
        assert title == "reward_mean" and [s.name for s in series] == [first, second]
        assert all(len(s.points) > 0 for s in series)
        assert [row[0] for row in screen.legend_rows] == [first, second]
        labels = screen.legend_header
        assert labels[:8] == ["", "run", "best", "@step", "min", "max", "last", "@step"]
        with Store.open(tui_root) as store:
            differing = differing_config(store.config([first, second]))
        assert differing and labels[8:] == list(differing)[:6]
        await pilot.press("m")
        assert await wait_until(pilot, lambda: screen.drawn_metric not in (None, "reward_mean"))
        await pilot.press("escape")
        assert not isinstance(app.screen, CompareScreen)
        await pilot.press("minus")
        assert table.marked_runs() == []


@pilot_test
async def test_an_expression_filters_and_plus_marks_what_it_shows(tui_root: Path) -> None:
    app = make_test_app(tui_root, store=True)
    async with app.run_test(size=(160, 48)) as pilot:
        table = await store_ready(pilot)
        await filter_by(pilot, "status = 'crashed' or status in ('stopped')")
        assert await wait_until(pilot, lambda: table.expression_names is not None)
        assert sorted(table.shown) == sorted([RUNS["crashed"], RUNS["stopped"]])
        await pilot.press("plus")
        assert sorted(table.marked_runs()) == sorted([RUNS["crashed"], RUNS["stopped"]])
        table.set_filter("")  # back to every run; the marks stay
        assert await wait_until(pilot, lambda: len(table.shown) == len(table.runs))
        assert len(table.marked_runs()) == 2


@pilot_test
async def test_a_bad_expression_falls_back_to_the_word_filter(tui_root: Path) -> None:
    app = make_test_app(tui_root, store=True)
    async with app.run_test(size=(160, 48)) as pilot:
        table = await store_ready(pilot)
        await filter_by(pilot, "bset(loss) < 1")
        assert await wait_until(pilot, lambda: table.expression_error is not None)
        assert "unknown function 'bset'" in table.expression_error
        assert table.expression_names is None and table.filter_text == "bset(loss) < 1"
        table.set_filter("crashed")  # plain words: the substring filter, no query at all
        assert table.expression is None and table.shown == [RUNS["crashed"]]


@pilot_test
async def test_the_best_reward_column_comes_from_the_store(tui_root: Path) -> None:
    app = make_test_app(tui_root, store=True)
    async with app.run_test(size=(160, 48)) as pilot:
        table = await store_ready(pilot)
        with Store.open(tui_root) as store:
            best = store.summary("reward_mean")[RUNS["completed"]].best
        assert await wait_until(pilot, lambda: BEST_REWARD in table.columns)
        cell = table.get_cell(RUNS["completed"], BEST_REWARD)
        assert str(cell) == f"{best:.3g}" or float(str(cell)) == pytest.approx(best, rel=1e-2)


@pilot_test
async def test_the_store_deleted_while_the_tui_runs_is_rebuilt(tui_root: Path) -> None:
    app = make_test_app(tui_root, store=True)
    async with app.run_test(size=(160, 48)) as pilot:
        await store_ready(pilot)
        path = store_path(tui_root)
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        run = RUNS["running"]
        localfs.append_jsonl(localfs.Layout(tui_root).train_log(run), {"step": 99, "reward_mean": 0.99})
        passes = app.store_passes
        app.store_changed(None)
        assert await wait_until(pilot, lambda: app.store_passes > passes and path.exists())
        with Store.open(tui_root) as store:
            assert set(RUNS.values()) <= set(store.run_names())
            assert store.summary("reward_mean")[run].last_step == 99
        await pilot.press("c")  # the selected run alone: the compare screen reads the new store
        screen = app.screen
        assert await wait_until(pilot, lambda: screen.drawn_metric is not None)


def _compare_three():
    async def run_before(pilot) -> None:
        await store_ready(pilot)
        await pilot.press("space", "space", "space", "c")
        await wait_until(pilot, lambda: getattr(pilot.app.screen, "drawn_metric", None) is not None)
        await pilot.pause(0.3)

    return run_before


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "160x48"])
def test_compare_screen_of_three_runs(snap_compare, snapshot_root, size) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(store_path(snapshot_root)) + suffix).unlink(missing_ok=True)
    app = make_test_app(snapshot_root, store=True)
    assert snap_compare(app, terminal_size=size, run_before=_compare_three())
