"""This machine: its name, when it booted, and whether a process id is alive on it."""

from __future__ import annotations

import os
import socket

def boot_time() -> float | None:
    """When this machine last booted (epoch seconds), from /proc/stat; None where unknown."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def pid_alive(pid: int | None) -> bool:
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def this_host() -> str:
    return socket.gethostname()
