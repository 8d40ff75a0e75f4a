"""The TUI's GPU pane against real NVML: what a GPU box shows, as text and as an SVG screenshot.

Usage:
    python bench/tui_gpu_pane.py OUT_DIR [--seconds 10]

Opens the app headless (100x30) on an empty localfs with the real sampler (rltui.gpu, NVML),
switches to the GPU tab, lets it sample for `--seconds`, and writes OUT_DIR/gpu_pane.txt (the
pane as plain text plus the raw snapshot as JSON) and OUT_DIR/gpu_pane.svg. Also records how many
samples were taken, which must stay at or under two a second.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class CountingSampler:
    def __init__(self) -> None:
        from rltui.gpu import NvmlSampler

        self.inner = NvmlSampler()
        self.calls = 0

    def sample(self):
        self.calls += 1
        return self.inner.sample()


async def run(out: Path, seconds: float) -> None:
    from rich.console import Console

    from rltui.tui.app import make_app
    from rltui.tui.gpu_pane import render_snapshot

    sampler = CountingSampler()
    root = Path(tempfile.mkdtemp(prefix="tui_gpu_")) / "localfs"
    app = make_app(root, sampler=sampler, gpu_interval_s=0.5)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("3")
        await pilot.pause(1.0)
        start, calls = time.monotonic(), sampler.calls
        await pilot.pause(seconds)
        elapsed, calls = time.monotonic() - start, sampler.calls - calls
        app.save_screenshot(str(out / "gpu_pane.svg"))
        snapshot = app.gpu_snapshot
    text = io.StringIO()
    Console(file=text, width=100, color_system=None).print(render_snapshot(snapshot))
    rate = calls / elapsed
    report = (f"{text.getvalue()}\nsamples: {calls} in {elapsed:.1f} s = {rate:.2f}/s "
              f"(limit 2/s)\n\nraw snapshot:\n{json.dumps(snapshot.to_json() if snapshot else None, indent=1)}\n")
    (out / "gpu_pane.txt").write_text(report)
    print(report)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    asyncio.run(run(args.out, args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
