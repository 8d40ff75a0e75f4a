"""A failed job says why in its process's own words: the last `PROG: error: ...` line or the
exception that ended a traceback (`rltui.jobs.output.cause_line`), kept in state.json as `cause`
and shown before the keeper's reason in `jobs`, `status` and the TUI's jobs pane
(`rltui.runs.records.job_reason`).

Before, a job that failed on a missing model read `failed: exit code 2 (bad input: flags, config
or paths)` everywhere but its log, whose line the TUI's log pane cut at 80 columns.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from jobs_helpers import fake_train_spec, wait_final, wait_until

from rltui.jobs import builders, control
from rltui.jobs.output import CAUSE_CHARS, cause_line
from rltui.jobs.policy import RestartSettings
from rltui.jobs.records import JobKind, JobSpec, JobState, read_state
from rltui.runs.records import job_reason
from rltui.text import has_controls

TRACEBACK = """step 3/10
Traceback (most recent call last):
  File "trainer/rl_runner.py", line 300, in <module>
    main()
  File "trainer/grpo.py", line 80, in step
    raise torch.OutOfMemoryError(msg)
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB
[rltui keeper 10:00:00] process ended: exit code 1
"""
TORCHRUN = """[rank0]: Traceback (most recent call last):
[rank0]:   File "trainer/rl_runner.py", line 300, in <module>
[rank0]:     main()
[rank0]: RuntimeError: NCCL error: unhandled system error
E1205 10:00:00 torch.distributed.elastic.multiprocessing.api: failed (exitcode: 1)
Traceback (most recent call last):
  File "/usr/bin/torchrun", line 8, in <module>
    sys.exit(main())
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
trainer/rl_runner.py FAILED
"""


def _cause(text: str) -> str | None:
    return cause_line(io.BytesIO(text.encode()))


@pytest.mark.parametrize("text, cause", [
    ("step 1\nrl_runner: error: base model acme/x is not in the cache\n[rltui keeper 1] failed\n",
     "rl_runner: error: base model acme/x is not in the cache"),
    (TRACEBACK, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"),
    (TORCHRUN, "RuntimeError: NCCL error: unhandled system error"),  # the rank's, not torchrun's
    ("Traceback (most recent call last):\n  File \"a.py\", line 1\nKeyboardInterrupt\n", "KeyboardInterrupt"),
    ("eval_batch: error: old\nTraceback (most recent call last):\n  File \"a\", line 1\nValueError: later\n",
     "ValueError: later"),  # whichever comes last
    ("step 1\nsome warning: Error handling is noisy\nRuntimeError: not after a traceback frame\n", None),
    ("\x1b[31mrl_runner: error: bad \x1b]0;title\x07value\r\n", "rl_runner: error: bad value"),
    (TORCHRUN + "srun: error: vm: task 0: Exited with exit code 1\n",
     "RuntimeError: NCCL error: unhandled system error"),  # Slurm's launcher sums up after its task
    ("srun: error: Unable to create step for job 12: Invalid generic resource (gres) specification\n"
     "srun: error: vm: task 0: Exited with exit code 1\n",
     "srun: error: Unable to create step for job 12: Invalid generic resource (gres) specification"),
    # the task said nothing: srun's first error line
    ("", None),
])
def test_the_cause_is_the_processs_last_error_line_or_the_exception_that_ended_it(text, cause) -> None:
    assert _cause(text) == cause


def test_a_cause_is_looked_for_only_after_where_the_attempt_began() -> None:
    earlier = b"rl_runner: error: the first attempt's\n"
    log = io.BytesIO(earlier + b"step 9\nexiting with code 7\n")
    assert cause_line(log) == "rl_runner: error: the first attempt's"
    assert cause_line(log, start=len(earlier)) is None
    assert cause_line(log, start=len(earlier) - 5) is None  # a cut line is not a line


def test_a_cause_is_one_safe_line_of_bounded_length() -> None:
    found = _cause("fetch: error: " + "x\x1b[2J" * 5000 + "\n")
    assert found is not None and len(found) == CAUSE_CHARS and found.endswith("…")
    assert not has_controls(found)


def test_the_shown_reason_puts_the_cause_first_only_while_failed_or_restarting() -> None:
    cause = "rl_runner: error: base model acme/x is not in the cache"
    assert (job_reason("failed", "exit code 2 (bad input: flags, config or paths)", cause)
            == "base model acme/x is not in the cache; exit code 2 (bad input: flags, config or paths)")
    assert job_reason("restarting", "exit code 1; restart 1 in 5s", "RuntimeError: boom") == \
        "RuntimeError: boom; exit code 1; restart 1 in 5s"
    assert job_reason("succeeded", "completed", cause) == "completed"
    assert job_reason("failed", "exit code 2", None) == "exit code 2"


@pytest.mark.slow
def test_a_crashed_job_shows_its_exception_in_jobs_status_and_the_index(layout) -> None:
    script = ("import sys; print('loading', flush=True); "
              "raise MemoryError('CUDA out of memory \\x1b[31mon GPU 0')")
    spec = JobSpec(id=builders.new_job_id(JobKind.FETCH), kind=JobKind.FETCH, title="crash",
                   argv=(sys.executable, "-c", script), gpu_count=0)
    control.launch(layout, spec)
    final = wait_final(layout, spec.id)
    assert final.state is JobState.FAILED and final.last_reason == "exit code 1"
    assert final.cause == "MemoryError: CUDA out of memory on GPU 0"

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "rltui.cli", "--root", str(layout.root), "--batch", *args],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    followed = subprocess.run([sys.executable, "-m", "rltui.cli", "--root", str(layout.root), "--batch", "logs",
                               spec.id, "-f"], capture_output=True, text=True, timeout=60, check=False)
    assert followed.stderr.splitlines()[-1] == (f"job {spec.id} failed: MemoryError: CUDA out of memory "
                                                "on GPU 0; exit code 1")
    row = next(line for line in cli("jobs").splitlines() if line.startswith(spec.id))
    assert row.endswith("MemoryError: CUDA out of memory on GPU 0; exit code 1")
    assert "MemoryError: CUDA out of memory on GPU 0; exit code 1" in cli("status")
    shown = json.loads(cli("status", "--json"))
    job = next(j for j in shown["jobs"] if j["id"] == spec.id)
    assert (job["last_reason"], job["cause"]) == ("exit code 1", "MemoryError: CUDA out of memory on GPU 0")


@pytest.mark.slow
def test_a_restarting_job_shows_why_and_a_clean_rerun_clears_it(layout) -> None:
    spec = fake_train_spec(layout, steps=50, env={"FAKE_EXIT_AFTER_STEPS": "2", "FAKE_EXIT_CODE": "7",
                                                  "FAKE_EXIT_ERROR": "NCCL watchdog timeout on rank 1"},
                           restart=RestartSettings(auto_resume=True, max_restarts=1, backoff_s=1.0,
                                                   stop_grace_s=10, kill_grace_s=2))
    control.launch(layout, spec)
    restarting = wait_until(lambda: (s := read_state(layout, spec.id)).state is JobState.RESTARTING and s,
                            what="restarting")
    assert restarting.cause == "fake_trainer: error: NCCL watchdog timeout on rank 1"
    assert job_reason("restarting", restarting.last_reason, restarting.cause).startswith(
        "NCCL watchdog timeout on rank 1; exit code 7; restart 1")
    final = wait_final(layout, spec.id)  # the resumed session exits 7 too, saying nothing
    assert final.state is JobState.FAILED and final.restarts == 1
    assert final.cause is None  # not the first session's line, still in output.log
    assert "NCCL watchdog" in control.read_log(layout, spec.id)

    fine = fake_train_spec(layout, steps=3)
    control.launch(layout, fine)
    done = wait_final(layout, fine.id)
    assert done.state is JobState.SUCCEEDED and done.cause is None


def test_the_waiting_commands_last_line_shows_a_hostile_state_files_cause_made_safe() -> None:
    from rltui.cli.follow import summary_line
    from rltui.jobs.records import Job, StateFile

    state = StateFile(JobState.FAILED, last_reason="exit code 1", cause="x: error: \x1b]0;owned\x07bad\x1b[2J")
    line = summary_line(Job(id="j1", dir=None, spec=None, state=state))  # type: ignore[arg-type]
    assert line == "job j1 failed: bad; exit code 1" and not has_controls(line)
