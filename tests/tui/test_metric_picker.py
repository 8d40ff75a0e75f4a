"""Metric picking: `M` steps back (eval accuracy is one key away from the first metric), `p` opens
a list to choose from."""

from __future__ import annotations

from pathlib import Path

from tui_kit import RUNS, make_test_app, pilot_test, started, wait_until


async def completed_run(pilot):
    app = pilot.app
    await pilot.press("slash", *RUNS["completed"], "enter")
    detail = app.query_one("RunDetail")
    assert await wait_until(pilot, lambda: detail.history is not None and detail.history.points)
    plot = app.query_one("MetricsPlot")
    names = detail.series_names()
    assert await wait_until(pilot, lambda: plot.series.name == names[0])
    return names, plot


@pilot_test
async def test_shift_m_steps_back_to_the_last_metric(tui_root: Path) -> None:
    app = make_test_app(tui_root)
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot)
        names, plot = await completed_run(pilot)
        await pilot.press("M")
        assert plot.series.name == names[-1] == "eval accuracy arith"
        await pilot.press("m")
        assert plot.series.name == names[0]


@pilot_test
async def test_p_lists_the_metrics_and_plots_the_chosen_one(tui_root: Path) -> None:
    app = make_test_app(tui_root)
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot)
        names, plot = await completed_run(pilot)
        await pilot.press("p")
        assert await wait_until(pilot, lambda: app.screen.__class__.__name__ == "MetricPicker")
        listed = app.screen.query_one("#metric-list")
        assert [str(listed.get_option_at_index(i).prompt) for i in range(listed.option_count)] == names
        await pilot.press("end", "enter")
        assert await wait_until(pilot, lambda: app.screen.__class__.__name__ != "MetricPicker")
        assert plot.series.name == "eval accuracy arith"
        assert app.query_one("#detail-tabs").active == "tab-plot"
