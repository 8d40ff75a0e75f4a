"""The compare screen with 20 runs against the run detail's single-run plot, in a headless app.

Usage:
    .venv/bin/python bench/compare_scale.py WORKDIR --phase tui     (calls measure_tui)

Both are timed the way a user meets them, on the same localfs, at 160x48, from the request to the
frame that shows the curve(s) (a callback after that refresh): the single-run plot reads the run's
train log (the run detail's MetricsHistory) and draws one series; the compare screen is pushed,
reads 20 runs' series from the metrics store in its worker and draws them overlaid with the
summary table (the app's installed compare screen, shown again: `c` with those runs marked).
Medians of `repeat` runs, each with runs not shown before; the first compare (which composes
the screen) is measured apart. Wall time and this process's CPU time (the machine is shared:
the CPU time does not count other people's work) from the request to the frame.
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


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def measure_tui(root: Path, repeat: int = 15) -> dict[str, float]:
    from rltui.gpu import FakeSampler, GpuSnapshot
    from rltui.tui.app import make_app
    from rltui.tui.run_detail import RunDetail
    from rltui.tui.runs_table_store import StoreRunsTable

    app = make_app(root, watch=False, sampler=FakeSampler(GpuSnapshot(gpus=[], reason="bench")))
    wall: dict[str, list[float]] = {"single": [], "compare20": [], "compare1": [], "first": []}
    cpu: dict[str, list[float]] = {k: [] for k in wall}
    async with app.run_test(size=(160, 48)) as pilot:
        await _until(lambda: app.loaded and app.hidden_mounted and app.store_passes > 0
                     and not app._store_running, 600)
        names = sorted(app.snapshot.runs)
        n = len(names)
        detail = app.query_one(RunDetail)
        table = app.query_one(StoreRunsTable)
        app.query_one("#detail-tabs").active = "tab-plot"
        await pilot.pause(0.5)

        async def single(run_name: str) -> None:
            detail.show_run(app.snapshot.run(run_name))
            await _until(lambda: detail.history is not None and detail.history.points.get("reward_mean"))
            await _after_refresh(app)

        async def compare(runs: list[str]) -> None:
            table.marks = dict.fromkeys(runs)
            app.action_compare()  # what `c` does
            await _until(lambda: getattr(app.screen, "drawn_metric", None) == "reward_mean")

        async def timed(kind: str, step) -> None:  # noqa: ANN001
            t0, c0 = time.perf_counter(), time.process_time()
            await step
            wall[kind].append(time.perf_counter() - t0)
            cpu[kind].append(time.process_time() - c0)
            if app.screen is not app.screen_stack[0]:
                app.pop_screen()
            await pilot.pause(0.5)  # the runs screen drawn again before the next one

        await timed("first", compare([names[k % n] for k in range(180, 200)]))  # composes the screen
        for i in range(repeat):  # interleaved, each with runs not shown before
            await timed("single", single(names[(100 + i) % n]))
            await timed("compare20", compare([names[(200 + 20 * i + k) % n] for k in range(min(20, n))]))
            await timed("compare1", compare([names[(700 + i) % n]]))
    out = {f"tui_{k}_s": _median(v) for k, v in wall.items()}
    out.update({f"tui_{k}_cpu_s": _median(v) for k, v in cpu.items()})
    out["tui_compare20_over_single"] = out["tui_compare20_s"] / out["tui_single_s"]
    out["tui_compare20_over_single_cpu"] = out["tui_compare20_cpu_s"] / out["tui_single_cpu_s"]
    out["tui_repeat"] = repeat
    return out
