"""Inside a Slurm allocation: what one start of a job runs, and what its end means.

Usage (from the batch script jobs/JOB_ID/slurm.sh, never by hand):
    python -m rltui.jobs.backends.slurm_attempt begin JOB_DIR     writes JOB_DIR/attempt.argv
    python -m rltui.jobs.backends.slurm_attempt term JOB_DIR      prints the grace (user stop) or nothing
    python -m rltui.jobs.backends.slurm_attempt end JOB_DIR RC    exits with the job's exit code

Each step appends one line to `JOB_DIR/attempts.jsonl` ({"event": begin|term|end, ...}); the
manager reads it beside Slurm's own state (rltui.jobs.backends.slurm). Standard library only, and
only the on-disk contract: it runs on a compute node with the trainer, not the manager.

The command is idempotent: a new training run's first start trains it (`--run-name RUN`); every
later start (a requeue: Slurm's restart count > 0, or a run that already has a checkpoint)
resumes it from its newest complete checkpoint to the same target. Nothing runs once that
checkpoint is the final one, once Slurm's restart count exceeds `max_restarts`, or after the
user asked to stop.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rltui.errors import UsageError
from rltui.jobs import output
from rltui.jobs.backends.slurm_script import BEGIN_NOTHING_TO_DO
from rltui.jobs.records import JobKind, JobSpec
from rltui.runs import checkpoints, localfs

ATTEMPTS = "attempts.jsonl"
ARGV_FILE = "attempt.argv"
STOP_MARK = "stop_request.json"  # written by `rltui stop` (manager side)
KILL_MARK = "kill_request.json"
MODULES = ("trainer.rl_runner", "trainer.resume_training", "evaluator.eval_batch")


def read_attempts(job_dir: Path) -> list[dict[str, Any]]:
    try:
        return list(localfs.iter_jsonl(job_dir / ATTEMPTS))
    except FileNotFoundError:
        return []


def module_args(argv: tuple[str, ...] | list[str]) -> list[str]:
    """`-m MODULE ARGS...` of a job's argv, without the interpreter or a torchrun head."""
    for i in range(len(argv) - 1):
        if argv[i] == "-m" and argv[i + 1] in MODULES:
            return list(argv[i:])
    raise ValueError(f"no trainer or evaluator module in {list(argv)!r}")


def flag_value(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args[:-1]):
        if a == flag:
            return args[i + 1]
    return None


