"""Continue a training run from a saved step, exactly.

Usage:
    python -m trainer.resume_training --training-run RUN --from-step latest|N
        [--additional-steps K] [--no-torchrun] [--nproc N] [--allow-world-size-change] [--root ROOT]

Checks that the checkpoint is complete (naming every missing or wrong-size file), then runs
`trainer.rl_runner` from it: under torchrun with the run's world size (`--nproc` to say it
explicitly), or in this process's place with `--no-torchrun`. Targets: a plain resume continues
to the run's target (as the checkpoint recorded it: the original, or the last extension);
`--additional-steps K` extends that target by K (from the step resumed, if it is already past it),
so a run stopped at 58 of 150 and resumed with K=3 ends at 153. The run keeps every target it had
(`target_history` in status.json and training_info.json: the original first, then each extension).

Resuming from a step older than the run's newest complete checkpoint never touches that run: a
new run is forked (its own folder, a copy of the chosen checkpoint, `parent: {run, step}` in its
status.json) and continues there. Exit 2 with one line for any bad request.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from rltui.runs import checkpoints, localfs, writer_lock
from trainer.errors import ConfigError
from trainer.runfiles import PROVENANCE, RESOLVED_CONFIG, existing_run_dir, verify_checkpoint
from trainer.runlog import RunStatus
from trainer.session import claim_run



def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m trainer.resume_training",
                                description=__doc__.split("\n")[0])
    p.add_argument("--training-run", required=True, help="run folder name under training_runs/")
    p.add_argument("--from-step", default="latest", help="'latest' or a step number")
    p.add_argument("--additional-steps", type=int, help="train this many steps past the checkpoint")
    p.add_argument("--no-torchrun", action="store_true", help="run in this process, no torchrun")
    p.add_argument("--nproc", type=int, help="processes for torchrun (default: the run's world size)")
    p.add_argument("--allow-world-size-change", action="store_true",
                   help="continue at another world size (not bitwise identical)")
    p.add_argument("--wait-for-lock", action="store_true",
                   help="wait while another process writes the run, instead of refusing (exit 2)")
    p.add_argument("--root", help="localfs root (default: $LOCALFS_ROOT, else ~/localfs)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        command = plan(args)
    except ConfigError as e:
        print(f"resume_training: error: {e}", file=sys.stderr)
        return 2
    sys.stdout.flush()
    # signals from the keeper reach the trainer directly; the run's writer lock goes with the exec
    os.execv(sys.executable, command)
    return 1  # not reached


def plan(args: argparse.Namespace) -> list[str]:
    """Validate the request, fork when needed; the command line that continues the run."""
    root = localfs.resolve_root(args.root)
    layout = localfs.Layout(root)
    run = args.training_run
    existing_run_dir(layout, run)
    lock = claim_run(layout, run, args.wait_for_lock)  # before "latest" is resolved
    try:
        command, lock = _plan_locked(args, root, layout, run, lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    if lock is not None:
        os.environ.update(lock.hand_off_env())
    return command


def _plan_locked(args: argparse.Namespace, root: Path, layout: localfs.Layout, run: str,
                 lock: writer_lock.WriterLock | None) -> tuple[list[str], writer_lock.WriterLock | None]:
    state = layout.training_state(run)
    step = resolve_from_step(state, run, args.from_step)
    info = verify_checkpoint(state / localfs.step_dir_name(step), run)
    world = int(info.get("world_size", 1))
    nproc = 1 if args.no_torchrun else (args.nproc if args.nproc is not None else world)
    if nproc < 1:
        raise ConfigError(f"--nproc {nproc}: must be >= 1")
    if nproc != world and not args.allow_world_size_change:
        how = "--no-torchrun runs 1 process" if args.no_torchrun else f"--nproc {nproc}"
        raise ConfigError(f"run {run} step {step} was saved with world size {world}, but {how}; "
                          "pass --allow-world-size-change to continue anyway (not bitwise identical)")
    target = target_step(info, step, args.additional_steps, run)
    newest = checkpoints.latest_complete_step(state)
    if newest is not None and step < newest:
        run, child_lock = fork_run(layout, run, step)
        if lock is not None:
            lock.release()  # the parent was only read; the new run is the one written
        lock = child_lock
        print(f"step {step} is older than {args.training_run}'s newest checkpoint (step {newest}): "
              f"continuing in a new run", flush=True)
    runner = ["-m", "trainer.rl_runner", "--root", str(root), "--resume-run", run,
              "--resume-step", str(step), "--target-step", str(target)]
    if args.allow_world_size_change:
        runner.append("--allow-world-size-change")
    # `run: RUN` is printed by trainer.rl_runner, once, whether or not the run was forked
    if args.no_torchrun:
        return [sys.executable, *runner], lock
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
            f"--nproc_per_node={nproc}", *runner], lock


def resolve_from_step(state: Path, run: str, spec: str) -> int:
    if not (spec == "latest" or spec.isdigit()):
        raise ConfigError(f"bad --from-step {spec!r} (use 'latest' or a step number)")
    # the one rule for 'latest' (rltui.runs.checkpoints.resolve_step): the newest complete
    # checkpoint, even where a crash left step_latest behind it
    try:
        step = checkpoints.resolve_step(state, spec)
    except FileNotFoundError:
        raise ConfigError(f"run {run} has no complete checkpoint to resume from") from None
    if not (state / localfs.step_dir_name(step)).is_dir():
        have = [s for s, _ in checkpoints.list_step_dirs(state)]
        raise ConfigError(f"run {run} has no checkpoint step_{step} (steps: "
                          f"{', '.join(map(str, have)) or 'none'})")
    return step


def target_step(info: dict, step: int, additional: int | None, run: str) -> int:
    target = int(info.get("target_step", step))
    if additional is not None:
        if additional < 1:
            raise ConfigError(f"--additional-steps {additional}: must be >= 1")
        return max(target, step) + additional
    if target <= step:
        raise ConfigError(f"run {run} already reached its target step {target} at step {step}; "
                          "pass --additional-steps K to train further")
    return target


def fork_run(layout: localfs.Layout, parent: str, step: int) -> tuple[str, writer_lock.WriterLock]:
    """A new run holding a copy of parent's step_N (sealed like any checkpoint) and its config;
    returned with its writer lock, taken before anything is written in it."""
    child = localfs.create_run_dir(layout)
    lock = writer_lock.acquire(layout.run_dir(child))
    for name in ("config.yaml", RESOLVED_CONFIG, PROVENANCE):
        source = layout.run_dir(parent) / name
        if source.exists():
            localfs.write_bytes_atomic(layout.run_dir(child) / name, source.read_bytes())
    state = layout.training_state(child)
    staging = checkpoints.staging_dir(state, step)
    source_dir = layout.step_dir(parent, step)
    shutil.copytree(source_dir, staging, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(localfs.CHECKPOINT_INFO))
    info = {k: v for k, v in checkpoints.read_checkpoint_info(source_dir).items()
            if k not in ("files", "created", "host")}
    info.update(run=child, parent={"run": parent, "step": step})
    checkpoints.finalize_checkpoint(staging, layout.step_dir(child, step), info)
    checkpoints.update_step_latest(state, step)
    status = RunStatus(run=child, target_step=info.get("target_step"), world_size=info.get("world_size"),
                       step=step, latest_checkpoint=step, parent={"run": parent, "step": step})
    localfs.write_json_atomic(layout.run_status(child), status.as_json())
    return child, lock


if __name__ == "__main__":
    sys.exit(main())
