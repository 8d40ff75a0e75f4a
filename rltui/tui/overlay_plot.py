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
import operator
from itertools import islice, repeat

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


def _clean(points: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """xs and ys of the finite points in step order (the store's series already are: then no
    copy or sort; C-level map/all rather than a Python loop per point)."""
    if not points:
        return [], []
    xs, ys = (list(v) for v in zip(*points))
    if not (all(map(math.isfinite, ys)) and all(map(math.isfinite, xs))):
        kept = [(x, y) for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)]
        xs, ys = [p[0] for p in kept], [p[1] for p in kept]
    if not all(map(operator.le, xs, islice(xs, 1, None))):
        order = sorted(range(len(xs)), key=xs.__getitem__)
        xs, ys = [xs[k] for k in order], [ys[k] for k in order]
    return xs, ys


def _scaled(values: list[float], lo: float, scale: float, flip: int | None = None) -> list[int]:
    """round((v - lo) * scale) for each value (flip - that, when given), with C-level maps."""
    out = map(round, map(operator.mul, map(operator.sub, values, repeat(lo)), repeat(scale)))
    return list(map(operator.sub, repeat(flip), out)) if flip is not None else list(out)


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


def _columns(dxs: list[int], dys: list[int]) -> dict[int, list[int]]:
    """Per dot column (dxs ascending): [lowest y, highest y, first y, last y] of its points."""
    columns: dict[int, list[int]] = {}
    start = 0
    n = len(dxs)
    while start < n:  # one slice per column: min/max run in C over it
        x = dxs[start]
        end = start + 1
        while end < n and dxs[end] == x:
            end += 1
        part = dys[start:end]
        columns[x] = [min(part), max(part), part[0], part[-1]]
        start = end
    return columns


def render_overlay(title: str, series: list[Series], width: int, height: int) -> Text:
    """Title line, the chart with y labels on the left, and the step range below."""
    text = Text(no_wrap=True, overflow="crop")
    curves = [_clean(s.points) for s in series]
    present = [c for c in curves if c[0]]
    if not present:
        text.append(f"{title}: no data for these runs", style="dim")
        return text
    lo, hi = min(min(c[1]) for c in present), max(max(c[1]) for c in present)
    x_lo, x_hi = min(c[0][0] for c in present), max(c[0][-1] for c in present)
    text.append(title, style="bold")
    text.append(f"  {len(present)} of {len(series)} runs  min {_label(lo)}  max {_label(hi)}\n")
    gutter = max(len(_label(lo)), len(_label(hi))) + 1
    w, h = max(1, width - gutter), max(1, height - 2)
    bits = [[0] * w for _ in range(h)]
    owner = [[-1] * w for _ in range(h)]
    stamps: dict[tuple[int, int], int] = {}
    max_x, max_y = w * 2 - 1, h * 4 - 1
    x_scale = max_x / ((x_hi - x_lo) or 1.0)
    y_scale = max_y / ((hi - lo) or 1.0)
    for i, (xs, ys) in enumerate(curves):
        if not xs:
            continue
        dxs = _scaled(xs, x_lo, x_scale) if x_hi != x_lo else [max_x // 2] * len(xs)
        dys = _scaled(ys, lo, y_scale, flip=max_y) if hi != lo else [max_y // 2] * len(ys)
        columns = _columns(dxs, dys)
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

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._drawn: tuple[tuple[int, int], Text] | None = None  # drawn ahead, for that size

    def show(self, title: str, series: list[Series], drawn: Text | None = None,
             size: tuple[int, int] | None = None) -> None:
        """Draw these series; `drawn` is the chart already rendered at `size` (by a worker)."""
        self._drawn = (size, drawn) if drawn is not None and size is not None else None
        self.data = (title, tuple(series))

    def render(self) -> Text:
        title, series = self.data
        size = (self.content_size.width, self.content_size.height)
        if self._drawn is not None and self._drawn[0] == size:
            return self._drawn[1]
        if not series:
            return Text(title or "loading…", style="dim")
        return render_overlay(title, list(series), *size)
