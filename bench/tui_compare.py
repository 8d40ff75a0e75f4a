"""The compare screen with 20 runs against the run detail's single-run plot, in a headless app.

Usage:
    .venv/bin/python bench/compare_scale.py WORKDIR --phase tui     (calls measure_tui)

Both are timed the way a user meets them, on the same localfs, at 160x48, from the request to the
frame that shows the curve(s) (a callback after that refresh): the single-run plot reads the run's
train log (the run detail's MetricsHistory) and draws one series; the compare screen is pushed,
reads 20 runs' series from the metrics store in its worker and draws them overlaid with the
summary table (the app's installed compare screen, shown again: `c` with those runs marked).
Medians of `repeat` runs, each with runs not shown before; the first compare (which composes
the screen) is measured apart.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path


async def _after_refresh(app) -> None:  # noqa: ANN001
    done = asyncio.Event()
    app.call_after_refresh(done.set)
    await done.wait()


async def _until(condition, timeout: float = 60.0) -> None:  # noqa: ANN001
    deadline = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > deadline:
            raise TimeoutError("the screen did not draw in time")
        await asyncio.sleep(0.002)


async def measure_tui(root: Path, repeat: int = 5) -> dict[str, float]:
    from rltui.gpu import FakeSampler, GpuSnapshot
    from rltui.tui.app import make_app
    from rltui.tui.runs_table_store import StoreRunsTable
    from rltui.tui.run_detail import RunDetail

    app = make_app(root, watch=False, sampler=FakeSampler(GpuSnapshot(gpus=[], reason="bench")))
    single, multi, one = [], [], []
    async with app.run_test(size=(160, 48)) as pilot:
        await _until(lambda: app.loaded and app.hidden_mounted and app.store_passes > 0, 600)
        names = sorted(app.snapshot.runs)
        n = len(names)
        detail = app.query_one(RunDetail)
        table = app.query_one(StoreRunsTable)
        app.query_one("#detail-tabs").active = "tab-plot"
        await pilot.pause(0.2)
        for i in range(repeat):
            run = app.snapshot.run(names[(100 + i) % n])
            t0 = time.perf_counter()
            detail.show_run(run)
            await _until(lambda: detail.history is not None and detail.history.points.get("reward_mean"))
            await _after_refresh(app)
            single.append(time.perf_counter() - t0)
        first = []
        for i in range(repeat + 1):
            group = [names[(200 + 20 * i + k) % n] for k in range(min(20, n))]
            for runs, out in ((group, multi if i else first), ([names[(600 + i) % n]], one)):
                table.marks = dict.fromkeys(runs)
                t0 = time.perf_counter()
                app.action_compare()  # what `c` does
                await _until(lambda: getattr(app.screen, "drawn_metric", None) == "reward_mean")
                out.append(time.perf_counter() - t0)
                app.pop_screen()
                await pilot.pause(0.05)
    s, m, o = statistics.median(single), statistics.median(multi), statistics.median(one)
    return {"tui_single_plot_s": s, "tui_compare20_s": m, "tui_compare1_s": o,
            "tui_compare20_over_single": m / s, "tui_compare20_first_s": first[0], "tui_repeat": repeat}
