"""`logs` and `jobs` as a user runs them (real subprocesses): output made safe to show, `--raw`
on request, `--tail` read from the end, an output.log that is not a file, a state.json without
times (issue 13)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

from rltui.jobs.output import tail_bytes
from rltui.runs import localfs
from rltui.runs.index import Index

from tests.rltui.test_status_cli import rltui

ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x1bP1$r\x1b\\\x9b31m"


def test_logs_strips_escape_sequences_and_raw_passes_them_through(lfs):
    job = lfs.job("job_1", "run_x", "failed", exit_code=1)
    (job / "output.log").write_bytes(f"step 1 {ESCAPES}done\n10%\r100%\nlast\n".encode())
    proc = rltui("--batch", "logs", "job_1", "--root", str(lfs.root))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "step 1 done\n100%\nlast\n"
    raw = subprocess.run([sys.executable, "-m", "rltui.cli", "--batch", "logs", "job_1", "--raw",
                          "--root", str(lfs.root)], capture_output=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert raw.returncode == 0 and b"\x1b]0;pwned\x07" in raw.stdout


def test_jobs_list_shows_a_reason_without_its_escape_sequences(lfs):
    job = lfs.job("job_1", "run_x", "failed", exit_code=1)
    state = json.loads((job / "state.json").read_text())
    state["last_reason"] = f"crashed {ESCAPES}here"
    localfs.write_json_atomic(job / "state.json", state)
    proc = rltui("--batch", "jobs", "--root", str(lfs.root))
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout and "crashed here" in proc.stdout


def test_logs_tail_gives_the_last_lines_of_a_large_file(lfs):
    job = lfs.job("job_1", "run_x", "failed", exit_code=1)
    line = b"x" * 99 + b"\n"
    with open(job / "output.log", "wb") as f:
        f.write(line * 300_000)  # 30 MB
        f.write(b"second to last\nthe end")  # a last line without its newline
    proc = rltui("--batch", "logs", "job_1", "--tail", "2", "--root", str(lfs.root))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "second to last\nthe end"


class _Counting(io.BytesIO):
    read_total = 0

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        self.read_total += len(data)
        return data


def test_tail_reads_only_the_end_of_the_file_whatever_its_size():
    data = b"".join(b"line %d\n" % i for i in range(2_000_000))  # ~17 MB
    f = _Counting(data)
    assert tail_bytes(f, 3) == b"line 1999997\nline 1999998\nline 1999999\n"
    assert f.read_total <= 2 * 64 * 1024
    assert tail_bytes(io.BytesIO(b"a\nb"), 5) == b"a\nb"
    assert tail_bytes(io.BytesIO(b""), 5) == b""
    assert tail_bytes(io.BytesIO(b"a\nb\n"), 0) == b""
    assert tail_bytes(io.BytesIO(b"a\n\nb\n"), 2) == b"\nb\n"


def test_logs_of_a_job_whose_output_log_is_a_folder_is_one_line_exit_2(lfs):
    job = lfs.job("job_1", "run_x", "failed", exit_code=1)
    (job / "output.log").mkdir()
    for extra in ([], ["--tail", "5"]):
        proc = rltui("--batch", "logs", "job_1", *extra, "--root", str(lfs.root))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "is a folder" in proc.stderr and proc.stderr.count("\n") == 1
        assert "Traceback" not in proc.stderr


def test_a_state_json_without_times_is_not_running_forever(lfs):
    """Its keeper pid is alive but started after state.json was last written: not the keeper."""
    newer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        job = lfs.job("job_1", "run_x", "running", keeper_pid=newer.pid)
        state = json.loads((job / "state.json").read_text())
        for key in ("updated_at", "started_at"):
            del state[key]
        localfs.write_json_atomic(job / "state.json", state)
        old = time.time() - 600
        os.utime(job / "state.json", (old, old))
        snap = Index(lfs.layout).scan()
        assert snap.jobs["job_1"].orphaned
    finally:
        newer.kill()
        newer.wait()
