"""rltui.gpu: the NVML code path driven by a stand-in NVML module (this machine has no GPU),
the real NVML path on this machine (no driver: an empty list and the reason), and the mapping of
GPU processes to jobs through a real process tree."""

from __future__ import annotations

import os
import subprocess
import sys
import types

from rltui import gpu
from rltui.gpu import GpuProcess, GpuSnapshot, NvmlSampler, attribute, fmt
from rltui.jobs.usage import tree_pids

MIB = 1024 * 1024


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


def fake_nvml(devices: list[dict], init_error: Exception | None = None) -> types.SimpleNamespace:
    """A stand-in for the pynvml module: each device is a dict of query results or exceptions."""

    def query(name):
        def fn(h, *args):
            v = devices[h][name]
            if isinstance(v, Exception):
                raise v
            return v
        return fn

    def handle(i):
        v = devices[i].get("handle")
        if isinstance(v, Exception):
            raise v
        return i

    def init():
        if init_error:
            raise init_error

    ns = types.SimpleNamespace(
        NVML_ERROR_GPU_IS_LOST=15, NVML_TEMPERATURE_GPU=0, nvmlInit=init,
        nvmlDeviceGetCount=lambda: len(devices), nvmlSystemGetDriverVersion=lambda: "550.54",
        nvmlDeviceGetHandleByIndex=handle,
    )
    for name in ("Name", "UUID", "MemoryInfo", "UtilizationRates", "PowerUsage", "EnforcedPowerLimit",
                 "TotalEnergyConsumption", "ComputeRunningProcesses", "Temperature"):
        setattr(ns, f"nvmlDeviceGet{name}", query(name))
    return ns


def healthy(**overrides) -> dict:
    d = {
        "Name": b"NVIDIA H100 80GB HBM3", "UUID": "GPU-1234",
        "MemoryInfo": types.SimpleNamespace(used=1024 * MIB, total=81559 * MIB),
        "UtilizationRates": types.SimpleNamespace(gpu=37), "PowerUsage": 123456,
        "EnforcedPowerLimit": 700000, "TotalEnergyConsumption": 5_000_000, "Temperature": 41,
        "ComputeRunningProcesses": [types.SimpleNamespace(pid=4242, usedGpuMemory=512 * MIB)],
    }
    d.update(overrides)
    return d


def test_every_field_of_a_healthy_gpu_is_read_in_plain_units():
    snap = NvmlSampler(fake_nvml([healthy()])).sample()
    assert snap.reason is None and snap.driver == "550.54"
    (g,) = snap.gpus
    assert (g.name, g.uuid, g.util_pct, g.mem_used_mib, g.mem_total_mib) == (
        "NVIDIA H100 80GB HBM3", "GPU-1234", 37.0, 1024.0, 81559.0)
    assert (g.temp_c, g.power_w, g.power_limit_w, g.energy_j) == (41.0, 123.456, 700.0, 5000.0)
    assert g.processes == (GpuProcess(pid=4242, used_mib=512.0),) and not g.lost


def test_each_failing_query_reads_not_available_and_the_rest_still_read():
    dev = healthy(UtilizationRates=NVMLError(3), PowerUsage=NVMLError(3), Temperature=NVMLError(999),
                  TotalEnergyConsumption=NVMLError(3),
                  ComputeRunningProcesses=[types.SimpleNamespace(pid=7, usedGpuMemory=None)])
    (g,) = NvmlSampler(fake_nvml([dev])).sample().gpus
    assert g.util_pct is None and g.power_w is None and g.temp_c is None and g.energy_j is None
    assert g.mem_used_mib == 1024.0 and g.processes[0].used_mib is None
    assert (fmt(g.util_pct, "%"), fmt(g.mem_used_mib, " MiB")) == ("n/a", "1024 MiB")


def test_a_gpu_fallen_off_the_bus_is_listed_as_lost():
    lost = NVMLError(15)
    devices = [healthy(), {"handle": lost}, healthy(MemoryInfo=lost, UtilizationRates=lost)]
    snap = NvmlSampler(fake_nvml(devices)).sample()
    assert [g.lost for g in snap.gpus] == [False, True, True]
    assert snap.gpus[1].mem_used_mib is None


def test_no_driver_gives_an_empty_list_and_the_reason():
    snap = NvmlSampler(fake_nvml([], init_error=NVMLError(9))).sample()
    assert snap.gpus == [] and snap.reason.startswith("NVML not available")
    assert NvmlSampler(fake_nvml([])).sample().reason == "no GPU found by NVML"


def test_the_real_nvml_path_never_raises_here():
    snap = gpu.sample()
    if snap.gpus:  # a GPU machine: bench/nvml_probe.py records the real output
        assert all(g.index == i for i, g in enumerate(snap.gpus))
    else:
        assert snap.reason


def test_gpu_processes_map_to_their_job_through_the_process_tree():
    parent = subprocess.Popen([sys.executable, "-c",
                               "import subprocess, sys, time; "
                               "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
                               "print(p.pid, flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        grandchild = int(parent.stdout.readline())
        pids = tree_pids(parent.pid)
        assert {parent.pid, grandchild} <= pids
        snap = GpuSnapshot([gpu.GpuInfo(index=0, processes=(GpuProcess(grandchild, 100.0), GpuProcess(os.getpid(), 5.0)))])
        owners = {p: ("job-a", "run_x") for p in pids}
        mapped = attribute(snap, owners).gpus[0].processes
        assert (mapped[0].job, mapped[0].run) == ("job-a", "run_x")
        assert (mapped[1].job, mapped[1].run) == (None, None)
        assert gpu.gpus_of_pids(snap, pids) == {0}
    finally:
        for p in tree_pids(parent.pid):
            os.kill(p, 9)
        parent.wait()
