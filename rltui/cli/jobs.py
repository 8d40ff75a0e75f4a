"""Headless job commands: `rltui --batch train|resume|eval|stop|kill|logs|jobs|supervise`.

Usage:
    rltui --batch train --cfg CFG [--ckpt DIR] [--steps N] [--nproc N] [--gpus 0,1] [--auto-resume]
                        [--eval-after DATASET] [--detach] [--json]
    rltui --batch resume --training-run RUN [--from-step latest|N] [--additional-steps K] [--no-torchrun]
    rltui --batch eval --training-run RUN [--eval-dataset D] [--steps 1,5,10] [--subset-frac F]
    rltui --batch stop JOB | kill JOB | logs JOB [-f] [--tail N] | jobs [--json] | supervise [--once]

A launching command waits for its job, streams its output and exits with the job's result
(0 succeeded, 1 failed, 2 bad input, 130 stopped); `--detach` prints the job id and returns.
Ctrl-C while waiting asks the job to stop gracefully; a second Ctrl-C stops waiting at once and
leaves the job to its keeper.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable, TextIO

from rltui.jobs import builders, control
from rltui.errors import UsageError
from rltui.gpu import fmt
from rltui.jobs.records import Job, JobState
from rltui.runs.localfs import Layout
from rltui.jobs.policy import RestartSettings
from rltui.jobs.usage import TreeStats, tree_stats

POLL_S = 0.2
QUEUE_RETRY_S = 5.0


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("train", parents=parents, help="start a training run as a job",
                              description="Start a new training run as a supervised job.")
    p.add_argument("--cfg", required=True, help="training config (YAML)")
    p.add_argument("--ckpt", metavar="ADAPTER", help="warm-start from this LoRA adapter folder")
    p.add_argument("--steps", type=int, help="train this many steps (default: the config's)")
    p.add_argument("--nproc", type=int, default=1, help="processes (GPUs) under torchrun (default 1)")
    _launch_flags(p, training=True)
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("resume", parents=parents, help="resume a run from a checkpoint as a job",
                              description="Resume a training run from a complete checkpoint.")
    p.add_argument("--training-run", required=True, metavar="RUN")
    p.add_argument("--from-step", default="latest", help="latest (default) or a step number")
    p.add_argument("--additional-steps", type=int, metavar="K", help="train K steps past that step")
    p.add_argument("--no-torchrun", action="store_true", help="one process, even for a multi-GPU checkpoint")
    _launch_flags(p, training=True)
    p.set_defaults(func=cmd_resume)

    p = subparsers.add_parser("eval", parents=parents, help="evaluate a run's checkpoints as a job",
                              description="Evaluate checkpoints of a run in one process.")
    p.add_argument("--training-run", required=True, metavar="RUN")
    p.add_argument("--eval-dataset", metavar="D", help="dataset name under datasets/")
    p.add_argument("--steps", help="checkpoint steps, e.g. 1,5,10 (default: all)")
    p.add_argument("--subset-frac", type=float, metavar="F", help="evaluate this fraction of the test set")
    p.add_argument("--ckpt-path", metavar="DIR", help="evaluate the checkpoints under this folder")
    p.add_argument("--hang-timeout", type=float, default=600.0, metavar="S",
                   help="no progress for S seconds = hung: killed, the job fails "
                        "(default 600; 3x while the base model loads)")
    _launch_flags(p, training=False)
    p.set_defaults(func=cmd_eval)

    for name, func, what in (("stop", cmd_stop, "stop a job gracefully (save, then exit)"),
                             ("kill", cmd_kill, "kill a job's processes now (SIGKILL)")):
        p = subparsers.add_parser(name, parents=parents, help=what, description=what.capitalize() + ".")
        p.add_argument("job", metavar="JOB")
        p.add_argument("--wait", action="store_true", help="return when the job has ended")
        p.set_defaults(func=func)

    p = subparsers.add_parser("logs", parents=parents, help="print a job's output",
                              description="Print a job's output (stdout and stderr, keeper notes).")
    p.add_argument("job", metavar="JOB")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    p.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
    p.set_defaults(func=cmd_logs)

    p = subparsers.add_parser("jobs", parents=parents, help="list jobs",
                              description="List jobs: state, restarts, last reason, GPUs, usage.")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_jobs)

    p = subparsers.add_parser(
        "supervise", parents=parents, help="keep jobs going: reconcile, auto-resume, start queued",
        description="Run until stopped: mark jobs whose keeper died as lost, resume lost training "
                    "jobs whose policy asks for it (after a reboot too), start queued jobs when "
                    "GPUs free up. Put it under systemd or tmux.")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between passes (default 10)")
    p.add_argument("--once", action="store_true", help="one pass, then exit")
    p.set_defaults(func=cmd_supervise)


def _launch_flags(p: argparse.ArgumentParser, *, training: bool) -> None:
    p.add_argument("--gpus", help="GPU indexes, e.g. 0,1 (default: free ones, one per process); "
                                  "'none' runs on the CPU")
    if training:
        p.add_argument("--auto-resume", action="store_true",
                       help="after a crash or hang, resume from the latest checkpoint")
        p.add_argument("--max-restarts", type=int, default=3, help="with --auto-resume (default 3)")
        p.add_argument("--hang-timeout", type=float, default=600.0, metavar="S",
                       help="no progress for S seconds = hung (default 600; 3x while saving)")
        p.add_argument("--stop-grace", type=float, default=300.0, metavar="S",
                       help="on stop, wait S seconds for the trainer to save before signals (default 300)")
        p.add_argument("--eval-after", metavar="DATASET", help="when training succeeds, evaluate on DATASET")
    p.add_argument("--detach", action="store_true", help="print the job id and return at once")
    p.add_argument("--json", action="store_true", help="print the job record as JSON")


# ---------------------------------------------------------------- launching commands


def cmd_train(args: argparse.Namespace) -> int:
    layout = Layout(args.root)
    spec = builders.train_job(
        layout, args.cfg, ckpt=args.ckpt, steps=args.steps, nproc=args.nproc, gpus=_gpus(args.gpus),
        auto_resume=args.auto_resume, eval_after=args.eval_after, restart=_restart(args),
    )
    return _launch_and_wait(layout, spec, args)


def cmd_resume(args: argparse.Namespace) -> int:
    layout = Layout(args.root)
    spec = builders.resume_job(
        layout, args.training_run, from_step=args.from_step, additional_steps=args.additional_steps,
        no_torchrun=args.no_torchrun, gpus=_gpus(args.gpus), auto_resume=args.auto_resume,
        eval_after=args.eval_after, restart=_restart(args),
    )
    return _launch_and_wait(layout, spec, args)


def cmd_eval(args: argparse.Namespace) -> int:
    layout = Layout(args.root)
    spec = builders.eval_job(
        layout, args.training_run, dataset=args.eval_dataset, steps=args.steps,
        subset_frac=args.subset_frac, ckpt_path=args.ckpt_path, gpus=_gpus(args.gpus),
        hang_timeout_s=args.hang_timeout,
    )
    return _launch_and_wait(layout, spec, args)


def _gpus(text: str | None) -> str | int | None:
    if text is None:
        return None
    return 0 if text.strip().lower() == "none" else text


def _restart(args: argparse.Namespace) -> RestartSettings:
    try:
        return RestartSettings(
            auto_resume=args.auto_resume, max_restarts=args.max_restarts,
            hang_timeout_s=args.hang_timeout, save_hang_timeout_s=3 * args.hang_timeout,
            stop_grace_s=args.stop_grace,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None


def _launch_and_wait(layout: Layout, spec: Any, args: argparse.Namespace) -> int:
    job = control.launch(layout, spec)
    if args.detach:
        if args.json:
            print(json.dumps(job_json(job), indent=2))
        else:
            print(job.id)
        return 0
    sys.stderr.write(f"job {job.id} ({spec.title})" + (f", run {job.spec.run}" if job.spec.run else "")
                     + f": {job.phase.value if job.phase else 'unknown'}; "
                     f"output also in {layout.job_log(job.id)}\n")
    out = sys.stderr if args.json else sys.stdout
    job = wait_and_stream(layout, job.id, out)
    if args.json:
        print(json.dumps(job_json(job), indent=2))
    sys.stderr.write(summary_line(job) + "\n")
    return job.exit_status()


def wait_and_stream(layout: Layout, job_id: str, out: TextIO, *, follow_only: bool = False,
                    offset: int = 0, sleep: Callable[[float], None] = time.sleep) -> Job:
    """Copy the job's output to `out` until the job has ended; Ctrl-C asks it to stop, a second
    Ctrl-C returns at once (KeyboardInterrupt) and leaves the job to its keeper."""
    interrupted = False
    next_queue_try = time.monotonic() + QUEUE_RETRY_S
    while True:
        try:
            job = control.read_job(layout, job_id)
            offset = _copy_new(layout, job_id, offset, out)
            if job.phase is None or job.phase.final:
                _copy_new(layout, job_id, offset, out, final=True)
                return job
            if job.phase is JobState.QUEUED and time.monotonic() >= next_queue_try:
                control.start_queued(layout)
                next_queue_try = time.monotonic() + QUEUE_RETRY_S
            elif job.phase.active and job.state and control.keeper_gone(job.state):
                control.reconcile(layout)
            sleep(POLL_S)
        except KeyboardInterrupt:
            if interrupted or follow_only:
                sys.stderr.write(f"\nno longer waiting; job {job_id} is in its keeper's hands: "
                                 f"rltui --batch logs {job_id} -f\n")
                raise
            interrupted = True
            sys.stderr.write(f"\nstopping job {job_id} gracefully (Ctrl-C again to stop waiting)\n")
            try:
                control.stop(layout, job_id)
            except UsageError:
                pass


def _copy_new(layout: Layout, job_id: str, offset: int, out: TextIO, *, final: bool = False) -> int:
    """Copy whole lines written since `offset` (everything once the job has ended)."""
    try:
        with open(layout.job_log(job_id), "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return offset
    if not final:
        data = data[:max(data.rfind(b"\n"), data.rfind(b"\r")) + 1]
    if data:
        out.write(data.decode("utf-8", "replace"))
        out.flush()
    return offset + len(data)


def summary_line(job: Job) -> str:
    s = job.state
    if s is None:
        return f"job {job.id}: state unreadable ({job.error})"
    restarts = f", {s.restarts} restart(s)" if s.restarts else ""
    return f"job {job.id} {s.state.value}{restarts}: {s.last_reason or ''}".rstrip(": ")


# ---------------------------------------------------------------- control and reading


def cmd_stop(args: argparse.Namespace) -> int:
    return _control(args, control.stop, "stop requested")


def cmd_kill(args: argparse.Namespace) -> int:
    return _control(args, control.kill, "kill requested")


def _control(args: argparse.Namespace, action: Callable[[Layout, str], Job], what: str) -> int:
    layout = Layout(args.root)
    job = action(layout, args.job)
    print(f"job {job.id}: {what} ({job.phase.value if job.phase else 'unknown'})")
    if not args.wait:
        return 0
    while not (job.phase is None or job.phase.final):
        time.sleep(POLL_S)
        job = control.read_job(layout, args.job)
    print(summary_line(job))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    layout = Layout(args.root)
    if args.tail is not None and args.tail < 0:
        raise UsageError(f"bad --tail: {args.tail!r} (must be >= 0)")
    text = control.read_log(layout, args.job, tail_lines=args.tail)
    sys.stdout.write(text)
    sys.stdout.flush()
    if args.follow:
        job = wait_and_stream(layout, args.job, sys.stdout, follow_only=True,
                              offset=len(text.encode("utf-8")) if args.tail is None else _log_size(layout, args.job))
        sys.stderr.write(summary_line(job) + "\n")
    return 0


def _log_size(layout: Layout, job_id: str) -> int:
    try:
        return layout.job_log(job_id).stat().st_size
    except FileNotFoundError:
        return 0


def job_json(job: Job, resources: TreeStats | None = None) -> dict[str, Any]:
    """The `--json` form of a job: its spec and state as in job.json and state.json, and for a
    running job the CPU and memory of its processes now."""
    return {
        "id": job.id,
        "spec": job.spec.to_json() if job.spec else None,
        "state": job.state.to_json() if job.state else None,
        "resources": resources.__dict__.copy() if resources else None,
        "error": job.error,
    }


def cmd_jobs(args: argparse.Namespace) -> int:
    layout = Layout(args.root)
    found = control.list_jobs(layout)
    running = {j.id: j.state.child_pid for j in found if j.state and j.state.state.active}
    stats = tree_stats(running) if running else {}
    if args.json:
        print(json.dumps([job_json(j, stats.get(j.id)) for j in found], indent=2))
        return 0
    if not found:
        print(f"no jobs in {layout.jobs}")
        return 0
    print(f"{'JOB':<28} {'STATE':<10} {'RUN':<26} {'RESTARTS':>8} {'GPUS':<6} {'GPU-H':>6} "
          f"{'CPU%':>5} {'RSS MiB':>7}  LAST REASON")
    for j in found:
        s = j.state
        gpus = ",".join(map(str, s.gpus)) if s and s.gpus else "-"
        gpu_h = f"{s.usage.gpu_seconds / 3600:.2f}" if s else "-"
        t = stats.get(j.id)
        cpu = fmt(t.cpu_percent) if t else "-"
        rss = fmt(t.rss_mib) if t else "-"
        reason = (s.last_reason if s else j.error) or ""
        if s and s.restarts and s.last_restart_cause and s.last_restart_cause not in reason:
            reason += f" (last restart: {s.last_restart_cause})"
        run = (j.spec.run if j.spec else None) or "-"
        print(f"{j.id:<28} {(s.state.value if s else 'damaged'):<10} {run:<26} "
              f"{(s.restarts if s else 0):>8} {gpus:<6} {gpu_h:>6} {cpu:>5} {rss:>7}  {reason}")
    return 0


def cmd_supervise(args: argparse.Namespace) -> int:
    from rltui.jobs.supervise import supervise

    if args.interval <= 0:
        raise UsageError(f"bad --interval: {args.interval!r} (must be > 0)")
    return supervise(Layout(args.root), interval_s=args.interval, once=args.once)
