"""Only the job's own processes are ever signalled: a real unrelated process group whose id sits
in a stale state.json survives status, reconcile, stop and kill (issue 13)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from jobs_helpers import fake_train_spec, group_alive, wait_final, wait_until
from rltui.jobs import builders, control, ownership
from rltui.jobs.records import JobKind, JobSpec, JobState, StateFile, read_state, write_spec, write_state
from rltui.runs import machine


@pytest.fixture
def stranger():
    """An unrelated `sleep` in its own session: its pgid is what a stale record names."""
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def stale_record(layout, pgid: int, *, keeper_pid: int | None = None, pgid_start: int | None = None,
                 keeper_start: int | None = None) -> str:
    spec = fake_train_spec(layout)
    write_spec(layout, spec)
    write_state(layout, spec.id, StateFile(
        JobState.RUNNING, keeper_pid=keeper_pid or dead_pid(), keeper_start=keeper_start,
        child_pid=pgid, pgid=pgid, pgid_start=pgid_start, boot_time=machine.boot_time()))
    return spec.id


def rltui(layout, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rltui.cli", "--batch", *args, "--root", str(layout.root)],
                          capture_output=True, text=True, timeout=120)


def test_a_stale_record_naming_an_unrelated_group_never_kills_it(layout, stranger):
    job_id = stale_record(layout, stranger.pid, pgid_start=ownership.start_ticks(stranger.pid) + 1)
    proc = rltui(layout, "status")
    assert proc.returncode == 0, proc.stderr
    assert read_state(layout, job_id).state is JobState.LOST  # marking it lost is fine
    assert group_alive(stranger.pid) and stranger.poll() is None

    job2 = stale_record(layout, stranger.pid)  # no start time recorded: only the token could prove it
    assert control.reconcile(layout, leftovers=True) == [job2]
    assert stranger.poll() is None

    for verb in (control.stop, control.kill):
        job = stale_record(layout, stranger.pid)
        with pytest.raises(Exception):  # reconciled to lost first, then "already ended"
            verb(layout, job)
            verb(layout, job)
        assert stranger.poll() is None
    assert ownership.why_not_ours("x", stranger.pid, None, machine.boot_time()) is not None


def test_a_keeper_pid_now_naming_another_process_is_not_signalled(layout, stranger):
    # The record's keeper pid is the stranger's: same pid, other start time, not a keeper.
    job_id = stale_record(layout, dead_pid(), keeper_pid=stranger.pid,
                          keeper_start=ownership.start_ticks(stranger.pid) - 1)
    control.stop(layout, job_id)
    time.sleep(0.2)
    assert stranger.poll() is None
    assert read_state(layout, job_id).state is JobState.LOST
    job_id = stale_record(layout, dead_pid(), keeper_pid=stranger.pid)  # no start time: cmdline rule
    control.kill(layout, job_id)
    time.sleep(0.2)
    assert stranger.poll() is None


def test_the_jobs_own_leftovers_are_still_killed_once_its_keeper_is_gone(layout):
    # a job whose grandchild outlives the keeper (the child dies with it, by its death signal)
    script = ("import subprocess, sys, time; "
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
              "print('read' + 'y', flush=True); time.sleep(600)")
    spec = JobSpec(id=builders.new_job_id(JobKind.SYNC), kind=JobKind.SYNC, gpu_count=0,
                   argv=(sys.executable, "-c", script))
    control.launch(layout, spec)
    wait_until(lambda: "\nready\n" in control.read_log(layout, spec.id), what="the script to start")
    running = read_state(layout, spec.id)
    assert running.pgid_start == ownership.start_ticks(running.pgid)
    assert ownership.has_token(running.pgid, spec.id)
    os.kill(running.keeper_pid, signal.SIGKILL)
    wait_until(lambda: not machine.pid_alive(running.keeper_pid), 10, "the keeper to die")
    wait_until(lambda: not machine.pid_alive(running.pgid), 10, "the child to die with its keeper")
    assert ownership.group_members(running.pgid), "the grandchild is left over"
    control.reconcile(layout)  # read-only: marks it lost, signals nothing
    assert read_state(layout, spec.id).state is JobState.LOST
    assert ownership.group_members(running.pgid)
    control.kill(layout, spec.id)  # `kill` of a lost job: its proven leftovers
    wait_until(lambda: not group_alive(running.pgid), 10, "the job's group to be gone")


def test_a_group_whose_leader_is_gone_is_proven_by_a_members_token(layout):
    job = "20260101-000000-train-abcd"
    env = {**os.environ, ownership.JOB_ENV: job}
    # a leader that starts a member in its own group and exits at once
    leader = subprocess.Popen([sys.executable, "-c", "import subprocess; subprocess.Popen(['sleep', '300'])"],
                              env=env, start_new_session=True)
    leader.wait()
    pgid = leader.pid
    wait_until(lambda: ownership.group_members(pgid), 10, "the member")
    assert ownership.why_not_ours("someone-else", pgid, None, machine.boot_time()) is not None
    assert ownership.why_not_ours(job, pgid, None, machine.boot_time()) is None
    assert ownership.signal_job_group(job, pgid, None, machine.boot_time(), signal.SIGKILL)
    wait_until(lambda: not ownership.group_members(pgid), 10, "the member to die")
