"""Usage accounting from GPU snapshots: GPU-seconds, peak memory, utilisation, energy, cost."""

from __future__ import annotations

from rltui.gpu import GpuInfo, GpuProcess, GpuSnapshot
from rltui.jobs.usage import PRICE_ENV, UsageMeter, price_from_env


def snap(util, power, mem_by_pid, energy=None):
    return GpuSnapshot([
        GpuInfo(0, util_pct=util, power_w=power, mem_used_mib=sum(mem_by_pid.values()) + 500,
                energy_j=energy, processes=tuple(GpuProcess(p, m) for p, m in mem_by_pid.items())),
        GpuInfo(1, util_pct=99, power_w=600, mem_used_mib=70000, processes=(GpuProcess(999, 69000),)),
    ])


def test_usage_counts_the_jobs_gpus_only_and_integrates_power():
    meter = UsageMeter(price_per_gpu_hour=2.0, assigned=[0])
    meter.add(snap(0, 100, {}), {10, 11}, 0.0)
    meter.add(snap(80, 300, {10: 1000, 11: 500}), {10, 11}, 1800.0)
    meter.add(snap(60, 200, {10: 4000}), {10, 11}, 1800.0)
    u = meter.result()
    assert u.gpu_seconds == 3600.0
    assert u.peak_gpu_mem_mib == 4000 and u.mean_gpu_util == (0 + 80 + 60) / 3
    assert u.energy_j == 300 * 1800 + 200 * 1800
    assert u.cost == 2.0 and u.price_per_gpu_hour == 2.0


def test_a_gpu_with_an_energy_counter_uses_the_counter():
    meter = UsageMeter(None, assigned=[0])
    meter.add(snap(50, 100, {}, energy=1000.0), set(), 0.0)
    meter.add(snap(50, 100, {}, energy=1600.0), set(), 10.0)
    assert meter.result().energy_j == 600.0 and meter.result().cost is None


def test_an_unassigned_job_is_charged_for_the_gpus_its_processes_use():
    meter = UsageMeter(None, assigned=None)
    meter.add(snap(50, 100, {}), {999}, 10.0)
    assert meter.result().gpu_seconds == 10.0 and meter.result().peak_gpu_mem_mib == 69000


def test_without_gpu_data_usage_is_zero_gpu_seconds_and_unknown_otherwise():
    u = UsageMeter(None).result()
    assert u.gpu_seconds == 0.0 and u.peak_gpu_mem_mib is None and u.energy_j is None and u.cost is None


def test_the_price_setting_is_read_from_the_environment():
    assert price_from_env({}) == (None, None)
    assert price_from_env({PRICE_ENV: "2.49"}) == (2.49, None)
    price, warning = price_from_env({PRICE_ENV: "cheap"})
    assert price is None and "cheap" in warning
