"""Which processes are a job's: the only ones rltui ever signals.

A process id, or a process group id, outlives the process it named: after a crash, a reboot or
a long pause, a number recorded in state.json may name somebody else's processes. Before every
signal rltui proves the group is the job's, with two marks set when the keeper starts it:
- the group leader's start time (/proc/PID/stat field 22, clock ticks since boot), recorded in
  state.json as `pgid_start` with the machine's boot time;
- a token in the environment of every process of the job, `RLTUI_JOB_ID=JOB_ID`, read from
  /proc/PID/environ (inherited by workers, kept across exec).
A group is the job's when its leader is alive with the recorded start time on the same boot, or,
its leader gone, when one of its members carries the job's token (a process group id is never
given to a new group while a member of the old one lives). Anything else is left alone, and the
refusal is counted (`refused`), so a test or a benchmark can show that nothing stray was sent.

Linux only (/proc); where /proc cannot be read nothing is proven and nothing is signalled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from rltui.runs.machine import boot_time

JOB_ENV = "RLTUI_JOB_ID"


@dataclass
class Tally:
    """Signals sent and refused by this process (for tests and bench/faults.py)."""

    sent: int = 0
    refused: int = 0


tally = Tally()


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: fields 3.. (state, ppid, pgrp, ...)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    return data.rsplit(")", 1)[1].split()


def start_ticks(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (field 22); None when unknown."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def process_group(pid: int) -> int | None:
    fields = _stat_fields(pid)
    try:
        return int(fields[2]) if fields else None
    except (IndexError, ValueError):
        return None


def has_token(pid: int, job_id: str) -> bool:
    """Whether process `pid` carries `RLTUI_JOB_ID=job_id` in its environment."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
    except OSError:
        return False
    return f"{JOB_ENV}={job_id}".encode() in env


def group_members(pgid: int) -> list[int]:
    """Every live process whose process group is `pgid`."""
    out = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for name in names:
        if name.isdigit() and process_group(int(name)) == pgid:
            out.append(int(name))
    return out


def why_not_ours(job_id: str, pgid: int | None, pgid_start: int | None,
                 booted: float | None) -> str | None:
    """None when the group `pgid` is provably the job's; else why it is not (or not provably)."""
    if not pgid or pgid <= 1 or pgid == os.getpgrp():
        return f"process group {pgid} is not a job's"
    now_booted = boot_time()
    if booted is not None and now_booted is not None and abs(booted - now_booted) > 2:
        return "the machine rebooted since the job started"
    leader_start = start_ticks(pgid)
    if leader_start is not None:
        if pgid_start is not None and leader_start == pgid_start and process_group(pgid) == pgid:
            return None
        if has_token(pgid, job_id) and process_group(pgid) == pgid:
            return None
        return f"process {pgid} is not the job's group leader any more"
    for pid in group_members(pgid):
        if has_token(pid, job_id):
            return None
    return f"no process of group {pgid} belongs to job {job_id}"


def signal_job_group(job_id: str, pgid: int | None, pgid_start: int | None, booted: float | None,
                     sig: int) -> bool:
    """Send `sig` to the job's process group if it is provably the job's; True when sent."""
    if why_not_ours(job_id, pgid, pgid_start, booted) is not None:
        if pgid:
            tally.refused += 1
        return False
    try:
        os.killpg(pgid, sig)  # type: ignore[arg-type]
    except (ProcessLookupError, PermissionError):
        return False
    tally.sent += 1
    return True


def signal_job_members(job_id: str, pgid: int | None, sig: int) -> int:
    """`sig` to every member of group `pgid` that carries the job's token (the leader already
    reaped, e.g. workers left behind); returns how many were signalled."""
    if not pgid or pgid <= 1:
        return 0
    n = 0
    for pid in group_members(pgid):
        if has_token(pid, job_id):
            try:
                os.kill(pid, sig)
                n += 1
            except (ProcessLookupError, PermissionError):
                pass
    tally.sent += n
    return n


def is_keeper_of(pid: int | None, job_id: str, started: int | None) -> bool:
    """Whether `pid` is still the job's keeper: same start time when recorded, else a keeper
    process whose command line names the job's folder."""
    if not pid:
        return False
    ticks = start_ticks(pid)
    if ticks is None:
        return False
    if started is not None:
        return ticks == started
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return False
    return "rltui.jobs.keeper" in cmdline and job_id in cmdline