class Attempt:
    def __init__(self, job_dir: Path) -> None:
        self.dir = Path(job_dir)
        self.spec = JobSpec.from_json(localfs.read_json(self.dir / "job.json"))
        self.layout = localfs.Layout(self.dir.parent.parent)
        self.restart = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        self.history = read_attempts(self.dir)
        self.cause: str | None = None  # set by `end`: the failed start's own line on why

    def record(self, event: str, **fields: Any) -> None:
        line = {"event": event, "time": time.time(), "restart": self.restart,
                "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "host": socket.gethostname(), **fields}
        localfs.append_jsonl(self.dir / ATTEMPTS, line)
        self.history.append(line)

    def say(self, text: str) -> None:
        print(f"[rltui {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    @property
    def run(self) -> str | None:
        return self.spec.run

    # ------------------------------------------------------------ begin

    def begin(self) -> int:
        if (self.dir / STOP_MARK).exists() or (self.dir / KILL_MARK).exists():
            return self._skip("the user asked this job to stop", BEGIN_NOTHING_TO_DO)
        budget = self.spec.restart.max_restarts
        if self.restart > budget:
            return self._skip(f"restart budget spent: Slurm restart {self.restart} > max_restarts {budget}", 1)
        if not self.spec.kind.trains:
            return self._go(module_args(self.spec.argv), None, None)
        state = self.layout.training_state(self.run)
        latest = checkpoints.latest_complete_step(state)
        target = self._target(latest)
        if latest is None:
            if self.spec.kind is JobKind.TRAIN and not self.layout.run_status(self.run).exists():
                return self._go(module_args(self.spec.argv), None, None)
            return self._skip(f"run {self.run} has no complete checkpoint to resume from "
                              "(the first start ended before its step-0 checkpoint)", 1)
        if target is not None and latest >= target:
            return self._skip(f"run {self.run} already holds its final checkpoint (step {latest})",
                              BEGIN_NOTHING_TO_DO)
        args = ["-m", "trainer.rl_runner", "--root", str(self.layout.root), "--resume-run", self.run,
                "--resume-step", str(latest)]
        if target is not None:
            args += ["--target-step", str(target)]
        return self._go(args, latest, target)

    def _target(self, latest: int | None) -> int | None:
        """The run's target: fixed by the first start of a resume job, else the checkpoint's."""
        for event in self.history:
            if event.get("event") == "begin" and event.get("target_step") is not None:
                return int(event["target_step"])
        if latest is None:
            return None
        if self.spec.kind is JobKind.RESUME:
            extra = flag_value(list(self.spec.argv), "--additional-steps")
            if extra is not None:
                return latest + int(extra)
        try:
            info = checkpoints.read_checkpoint_info(self.layout.step_dir(self.run, latest))
            return int(info["target_step"])
        except (OSError, ValueError, KeyError, TypeError, localfs.DamagedFile):
            return None

    def _go(self, args: list[str], resume_step: int | None, target: int | None) -> int:
        localfs.write_bytes_atomic(self.dir / ARGV_FILE, b"\0".join(a.encode() for a in args) + b"\0")
        what = "starting" if resume_step is None else f"resuming {self.run} from step {resume_step}"
        self.record("begin", argv=args, resume_step=resume_step, target_step=target,
                    nodes=os.environ.get("SLURM_JOB_NODELIST"), log_offset=output.output_size(self.layout, self.spec.id))
        self.say(f"{what} (Slurm job {os.environ.get('SLURM_JOB_ID')}, restart {self.restart}, "
                 f"nodes {os.environ.get('SLURM_JOB_NODELIST')})")
        return 0

    def _skip(self, why: str, code: int) -> int:
        self.record("begin", skipped=why, exit_code=0 if code == BEGIN_NOTHING_TO_DO else code)
        self.say(("nothing to run: " if code == BEGIN_NOTHING_TO_DO else "not starting: ") + why)
        return code

    # ------------------------------------------------------------ term

    def term(self) -> str:
        """Forward TERM as the run's stop request; the grace to wait for a user's stop, or ""."""
        user = (self.dir / STOP_MARK).exists()
        if self.spec.kind.trains and self.run:
            localfs.write_text_atomic(self.layout.stop_request(self.run), "stop requested by Slurm's TERM\n")
        cause = "stop requested by the user" if user else "TERM from Slurm (time limit, requeue or scancel)"
        self.record("term", cause=cause)
        self.say(f"{cause}: the trainer saves at its next step boundary" if self.spec.kind.trains
                 else f"{cause}: stopping the evaluation")
        return f"{self.spec.restart.stop_grace_s:g}" if user else ""

    # ------------------------------------------------------------ end

    def _cause(self) -> str | None:
        """The process's own line on why this start failed (`output.cause_line`), read from
        where the start's begin said the log then ended: not an earlier start's line."""
        begins = [e for e in self.history if e.get("event") == "begin"]  # this start's is last
        start = begins[-1].get("log_offset") if begins else None
        try:
            with output.open_output(self.layout, self.spec.id) as f:
                return output.cause_line(f, start=start if isinstance(start, int) else 0)
        except (OSError, UsageError):
            return None

    def end(self, rc: int) -> int:
        self.cause = self._cause() if rc != 0 and not (self.dir / STOP_MARK).exists() else None
        if not self.spec.kind.trains:
            return self._ended(rc, "succeeded" if rc == 0 else "failed",
                               "evaluation finished" if rc == 0 else f"evaluation exited with code {rc}")
        status = localfs.read_json_or_none(self.layout.run_status(self.run)) or {}
        phase, step = status.get("phase"), status.get("step")
        latest = checkpoints.latest_complete_step(self.layout.training_state(self.run))
        if (self.dir / STOP_MARK).exists():
            return self._ended(0 if rc == 0 else rc, "stopped", f"stopped by the user; saved at step {latest}")
        if rc == 0 and phase == "completed":
            return self._ended(0, "succeeded", f"completed at step {step}")
        if rc == 2:
            return self._ended(2, "failed", "the trainer refused its input (exit 2)")
        saved = rc == 0 and phase == "stopped"
        why = (f"saved at step {latest} on Slurm's TERM (time limit)" if saved
               else f"the trainer exited with code {rc} at step {step}")
        if self._may_requeue(latest):
            return self._requeue(why)
        if saved:
            return self._ended(0, "stopped", why + "; resume to continue")
        return self._ended(rc or 1, "failed", why)

    def _may_requeue(self, latest: int | None) -> bool:
        s = self.spec.restart
        target = self._target(latest)
        return (_effective_auto_resume(self.dir, s.auto_resume) and self.restart < s.max_restarts
                and latest is not None and (target is None or latest < target))

    def _requeue(self, why: str) -> int:
        n = self.restart + 1
        self.record("end", outcome="requeued", reason=f"{why}; requeued (restart {n}/"
                    f"{self.spec.restart.max_restarts})", cause=self.cause)
        self.say(f"{why}; requeueing (restart {n} of at most {self.spec.restart.max_restarts})")
        jid = os.environ.get("SLURM_JOB_ID", "")
        done = subprocess.run(["scontrol", "requeue", jid], capture_output=True, text=True)
        if done.returncode != 0:
            self.say(f"scontrol requeue {jid} failed: {done.stderr.strip()}")
            return 1
        return 0

    def _ended(self, code: int, outcome: str, reason: str) -> int:
        self.record("end", outcome=outcome, reason=reason, exit_code=code,
                    cause=self.cause if outcome == "failed" else None)
        self.say(f"{outcome}: {reason}")
        return code


def _effective_auto_resume(job_dir: Path, default: bool) -> bool:
    """The user's later toggle (auto_resume.json), else job.json's setting."""
    d = localfs.read_json_or_none(job_dir / "auto_resume.json") if (job_dir / "auto_resume.json").exists() else None
    value = d.get("auto_resume") if isinstance(d, dict) else None
    return value if isinstance(value, bool) else default


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0] not in ("begin", "term", "end"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    attempt = Attempt(Path(argv[1]))
    if argv[0] == "begin":
        return attempt.begin()
    if argv[0] == "term":
        print(attempt.term())
        return 0
    return attempt.end(int(argv[2]) if len(argv) > 2 else 1)


if __name__ == "__main__":
    sys.exit(main())
