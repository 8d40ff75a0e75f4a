"""What bench/faults.py's cases share: decoy process groups, stale job records, the watch that
checks every checkpoint seen complete by sha256 at the end, and the stand-in trainer's job.

    decoys = Decoys(); p = decoys.spawn()        # a `sleep` in its own session, never ours
    job_id = stale_job(layout, p)                 # a state.json naming that group
    watch = Watch(layout, run); watch.poll(); watch.settle(row)
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rltui.jobs import builders, ownership  # noqa: E402
from rltui.jobs.policy import RestartSettings  # noqa: E402
from rltui.jobs.records import JobKind, JobSpec, JobState, StateFile, read_state, write_spec, write_state  # noqa: E402
from rltui.runs import checkpoints, localfs, machine  # noqa: E402

FAKE = str(REPO / "tests" / "jobs" / "fake_trainer.py")
PY = sys.executable

@dataclass
class Row:
    case: str
    runs: int = 0
    verified: int = 0
    lost_bytes: int = 0
    stray: int = 0
    refused: int = 0
    notes: list[str] = field(default_factory=list)


class Decoys:
    """Unrelated process groups that rltui must never signal."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def spawn(self) -> subprocess.Popen:
        p = subprocess.Popen(["sleep", "3600"], start_new_session=True)
        self.procs.append(p)
        return p

    def dead(self) -> int:
        return sum(p.poll() is not None for p in self.procs)

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


def dead_pid() -> int:
    p = subprocess.Popen([PY, "-c", "pass"])
    p.wait()
    return p.pid


def stale_job(layout: localfs.Layout, decoy: subprocess.Popen, keeper_is_decoy: bool = False) -> str:
    run = localfs.create_run_dir(layout)
    spec = JobSpec(id=builders.new_job_id(JobKind.TRAIN), kind=JobKind.TRAIN, run=run, argv=("true",),
                   resume_argv=(PY, FAKE, "--root", str(layout.root), "--training-run", run,
                                "--from-step", "latest"),
                   gpu_count=0, restart=RestartSettings(auto_resume=True))
    write_spec(layout, spec)
    start = ownership.start_ticks(decoy.pid)
    state = StateFile(JobState.RUNNING, run=run, boot_time=machine.boot_time(),
                      keeper_pid=decoy.pid if keeper_is_decoy else dead_pid(),
                      keeper_start=(start - 1) if keeper_is_decoy and start else None,
                      pgid=decoy.pid, child_pid=decoy.pid, pgid_start=(start + 1) if start else None)
    write_state(layout, spec.id, state)
    return spec.id


class Watch:
    """Checkpoints of one run seen complete while it runs (their manifest sizes)."""

    def __init__(self, layout: localfs.Layout, run: str) -> None:
        self.state = layout.training_state(run)
        self.seen: dict[int, int] = {}

    def poll(self) -> None:
        for step, path in checkpoints.list_step_dirs(self.state):
            if step not in self.seen and checkpoints.is_complete(path):
                try:
                    info = checkpoints.read_checkpoint_info(path)
                    self.seen[step] = sum(int(m.get("size", 0)) for m in info.get("files", {}).values())
                except Exception:
                    continue

    def settle(self, row: Row) -> None:
        self.poll()
        for step, size in sorted(self.seen.items()):
            problems = checkpoints.checkpoint_problems(self.state / localfs.step_dir_name(step), verify_hash=True)
            if problems:
                row.lost_bytes += size
                row.notes.append(f"step {step}: {problems[0]}")
            else:
                row.verified += 1


def wait(pred, timeout: float, poll=None) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        if poll:
            poll()
        time.sleep(0.1)
    raise TimeoutError("timed out")


def final_state(layout: localfs.Layout, job_id: str) -> StateFile | None:
    try:
        s = read_state(layout, job_id)
    except Exception:
        return None
    return s if s.state.final else None


def fake_job(layout: localfs.Layout, steps: int, env: dict[str, str]) -> JobSpec:
    run = localfs.create_run_dir(layout)
    return JobSpec(
        id=builders.new_job_id(JobKind.TRAIN), kind=JobKind.TRAIN, run=run, title="fault campaign",
        argv=(PY, FAKE, "--root", str(layout.root), "--run-name", run, "--steps", str(steps)),
        resume_argv=(PY, FAKE, "--root", str(layout.root), "--training-run", run, "--from-step", "latest"),
        env={"FAKE_STEP_SLEEP": "0.05", **env}, gpu_count=0,
        restart=RestartSettings(auto_resume=True, backoff_s=0.2, max_restarts=10),
    )
