"""A Python snippet run in a fresh child process with the repository on its path; its last line of
output read back as JSON. For what must happen before an import (TRITON_INTERPRET) or on a
process's first call.

    from child import child_json
    found = child_json(CODE, TRITON_INTERPRET="1")
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def child_env(**env: str) -> dict[str, str]:
    """This process's environment with `env` added and the repository first on PYTHONPATH."""
    path = os.pathsep.join([str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    return {**os.environ, **env, "PYTHONPATH": path}


def child_json(code: str, timeout: float = 600, **env: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], env=child_env(**env),
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
