"""Whether a run is running, for the one rule that needs it: a running run is never cleaned up."""

from __future__ import annotations

from rltui import localfs
from rltui.localfs import Layout

_ENDED_PHASES = {"completed", "stopped", "failed"}


def run_is_running(layout: Layout, run: str) -> bool:
    """True when the run's trainer process is alive on this host and has not reported an end.

    Same rule as the index: a process of another host is not ours to wait for (a run restored
    from another box must be cleanable). A status.json that cannot be read counts as running:
    cleanup errs on the side of keeping files.
    """
    try:
        status = localfs.read_json(layout.run_status(run))
    except FileNotFoundError:
        return False
    except localfs.DamagedFile:
        return True
    if not isinstance(status, dict) or status.get("phase") in _ENDED_PHASES:
        return False
    if status.get("host") not in (None, localfs.this_host()):
        return False
    pid = status.get("pid")
    return isinstance(pid, int) and localfs.pid_alive(pid)
