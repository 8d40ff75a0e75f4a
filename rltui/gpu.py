"""GPU sampling through NVML, behind a small interface that also works with no GPU at all.

    snap = gpu.sample()          # GpuSnapshot(gpus=[GpuInfo, ...], reason=None | "why empty")
    for g in snap.gpus: print(g.index, fmt(g.util_pct, "%"), fmt(g.mem_used_mib, " MiB"))

Every NVML query that fails reads as not available (None, shown "n/a") instead of an error, as
nvitop does; no driver or no GPU gives an empty list and the reason; a GPU that has fallen off the
bus (NVML_ERROR_GPU_IS_LOST) is listed with `lost=True`. The NVML module is passed in, so tests
drive the real code path with a fake module (this machine has no GPU), and `FakeSampler` stands in
for the whole sampler where a test only needs snapshots (GPU assignment, usage accounting).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Protocol, Sequence

MIB = 1024 * 1024


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_mib: float | None = None
    job: str | None = None  # the job whose process tree holds pid (filled by `attribute`)
    run: str | None = None


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str | None = None
    uuid: str | None = None
    util_pct: float | None = None
    mem_used_mib: float | None = None
    mem_total_mib: float | None = None
    temp_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    energy_j: float | None = None  # the driver's total energy counter, when the GPU has one
    processes: tuple[GpuProcess, ...] = ()
    lost: bool = False

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "processes"}
        d["processes"] = [p.__dict__.copy() for p in self.processes]
        return d


@dataclass(frozen=True)
class GpuSnapshot:
    gpus: list[GpuInfo]
    reason: str | None = None  # why the list is empty (no driver, no GPU), else None
    time: float = field(default_factory=time.time)
    driver: str | None = None

    def by_index(self) -> dict[int, GpuInfo]:
        return {g.index: g for g in self.gpus}

    def to_json(self) -> dict[str, Any]:
        return {"gpus": [g.to_json() for g in self.gpus], "reason": self.reason,
                "time": self.time, "driver": self.driver}


class Sampler(Protocol):
    def sample(self) -> GpuSnapshot: ...


def fmt(value: float | None, unit: str = "", digits: int = 0) -> str:
    """A sampled value for display; a failed query reads "n/a"."""
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}{unit}"


class NvmlSampler:
    """Samples every GPU with NVML. `nvml` is the pynvml module (nvidia-ml-py) or a stand-in."""

    def __init__(self, nvml: Any = None) -> None:
        self._nvml = nvml
        self._ready = False
        self._init_error: str | None = None
        self._lock = threading.Lock()

    def _init(self) -> str | None:
        """Initialise NVML once; return why it is unavailable, or None."""
        if self._ready or self._init_error:
            return self._init_error
        try:
            if self._nvml is None:
                import pynvml  # the nvidia-ml-py distribution

                self._nvml = pynvml
            self._nvml.nvmlInit()
            self._ready = True
        except Exception as e:  # ImportError, NVMLError_LibraryNotFound, DriverNotLoaded, ...
            self._init_error = f"NVML not available: {_err_text(e)}"
        return self._init_error

    def sample(self) -> GpuSnapshot:
        with self._lock:
            reason = self._init()
            if reason:
                return GpuSnapshot([], reason=reason)
            nv = self._nvml
            try:
                count = int(nv.nvmlDeviceGetCount())
            except Exception as e:
                return GpuSnapshot([], reason=f"NVML could not count GPUs: {_err_text(e)}")
            driver = _text(self._query(lambda: nv.nvmlSystemGetDriverVersion()))
            if count == 0:
                return GpuSnapshot([], reason="no GPU found by NVML", driver=driver)
            return GpuSnapshot([self._one(i) for i in range(count)], driver=driver)

    def _one(self, index: int) -> GpuInfo:
        nv = self._nvml
        try:
            h = nv.nvmlDeviceGetHandleByIndex(index)
        except Exception as e:
            return GpuInfo(index=index, lost=_is_lost(nv, e))
        lost: list[bool] = []

        def q(fn: Callable[[], Any]) -> Any:
            return self._query(fn, lost)

        mem = q(lambda: nv.nvmlDeviceGetMemoryInfo(h))
        util = q(lambda: nv.nvmlDeviceGetUtilizationRates(h))
        power_mw = q(lambda: nv.nvmlDeviceGetPowerUsage(h))
        limit_mw = q(lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h))
        energy_mj = q(lambda: nv.nvmlDeviceGetTotalEnergyConsumption(h))
        procs = q(lambda: nv.nvmlDeviceGetComputeRunningProcesses(h)) or []
        return GpuInfo(
            index=index,
            name=_text(q(lambda: nv.nvmlDeviceGetName(h))),
            uuid=_text(q(lambda: nv.nvmlDeviceGetUUID(h))),
            util_pct=_num(getattr(util, "gpu", None)),
            mem_used_mib=_scaled(getattr(mem, "used", None), MIB),
            mem_total_mib=_scaled(getattr(mem, "total", None), MIB),
            temp_c=_num(q(lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))),
            power_w=_scaled(power_mw, 1000),
            power_limit_w=_scaled(limit_mw, 1000),
            energy_j=_scaled(energy_mj, 1000),
            processes=tuple(
                GpuProcess(pid=int(p.pid), used_mib=_scaled(getattr(p, "usedGpuMemory", None), MIB))
                for p in procs
            ),
            lost=bool(lost),
        )

    def _query(self, fn: Callable[[], Any], lost: list[bool] | None = None) -> Any:
        try:
            return fn()
        except Exception as e:
            if lost is not None and _is_lost(self._nvml, e):
                lost.append(True)
            return None


class FakeSampler:
    """Hands out snapshots given by a test; `set` replaces the current one."""

    def __init__(self, snapshot: GpuSnapshot | None = None) -> None:
        self.snapshot = snapshot or GpuSnapshot([], reason="fake: no GPU")
        self.calls = 0

    def set(self, snapshot: GpuSnapshot) -> None:
        self.snapshot = snapshot

    def sample(self) -> GpuSnapshot:
        self.calls += 1
        return replace(self.snapshot, time=time.time())


def fake_gpus(n: int, used_mib: Sequence[float] | float = 0.0, total_mib: float = 81559.0,
              util_pct: float = 0.0, power_w: float = 70.0) -> GpuSnapshot:
    """A snapshot of `n` idle (or as given) GPUs, for tests and the demo's dry runs."""
    used = [float(used_mib)] * n if isinstance(used_mib, (int, float)) else [float(u) for u in used_mib]
    return GpuSnapshot([
        GpuInfo(index=i, name="Fake GPU", util_pct=util_pct, mem_used_mib=used[i],
                mem_total_mib=total_mib, power_w=power_w, power_limit_w=700.0)
        for i in range(n)
    ])


