"""A small line plot drawn with braille dots: one metric per step, no plotting dependency.

Usage:
    plot = MetricsPlot(id="plot")
    plot.show_series(Series("reward", [(1, 0.1), (2, 0.4)]))

textual-plotext pins an old plotext (REFERENCE.md); a braille line chart is sixty lines of our
own and keeps the dependency set small. Each character cell holds 2x4 dots, so an 80-column
terminal still shows ~140 distinct steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from rltui.text import clean

_BRAILLE_BASE = 0x2800
# dot bit for (column 0..1, row 0..3) inside one braille cell
_DOT = {(0, 0): 0x01, (0, 1): 0x02, (0, 2): 0x04, (0, 3): 0x40,
        (1, 0): 0x08, (1, 1): 0x10, (1, 2): 0x20, (1, 3): 0x80}


@dataclass(frozen=True)
class Series:
    """Points (step, value) of one metric, named for the title."""

    name: str
    points: list[tuple[float, float]] = field(default_factory=list)


def _finite(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]


def _line(x0: int, y0: int, x1: int, y1: int) -> list[tuple[int, int]]:
    """Dots of a straight line between two dots (Bresenham)."""
    dots = []
    dx, dy = abs(x1 - x0), -abs(y1 - y0)
    sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
    err = dx + dy
    while True:
        dots.append((x0, y0))
        if x0 == x1 and y0 == y1:
            return dots
        e2 = 2 * err
        if e2 >= dy:
            err += dy
            x0 += sx
        if e2 <= dx:
            err += dx
            y0 += sy


def braille_lines(points: list[tuple[float, float]], width: int, height: int,
                  y_range: tuple[float, float] | None = None) -> list[str]:
    """`height` strings of `width` braille characters drawing the points joined by lines."""
    width, height = max(1, width), max(1, height)
    cells = [[0] * width for _ in range(height)]
    points = sorted(_finite(points))
    if points:
        xs = [p[0] for p in points]
        lo, hi = y_range or (min(p[1] for p in points), max(p[1] for p in points))
        x_lo, x_span = xs[0], (xs[-1] - xs[0]) or 1.0
        y_span = (hi - lo) or 1.0
        max_x, max_y = width * 2 - 1, height * 4 - 1

        def dot(p: tuple[float, float]) -> tuple[int, int]:
            x = round((p[0] - x_lo) / x_span * max_x) if len(points) > 1 else max_x // 2
            y = max_y - round((p[1] - lo) / y_span * max_y) if hi != lo else max_y // 2
            return x, min(max(y, 0), max_y)

        dots = [dot(p) for p in points]
        path = dots if len(dots) == 1 else [d for a, b in zip(dots, dots[1:]) for d in _line(*a, *b)]
        for x, y in path:
            cells[y // 4][x // 2] |= _DOT[(x % 2, y % 4)]
    return ["".join(chr(_BRAILLE_BASE + c) for c in row) for row in cells]


def _label(v: float) -> str:
    if v == 0 or 0.01 <= abs(v) < 10000:
        return f"{v:.3g}"
    return f"{v:.1e}"


def render_plot(series: Series, width: int, height: int) -> Text:
    """Title line, the chart with y labels on the left, and the step range below."""
    text = Text(no_wrap=True, overflow="crop")
    points = sorted(_finite(series.points))
    name = clean(series.name)  # a metric's name comes from the train log
    if not points:
        text.append(f"{name}: no data yet", style="dim")
        return text
    ys = [p[1] for p in points]
    lo, hi = min(ys), max(ys)
    last = points[-1]
    text.append(name, style="bold")
    text.append(f"  last {_label(last[1])} @ step {int(last[0])}  min {_label(lo)}  max {_label(hi)}\n")
    gutter = max(len(_label(lo)), len(_label(hi))) + 1
    chart_h = max(1, height - 2)
    rows = braille_lines(points, width - gutter, chart_h, (lo, hi))
    for i, row in enumerate(rows):
        label = _label(hi) if i == 0 else _label(lo) if i == chart_h - 1 else ""
        text.append(label.rjust(gutter - 1) + "│", style="dim")
        text.append(row + "\n")
    first_step, last_step = f"step {int(points[0][0])}", f"{int(last[0])}"
    pad = max(1, width - gutter - len(first_step) - len(last_step))
    text.append(" " * gutter + first_step + " " * pad + last_step, style="dim")
    return text


class MetricsPlot(Widget):
    """Draws one Series; `show_series` swaps it."""

    DEFAULT_CSS = """
    MetricsPlot { height: 1fr; min-height: 4; color: $accent; }
    """

    series: reactive[Series] = reactive(Series("reward"), layout=False)

    def show_series(self, series: Series) -> None:
        self.series = series

    def render(self) -> Text:
        return render_plot(self.series, self.content_size.width, self.content_size.height)
