"""Which GPUs a job gets: ones no running job holds and that NVML shows nearly empty.

A job asks for a list of GPU indexes, a count, or nothing (None: as many as it has processes when
the machine has GPUs, none on a CPU-only machine). The launcher picks under a lock file
(`jobs/.gpu.lock`), so two launchers never hand out the same GPU; a job that cannot have its GPUs
now stays queued and is started later by `start_queued` (the keeper of a job that ends, a waiting
`rltui --batch` command, or `supervise`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Iterator, Sequence

from rltui.errors import UsageError
from rltui.gpu import GpuInfo, GpuSnapshot, Sampler, default_sampler
from rltui.jobs.records import JobSpec, read_state
from rltui.runs.localfs import Layout

FREE_MEM_ENV = "RLTUI_GPU_FREE_MIB"
DEFAULT_FREE_MEM_MIB = 2048.0  # a CUDA context alone takes ~0.5 GiB; anything above 2 GiB is in use


def parse_request(gpus: int | str | Sequence[int] | None, nproc: int) -> tuple[tuple[int, ...] | None, int | None]:
    """(explicit list or None, count or None) from `--gpus` (a count, '0,1', or a list)."""
    if gpus is None:
        return None, None
    if isinstance(gpus, str):
        text = gpus.strip()
        try:
            items = [int(x) for x in text.split(",")] if text else []
        except ValueError:
            raise UsageError(f"bad --gpus: {gpus!r} (use GPU indexes like 0,1)") from None
        return parse_request(items, nproc)
    if isinstance(gpus, bool):
        raise UsageError(f"bad --gpus: {gpus!r}")
    if isinstance(gpus, int):
        if gpus < 0:
            raise UsageError(f"bad GPU count: {gpus!r} (must be >= 0)")
        return None, gpus
    items = list(gpus)
    if not items or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in items):
        raise UsageError(f"bad --gpus: {gpus!r} (use GPU indexes like 0,1)")
    if len(set(items)) != len(items):
        raise UsageError(f"bad --gpus: {gpus!r} (an index is repeated)")
    if nproc > 1 and len(items) != nproc:
        raise UsageError(f"bad --gpus: {len(items)} GPUs for --nproc {nproc} (give one per process)")
    return tuple(items), len(items)


def needs_snapshot(spec: JobSpec) -> bool:
    return spec.gpus is not None or spec.gpu_count != 0


def wanted(spec: JobSpec, snapshot: GpuSnapshot | None) -> tuple[int, ...] | int:
    """The explicit list, or the count the job needs on this machine (0 on a CPU-only one)."""
    if spec.gpus is not None:
        return spec.gpus
    if spec.gpu_count is not None:
        return spec.gpu_count
    return spec.nproc if snapshot is not None and snapshot.gpus else 0


def check_possible(spec: JobSpec, snapshot: GpuSnapshot | None) -> None:
    """UsageError when the request can never be met on this machine (so the job is not queued)."""
    want = wanted(spec, snapshot)
    if want == 0 or want == ():
        return
    usable = {g.index for g in (snapshot.gpus if snapshot else []) if not g.lost}
    why = f"; {snapshot.reason}" if snapshot is not None and snapshot.reason else ""
    if isinstance(want, int):
        if want > len(usable):
            raise UsageError(f"bad GPU count: {want} asked, {len(usable)} usable GPU(s) here{why}")
        return
    missing = [i for i in want if i not in usable]
    if missing:
        raise UsageError(f"bad --gpus: GPU {missing[0]} is not usable here ({len(usable)} usable GPU(s){why})")


def free_mem_threshold() -> float:
    try:
        return float(os.environ.get(FREE_MEM_ENV, DEFAULT_FREE_MEM_MIB))
    except ValueError:
        return DEFAULT_FREE_MEM_MIB


def is_idle(g: GpuInfo, threshold_mib: float) -> bool:
    """NVML shows the GPU nearly empty; an unreadable memory figure does not block it."""
    return not g.lost and (g.mem_used_mib is None or g.mem_used_mib <= threshold_mib)


def choose(
    want: Sequence[int] | int, snapshot: GpuSnapshot, held: set[int], *, check_usage: bool = True,
    threshold_mib: float | None = None,
) -> list[int] | None:
    """The GPUs to give, or None when they are not all free now."""
    threshold = free_mem_threshold() if threshold_mib is None else threshold_mib
    gpus = snapshot.by_index()

    def free(i: int) -> bool:
        g = gpus.get(i)
        if g is None or g.lost or i in held:
            return False
        return is_idle(g, threshold) if check_usage else True

    if isinstance(want, int):
        picked = [i for i in sorted(gpus) if free(i)][:want]
        return picked if len(picked) == want else None
    return list(want) if all(free(i) for i in want) else None


def held_gpus(layout: Layout) -> set[int]:
    """GPUs assigned to jobs that a keeper owns now (starting, running, stopping, restarting)."""
    held: set[int] = set()
    try:
        names = [e.name for e in os.scandir(layout.jobs) if e.is_dir() and not e.name.startswith(".")]
    except FileNotFoundError:
        return held
    for name in names:
        try:
            state = read_state(layout, name)
        except Exception:
            continue
        if state.state.active and state.gpus:
            held.update(state.gpus)
    return held


def snapshot_for(spec: JobSpec, sampler: Sampler | None) -> GpuSnapshot | None:
    return (sampler or default_sampler()).sample() if needs_snapshot(spec) else None


def try_assign(
    layout: Layout, spec: JobSpec, snapshot: GpuSnapshot | None, *, check_usage: bool = True,
    held: set[int] | None = None,
) -> list[int] | None:
    """GPUs for `spec` now ([] for a job without GPUs), or None: stay queued. Hold `lock`.
    `held`: the GPUs active jobs hold, when the caller has them (else read from jobs/)."""
    want = wanted(spec, snapshot)
    if want == 0 or want == ():
        return []
    if snapshot is None:
        return None
    return choose(want, snapshot, held_gpus(layout) if held is None else held, check_usage=check_usage)


@contextlib.contextmanager
def lock(layout: Layout) -> Iterator[None]:
    """An exclusive lock over GPU assignment and queued-job starts, across processes."""
    layout.jobs.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(layout.jobs / ".gpu.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