def attribute(snapshot: GpuSnapshot, owners: dict[int, tuple[str | None, str | None]]) -> GpuSnapshot:
    """The snapshot with each GPU process's job and run filled from `owners` (pid -> (job, run))."""
    gpus = []
    for g in snapshot.gpus:
        procs = tuple(
            replace(p, job=owners.get(p.pid, (None, None))[0], run=owners.get(p.pid, (None, None))[1])
            for p in g.processes
        )
        gpus.append(replace(g, processes=procs))
    return replace(snapshot, gpus=gpus)


def gpus_of_pids(snapshot: GpuSnapshot, pids: Iterable[int]) -> set[int]:
    """Indexes of the GPUs on which any of `pids` has a compute process."""
    wanted = set(pids)
    return {g.index for g in snapshot.gpus if any(p.pid in wanted for p in g.processes)}


_default: NvmlSampler | None = None


def default_sampler() -> NvmlSampler:
    global _default
    if _default is None:
        _default = NvmlSampler()
    return _default


def sample() -> GpuSnapshot:
    """One snapshot of every GPU with the process-wide NVML sampler."""
    return default_sampler().sample()


def _is_lost(nv: Any, e: Exception) -> bool:
    code = getattr(nv, "NVML_ERROR_GPU_IS_LOST", 15)
    return getattr(e, "value", None) == code


def _err_text(e: Exception) -> str:
    text = str(e).strip()
    return text or type(e).__name__


def _text(v: Any) -> str | None:
    if v is None:
        return None
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _num(v: Any) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


def _scaled(v: Any, divisor: float) -> float | None:
    n = _num(v)
    return None if n is None else n / divisor
