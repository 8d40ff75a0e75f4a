"""A small stand-in trainer for the job tests: real process, real files, real signals.

Usage:
    python fake_trainer.py --root ROOT --run-name RUN --steps N            (a new run)
    python fake_trainer.py --root ROOT --training-run RUN --from-step latest [--additional-steps K]

It writes the run's status.json at every step and phase and a real checkpoint (localfs staging,
training_info.json last, step_latest) every FAKE_SAVE_EVERY steps, and stops at a step boundary on
SIGTERM or the run's STOP file (exit 0, phase stopped), like the real trainer. Test settings:
FAKE_STEP_SLEEP (seconds a step takes), FAKE_STALL_AT_STEP (a fresh run, never a resumed one,
stops making progress at that step), FAKE_EXIT_AT_STEP / FAKE_EXIT_CODE (exit with that code),
FAKE_EXIT_AFTER_STEPS (every session exits with FAKE_EXIT_CODE after that many steps), FAKE_EXIT_ERROR
(the `fake_trainer: error: ...` line a fresh run, never a resumed one, prints before such an exit).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from rltui.runs import checkpoints, localfs, machine

stop_flag = False


def on_term(*_: object) -> None:
    global stop_flag
    stop_flag = True


def write_status(layout: localfs.Layout, run: str, step: int, target: int, phase: str,
                 latest: int | None) -> None:
    localfs.write_json_atomic(layout.run_status(run), {
        "run": run, "step": step, "target_step": target, "phase": phase, "pid": os.getpid(),
        "host": machine.this_host(), "time": time.time(), "started": time.time(),
        "world_size": 1, "latest_checkpoint": latest, "error": None, "parent": None,
    }, durable=False)


def save(layout: localfs.Layout, run: str, step: int, target: int) -> None:
    ts = layout.training_state(run)
    staging = checkpoints.staging_dir(ts, step)
    (staging / "model").mkdir()
    (staging / "model" / "adapter.bin").write_bytes(step.to_bytes(8, "little") * 64)
    checkpoints.finalize_checkpoint(staging, layout.step_dir(run, step),
                                {"step": step, "target_step": target, "world_size": 1})
    checkpoints.update_step_latest(ts, step)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--run-name")
    p.add_argument("--training-run")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--from-step")
    p.add_argument("--additional-steps", type=int)
    p.add_argument("--no-torchrun", action="store_true")
    a = p.parse_args()
    signal.signal(signal.SIGTERM, on_term)
    layout = localfs.Layout(a.root)
    run = a.run_name or a.training_run
    print(f"fake trainer pid {os.getpid()} argv {sys.argv[1:]}", flush=True)
    print(f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')}", flush=True)
    resumed = a.from_step is not None
    if resumed:
        start = checkpoints.resolve_step(layout.training_state(run), a.from_step)
        info = checkpoints.read_checkpoint_info(layout.step_dir(run, start))
        # as trainer.resume_training: K more past max(the checkpoint's target, the step)
        target = max(info["target_step"], start) + a.additional_steps if a.additional_steps else info["target_step"]
    else:
        start, target = 0, a.steps
    every = int(os.environ.get("FAKE_SAVE_EVERY", "1"))
    sleep = float(os.environ.get("FAKE_STEP_SLEEP", "0.05"))
    stall_at = int(os.environ.get("FAKE_STALL_AT_STEP", "-1"))
    exit_at = int(os.environ.get("FAKE_EXIT_AT_STEP", "-1"))
    after = int(os.environ.get("FAKE_EXIT_AFTER_STEPS", "0"))
    if after:
        exit_at = start + after + 1
    latest = start if resumed else None
    for step in range(start + 1, target + 1):
        if stop_flag or layout.stop_request(run).exists():
            if latest != step - 1:
                save(layout, run, step - 1, target)
            write_status(layout, run, step - 1, target, "stopped", step - 1)
            print(f"stopped at step {step - 1}", flush=True)
            return 0
        write_status(layout, run, step - 1, target, "training", latest)
        if step == stall_at and not resumed:
            print(f"stalling at step {step}", flush=True)
            while True:
                time.sleep(3600)
        if step == exit_at:
            print(f"exiting with code {os.environ.get('FAKE_EXIT_CODE', '3')} at step {step}", flush=True)
            if os.environ.get("FAKE_EXIT_ERROR") and not resumed:  # its one line on why, as rl_runner says it
                print(f"fake_trainer: error: {os.environ['FAKE_EXIT_ERROR']}", file=sys.stderr, flush=True)
            return int(os.environ.get("FAKE_EXIT_CODE", "3"))
        time.sleep(sleep)
        print(f"step {step}/{target}", flush=True)
        if step % every == 0 or step == target:
            write_status(layout, run, step, target, "saving", latest)
            save(layout, run, step, target)
            latest = step
    write_status(layout, run, target, target, "completed", latest)
    print("completed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
