"""The GPU pane: one line per GPU (utilisation, memory, temperature, power) and its processes.

Usage:
    pane = GpuPane(id="gpus")
    pane.show(snapshot)          # a rltui.gpu.GpuSnapshot, processes already mapped to jobs/runs

With no GPU (no driver, no device) it says so, with NVML's reason, instead of an empty table.
"""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from rltui.gpu import GpuInfo, GpuProcess, GpuSnapshot, fmt


def _bar(fraction: float | None, width: int = 10) -> str:
    """A bar made of characters, so that it reads without colour."""
    if fraction is None:
        return " " * width
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "█" * filled + "·" * (width - filled)


def _mem(g: GpuInfo) -> str:
    if g.mem_used_mib is None or not g.mem_total_mib:
        return "n/a"
    return f"{g.mem_used_mib / 1024:.1f}/{g.mem_total_mib / 1024:.0f} GiB"


def _process(p: GpuProcess) -> str:
    """A job's process by its job and run; anything else by its pid."""
    who = f"job {p.job}" + (f" ({p.run})" if p.run else "") if p.job else f"pid {p.pid}"
    return who + (f" {p.used_mib / 1024:.1f}G" if p.used_mib else "")


def gpu_table(snapshot: GpuSnapshot) -> Table:
    """One line per GPU: utilisation, memory, temperature, power."""
    table = Table(expand=True, box=None, pad_edge=False, header_style="bold")
    for label in ("GPU", "util", "", "memory", "", "temp", "power"):
        table.add_column(label, no_wrap=True)
    for g in snapshot.gpus:
        name = f"{g.index} {g.name or ''}".strip() + (" LOST" if g.lost else "")
        frac = None if g.mem_used_mib is None or not g.mem_total_mib else g.mem_used_mib / g.mem_total_mib
        util = None if g.util_pct is None else g.util_pct / 100
        table.add_row(Text(name, style="bold red" if g.lost else ""), fmt(g.util_pct, "%"),
                      _bar(util), _mem(g), _bar(frac, 6), fmt(g.temp_c, "°C"), fmt(g.power_w, " W"))
    return table


def process_lines(snapshot: GpuSnapshot) -> Text:
    """Every GPU process, by the job and run it belongs to (or its pid when it is no job's)."""
    text = Text("\nProcesses\n", style="bold")
    lines = [f"  GPU {g.index}  {_process(p)}" for g in snapshot.gpus for p in g.processes]
    text.append("\n".join(lines) if lines else "  none", style="")
    return text


def render_snapshot(snapshot: GpuSnapshot | None) -> Group | Text:
    if snapshot is None:
        return Text("sampling GPUs…", style="dim")
    if not snapshot.gpus:
        return Text(f"no GPU: {snapshot.reason or 'none found'}\n"
                    "Training and evaluation run on the CPU here.", style="bold")
    return Group(gpu_table(snapshot), process_lines(snapshot))


class GpuPane(Static):
    """Renders the latest GpuSnapshot."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(render_snapshot(None), **kwargs)  # type: ignore[arg-type]
        self.snapshot: GpuSnapshot | None = None

    def on_mount(self) -> None:
        self.update(render_snapshot(self.snapshot))

    def show(self, snapshot: GpuSnapshot) -> None:
        self.snapshot = snapshot
        if self.is_mounted:
            self.update(render_snapshot(snapshot))
