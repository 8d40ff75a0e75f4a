"""What a job uses: GPU-seconds, peak GPU memory, mean utilisation, energy and cost (accumulated
by its keeper from GPU snapshots), and the CPU and memory of its process tree (psutil).

Cost is GPU-hours times the price per GPU-hour in `$RLTUI_GPU_HOUR_PRICE` (a plain number in the
user's currency); unknown (None) when the variable is unset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable

from rltui.gpu import GpuSnapshot, gpus_of_pids
from rltui.jobs.records import Usage

PRICE_ENV = "RLTUI_GPU_HOUR_PRICE"


def price_from_env(environ: dict[str, str] | None = None) -> tuple[float | None, str | None]:
    """(price per GPU-hour or None, a warning when the setting is present but unusable)."""
    raw = (environ if environ is not None else os.environ).get(PRICE_ENV, "").strip()
    if not raw:
        return None, None
    try:
        price = float(raw)
    except ValueError:
        return None, f"{PRICE_ENV}={raw!r} is not a number; cost is unknown"
    if price < 0 or price != price:
        return None, f"{PRICE_ENV}={raw!r} must be >= 0; cost is unknown"
    return price, None


class UsageMeter:
    """Integrates snapshots over time. The job holds its assigned GPUs and any GPU its processes use."""

    def __init__(self, price_per_gpu_hour: float | None, assigned: Iterable[int] | None = None) -> None:
        self.price = price_per_gpu_hour
        self.assigned = set(assigned or ())
        self.gpu_seconds = 0.0
        self.peak_mem_mib: float | None = None
        self._util_sum = 0.0
        self._util_n = 0
        self._energy_counter_first: dict[int, float] = {}
        self._energy_counter_last: dict[int, float] = {}
        self._energy_integrated: dict[int, float] = {}
        self.samples = 0

    def add(self, snapshot: GpuSnapshot, job_pids: set[int], dt: float) -> None:
        """Account `dt` seconds since the previous sample at the state shown by `snapshot`."""
        by_index = snapshot.by_index()
        held = sorted(i for i in (self.assigned | gpus_of_pids(snapshot, job_pids))
                      if i in by_index and not by_index[i].lost)
        self.samples += 1
        if not held:
            return
        self.gpu_seconds += len(held) * dt
        mem_by_process = [p.used_mib for i in held for p in by_index[i].processes
                          if p.pid in job_pids and p.used_mib is not None]
        if mem_by_process:
            mem: float | None = sum(mem_by_process)
        else:
            used = [by_index[i].mem_used_mib for i in held if i in self.assigned]
            mem = sum(u for u in used if u is not None) if any(u is not None for u in used) else None
        if mem is not None:
            self.peak_mem_mib = mem if self.peak_mem_mib is None else max(self.peak_mem_mib, mem)
        for i in held:
            g = by_index[i]
            if g.util_pct is not None:
                self._util_sum += g.util_pct
                self._util_n += 1
            if g.energy_j is not None:
                self._energy_counter_first.setdefault(i, g.energy_j)
                self._energy_counter_last[i] = g.energy_j
            elif g.power_w is not None:
                self._energy_integrated[i] = self._energy_integrated.get(i, 0.0) + g.power_w * dt

    def energy_j(self) -> float | None:
        if not self._energy_counter_last and not self._energy_integrated:
            return None
        total = sum(self._energy_integrated.values())
        total += sum(last - self._energy_counter_first[i] for i, last in self._energy_counter_last.items())
        return total

    def result(self) -> Usage:
        return Usage(
            gpu_seconds=round(self.gpu_seconds, 3),
            peak_gpu_mem_mib=self.peak_mem_mib,
            mean_gpu_util=(self._util_sum / self._util_n) if self._util_n else None,
            energy_j=self.energy_j(),
            cost=None if self.price is None else self.gpu_seconds / 3600.0 * self.price,
            price_per_gpu_hour=self.price,
            samples=self.samples,
        )


@dataclass(frozen=True)
class TreeStats:
    """CPU and memory of one process and its descendants."""

    processes: int
    cpu_percent: float | None
    rss_mib: float | None


def tree_pids(pid: int | None) -> set[int]:
    """`pid` and every descendant of it now; empty when it is gone."""
    if not pid:
        return set()
    import psutil

    try:
        root = psutil.Process(pid)
        return {pid} | {c.pid for c in root.children(recursive=True)}
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return set()


def owners_by_pid(roots: Iterable[tuple[str, str | None, int | None]]
                  ) -> dict[int, tuple[str, str | None]]:
    """pid -> (job id, run) for every process under each (job id, run, root pid)."""
    owners: dict[int, tuple[str, str | None]] = {}
    for job_id, run, pid in roots:
        for p in tree_pids(pid):
            owners[p] = (job_id, run)
    return owners


def job_owners(jobs: Iterable[Any]) -> dict[int, tuple[str, str | None]]:
    """pid -> (job id, run) for every process under each job's keeper (rltui.runs.records.JobRecord
    of active jobs, as `status` and the TUI have them from the index)."""
    return owners_by_pid((job.id, job.run, job.keeper_pid) for job in jobs)


def tree_stats(roots: dict[str, int | None], interval_s: float = 0.1) -> dict[str, TreeStats]:
    """CPU percent (measured over one shared `interval_s`) and resident memory of the process
    tree under each root pid, keyed like `roots` (job id -> its command's pid)."""
    import time

    import psutil

    procs: dict[str, list] = {}
    for key, pid in roots.items():
        procs[key] = []
        for p in sorted(tree_pids(pid)):
            try:
                proc = psutil.Process(p)
                proc.cpu_percent(None)
                procs[key].append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    if any(procs.values()):
        time.sleep(interval_s)
    out = {}
    for key, plist in procs.items():
        cpu = rss = 0.0
        alive = 0
        for proc in plist:
            try:
                cpu += proc.cpu_percent(None)
                rss += proc.memory_info().rss / (1024 * 1024)
                alive += 1
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        out[key] = TreeStats(alive, cpu if alive else None, rss if alive else None)
    return out
