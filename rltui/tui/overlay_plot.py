"""Several runs' curves of one metric in one braille chart, told apart by colour and by marker.

Usage:
    plot = OverlayPlot(id="compare-plot")
    plot.show("reward_mean", [Series("run_A", [(1, 0.1), (2, 0.4)]), Series("run_B", [...])])
    marker_of(i)                       # the marker of the i-th series (the legend shows the same)

Why ours and not plotext: the single-run plot (plot.py) is already braille lines of our own, and
what the compare view adds is small: shared axes, a colour per series and a marker glyph stamped
along each curve, so runs stay distinguishable on a monochrome terminal or with NO_COLOR. plotext
draws into a global figure (one per process: not safe from a worker thread, and the run detail's
plot would share it) and textual-plotext pins an old plotext (REFERENCE.md); its output would be
parsed back from ANSI text into a widget. docs/ARCHITECTURE.md ("Compare runs") says more.
"""

from __future__ import annotations

import math

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from rltui.tui.plot import _DOT, Series, _label, _line

_BRAILLE_BASE = 0x2800
MARKERS = "●▲■◆✚✖○△□◇★☆▼▽◀▶♦♣♠♥"
COLOURS = ["cyan", "magenta", "yellow", "green", "red", "blue", "bright_cyan", "bright_magenta",
           "bright_yellow", "bright_green", "bright_red", "bright_blue", "white", "orange1",
           "purple", "spring_green1", "deep_pink1", "gold1", "turquoise2", "salmon1"]
MARKS_PER_CURVE = 5  # marker glyphs stamped along each curve, spread apart


def marker_of(i: int) -> str:
    return MARKERS[i % len(MARKERS)]


def colour_of(i: int) -> str:
    return COLOURS[i % len(COLOURS)]


def _clean(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Finite points in step order (the store's series already are: then no sort)."""
    out = [(x, y) for x, y in points if math.isfinite(y) and math.isfinite(x)]
    if any(a[0] > b[0] for a, b in zip(out, out[1:])):
        out.sort()
    return out


# _SPAN[p][a][b]: the dot bits of column half p (0 left, 1 right) from dot row a to b of a cell
_SPAN = [[[sum(_DOT[(p, k)] for k in range(a, b + 1)) for b in range(4)] for a in range(4)]
         for p in range(2)]


def _fill(bits: list[list[int]], owner: list[list[int]], i: int, x: int, y0: int, y1: int) -> None:
    """Dots (x, y0..y1) of one dot column, a cell at a time."""
    if y0 > y1:
        y0, y1 = y1, y0
    col, half = x >> 1, x & 1
    for row in range(y0 >> 2, (y1 >> 2) + 1):
        a = y0 - row * 4 if row == y0 >> 2 else 0
        b = y1 - row * 4 if row == y1 >> 2 else 3
        bits[row][col] |= _SPAN[half][a][b]
        owner[row][col] = i


def _plot_curve(bits: list[list[int]], owner: list[list[int]], i: int,
                columns: dict[int, list[int]]) -> None:
    """A curve given per dot column as [lowest y, highest y, first y, last y] (x ascending):
    each column's span, joined to the column before (a line when columns were skipped)."""
    prev: tuple[int, int] | None = None
    for x, (y_min, y_max, y_first, y_last) in columns.items():
        if prev is not None:
            if x - prev[0] <= 1:
                y_min, y_max = min(y_min, prev[1]), max(y_max, prev[1])
            else:
                for lx, ly in _line(prev[0], prev[1], x, y_first):
                    _fill(bits, owner, i, lx, ly, ly)
        _fill(bits, owner, i, x, y_min, y_max)
        prev = (x, y_last)


def render_overlay(title: str, series: list[Series], width: int, height: int) -> Text:
    """Title line, the chart with y labels on the left, and the step range below."""
    text = Text(no_wrap=True, overflow="crop")
    curves = [_clean(s.points) for s in series]
    ys = [y for c in curves for _x, y in c]
    if not ys:
        text.append(f"{title}: no data for these runs", style="dim")
        return text
    lo, hi = min(ys), max(ys)
    x_lo, x_hi = min(c[0][0] for c in curves if c), max(c[-1][0] for c in curves if c)
    text.append(title, style="bold")
    text.append(f"  {len([c for c in curves if c])} of {len(series)} runs  min {_label(lo)}  max {_label(hi)}\n")
    gutter = max(len(_label(lo)), len(_label(hi))) + 1
    w, h = max(1, width - gutter), max(1, height - 2)
    bits = [[0] * w for _ in range(h)]
    owner = [[-1] * w for _ in range(h)]
    stamps: dict[tuple[int, int], int] = {}
    max_x, max_y = w * 2 - 1, h * 4 - 1
    x_scale = max_x / ((x_hi - x_lo) or 1.0)
    y_scale = max_y / ((hi - lo) or 1.0)
    for i, curve in enumerate(curves):
        if not curve:
            continue
        columns: dict[int, list[int]] = {}
        for x, y in curve:  # x ascending, so the dict's order is the columns' order
            dx = round((x - x_lo) * x_scale) if x_hi != x_lo else max_x // 2
            dy = max_y - round((y - lo) * y_scale) if hi != lo else max_y // 2
            c = columns.get(dx)
            if c is None:
                columns[dx] = [dy, dy, dy, dy]
            else:
                c[0], c[1], c[3] = min(c[0], dy), max(c[1], dy), dy
        _plot_curve(bits, owner, i, columns)
        xs = list(columns)
        for k in range(MARKS_PER_CURVE):  # spread along the curve, shifted per series
            x = xs[min(len(xs) - 1, (len(xs) * (2 * k + 1) + i * 3) // (2 * MARKS_PER_CURVE))]
            stamps[(columns[x][3] >> 2, x >> 1)] = i
    for row in range(h):
        label = _label(hi) if row == 0 else _label(lo) if row == h - 1 else ""
        text.append(label.rjust(gutter - 1) + "│", style="dim")
        run, run_style = [], ""
        for col in range(w):
            if (row, col) in stamps:
                i = stamps[(row, col)]
                ch, style = marker_of(i), f"bold {colour_of(i)}"
            elif bits[row][col]:
                ch, style = chr(_BRAILLE_BASE + bits[row][col]), colour_of(owner[row][col])
            else:
                ch, style = " ", ""
            if style != run_style and run:
                text.append("".join(run), style=run_style or None)
                run = []
            run.append(ch)
            run_style = style
        text.append("".join(run) + "\n", style=run_style or None)
    first, last = f"step {_label(x_lo)}", _label(x_hi)
    text.append(" " * gutter + first + " " * max(1, w - len(first) - len(last)) + last, style="dim")
    return text


class OverlayPlot(Widget):
    """Draws one metric of several runs; `show` swaps what is drawn."""

    DEFAULT_CSS = """
    OverlayPlot { height: 1fr; min-height: 6; }
    """

    data: reactive[tuple[str, tuple[Series, ...]]] = reactive(("", ()), layout=False)

    def show(self, title: str, series: list[Series]) -> None:
        self.data = (title, tuple(series))

    def render(self) -> Text:
        title, series = self.data
        return render_overlay(title, list(series), self.content_size.width, self.content_size.height)
