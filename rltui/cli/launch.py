"""Launching commands: `rltui --batch train|resume|eval`, each a supervised job.

Usage:
    rltui --batch train --cfg CFG [--ckpt DIR] [--steps N] [--nproc N] [--gpus 0,1] [--auto-resume]
                        [--eval-after DATASET] [--detach] [--json]
    rltui --batch resume RUN [--from-step latest|N] [--additional-steps K] [--no-torchrun]
    rltui --batch eval RUN [--eval-dataset D] [--steps 1,5,10] [--subset-frac F]

RUN may also be given as `--training-run RUN`, the trainer's own spelling (DESIGN.md).

A launching command waits for its job, streams its output and exits with the job's result
(0 succeeded, 1 failed, 2 bad input, 130 stopped); `--detach` prints the job id and returns.
Ctrl-C while waiting asks the job to stop gracefully; a second Ctrl-C stops waiting at once and
leaves the job to its keeper (rltui.cli.follow).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rltui.cli.backend_flags import add_backend_flags, apply_backend
from rltui.cli.follow import summary_line, wait_and_stream
from rltui.cli.live_archive import add_archive_flags, archive_plan, read_config, restore_for_resume
from rltui.cli.jobs import job_json
from rltui.errors import UsageError
from rltui.jobs import builders, control
from rltui.jobs.policy import RestartSettings
from rltui.runs.localfs import Layout


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
    _run_args(p)
    p.add_argument("--from-step", default="latest", help="latest (default) or a step number")
    p.add_argument("--additional-steps", type=int, metavar="K", help="train K steps past that step")
    p.add_argument("--no-torchrun", action="store_true", help="one process, even for a multi-GPU checkpoint")
    _launch_flags(p, training=True)
    p.set_defaults(func=cmd_resume)

    p = subparsers.add_parser("eval", parents=parents, help="evaluate a run's checkpoints as a job",
                              description="Evaluate checkpoints of a run in one process.")
    _run_args(p)
    p.add_argument("--eval-dataset", metavar="D",
                   help="SOURCE_TEMPLATE or SOURCE alone (arith, gsm8k: arith is built in, others "
                        "are read from ROOT/datasets/SOURCE/test.jsonl); default: the run's dataset")
    p.add_argument("--steps", help="checkpoint steps, e.g. 1,5,10 (default: all)")
    p.add_argument("--subset-frac", type=float, metavar="F", help="evaluate this fraction of the test set")
    p.add_argument("--ckpt-path", metavar="DIR", help="evaluate the checkpoints under this folder")
    p.add_argument("--hang-timeout", type=float, default=600.0, metavar="S",
                   help="no progress for S seconds = hung: killed, the job fails "
                        "(default 600; 3x while the base model loads)")
    _launch_flags(p, training=False)
    p.set_defaults(func=cmd_eval)


def _run_args(p: argparse.ArgumentParser) -> None:
    # `resume RUN` is what people type; `--training-run RUN` is what the trainer's own scripts say
    p.add_argument("run", nargs="?", metavar="RUN", help="the training run (or --training-run RUN)")
    p.add_argument("--training-run", metavar="RUN", help="the same as RUN")


def _run_name(args: argparse.Namespace) -> str:
    """The run a resume or eval names, positionally or with --training-run (the same one if both)."""
    if args.run and args.training_run and args.run != args.training_run:
        raise UsageError(f"bad --training-run: {args.training_run!r} (RUN already names {args.run!r})")
    run = args.run or args.training_run
    if not run:
        raise UsageError(f"{args.command} needs a run: rltui --batch {args.command} RUN (see `rltui --batch runs`)")
    return run


def _launch_flags(p: argparse.ArgumentParser, *, training: bool) -> None:
    p.add_argument("--gpus", metavar="0,1|none",
                   help="GPU indexes, e.g. 0,1 (default: free ones, one per process); "
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
        add_archive_flags(p, resume=p.prog.endswith(" resume"))
    add_backend_flags(p, training=training)
    p.add_argument("--detach", action="store_true", help="print the job id and return at once")
    p.add_argument("--json", action="store_true", help="print the job record as JSON")


def cmd_train(args: argparse.Namespace) -> int:
    layout = Layout(args.root)
    spec = builders.train_job(
        layout, args.cfg, ckpt=args.ckpt, steps=args.steps, nproc=args.nproc, gpus=_gpus(args.gpus),
        auto_resume=args.auto_resume, eval_after=args.eval_after, restart=_restart(args),
    )
    spec = spec.with_changes(archive=archive_plan(args, read_config(args.cfg)))
    return _launch_and_wait(layout, spec, args)


def cmd_resume(args: argparse.Namespace) -> int:
    layout = Layout(args.root)
    args.training_run = _run_name(args)
    if args.restore:
        restore_for_resume(layout, args.training_run, str(args.from_step))
    spec = builders.resume_job(
        layout, args.training_run, from_step=args.from_step, additional_steps=args.additional_steps,
        no_torchrun=args.no_torchrun, gpus=_gpus(args.gpus), auto_resume=args.auto_resume,
        eval_after=args.eval_after, restart=_restart(args),
    )
    spec = spec.with_changes(archive=archive_plan(args, read_config(layout.run_config(args.training_run))))
    return _launch_and_wait(layout, spec, args)


def cmd_eval(args: argparse.Namespace) -> int:
    layout = Layout(args.root)
    args.training_run = _run_name(args)
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
    # each flag named as the user typed it; a hang timeout of 0 would kill the job at once
    if not args.hang_timeout > 0 or args.hang_timeout == float("inf"):
        raise UsageError(f"bad --hang-timeout: {args.hang_timeout!r} (must be a finite number of seconds > 0)")
    if not 0 <= args.stop_grace < float("inf"):
        raise UsageError(f"bad --stop-grace: {args.stop_grace!r} (must be a finite number of seconds >= 0)")
    if args.max_restarts < 0:
        raise UsageError(f"bad --max-restarts: {args.max_restarts!r} (must be >= 0)")
    try:
        return RestartSettings(
            auto_resume=args.auto_resume, max_restarts=args.max_restarts,
            hang_timeout_s=args.hang_timeout, save_hang_timeout_s=3 * args.hang_timeout,
            stop_grace_s=args.stop_grace,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None


def _launch_and_wait(layout: Layout, spec: Any, args: argparse.Namespace) -> int:
    spec = apply_backend(layout, spec, args)
    job = control.launch(layout, spec)
    if args.detach:
        if args.json:
            print(json.dumps(job_json(job), indent=2))
        else:
            print(job.id)  # alone on stdout, for JOB=$(rltui --batch ... --detach)
            sys.stderr.write(f"job {job.id} ({spec.title})"
                             + (f", run {job.spec.run}" if job.spec.run else "")
                             + f"; follow it with: rltui --batch logs {job.id} -f\n")
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
