"""`rltui --batch demo`: the whole supervised workflow on the built-in tiny model, on a CPU.

Usage:
    rltui [--root DIR] --batch demo [--steps 40] [--eval-subset 0.1]

Stages: build the tiny model and its warm-start adapter (first time only), train from the
warm-start as a job with auto-resume on, stop it gracefully mid-way, evaluate the saved
checkpoints, resume, kill the trainer with SIGKILL and let the keeper resume it, evaluate again,
print the consolidated metrics, back up to S3 when settings exist, and say how to open the TUI on
the demo's localfs. Every stage runs through the same job library as the TUI and `--batch`.
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO

from rltui.jobs import builders, control, ownership
from rltui.errors import UsageError, WorkFailed
from rltui.jobs.records import Job, JobState, read_state, with_code_root
from rltui.runs.localfs import Layout, read_json, read_last_jsonl, write_yaml_atomic
from rltui.runs.checkpoints import latest_complete_step
from rltui.text import clean
from rltui.runs.folders import eval_folders_of
from rltui.jobs.policy import RestartSettings

CONFIG_SOURCE = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
STAGE_TIMEOUT_S = 900.0
# On a GPU the tiny model's steps take ~17 ms: a slower look at the run would let the trainer pass
# the step the demo stops or kills at by a dozen steps or more, and finish before the stop lands.
POLL_S = 0.05


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "demo", parents=parents, help="the whole workflow on the built-in tiny model, on a CPU",
        description="Train, stop, evaluate, resume, survive a SIGKILL, evaluate again: the tiny "
                    "model on a CPU in a few minutes, as supervised jobs under --root.")
    p.add_argument("--steps", type=int, default=40, help="training steps (default 40; at least 12)")
    p.add_argument("--eval-subset", type=float, default=0.1, metavar="F",
                   help="fraction of the test set each evaluation scores (default 0.1)")
    p.add_argument("--gpus", default="none", metavar="none|auto",
                   help="'none' (default) runs every job on the CPU; 'auto' lets the launcher give "
                        "each job a free GPU, as `train` does")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    if args.steps < 12:
        raise UsageError(f"bad --steps: {args.steps} (the demo needs at least 12)")
    if not 0 < args.eval_subset <= 1:
        raise UsageError(f"bad --eval-subset: {args.eval_subset!r} (must be in (0, 1])")
    if args.gpus not in ("none", "auto"):
        raise UsageError(f"bad --gpus: {args.gpus!r} (the demo takes 'none' or 'auto')")
    plan = DemoPlan.for_steps(args.steps, args.eval_subset, gpus=0 if args.gpus == "none" else None)
    return Demo(Layout(args.root), plan).run()


@dataclass(frozen=True)
class DemoPlan:
    steps: int
    save_every: int
    stop_at: int  # ask the first session to stop once it has passed this step
    kill_at: int  # SIGKILL the resumed trainer once it has passed this step
    eval_subset: float
    gpus: int | None = 0  # 0: the CPU; None: the launcher gives each job a free GPU

    @classmethod
    def for_steps(cls, steps: int, eval_subset: float, gpus: int | None = 0) -> "DemoPlan":
        save_every = max(2, steps // 8)
        return cls(steps, save_every, stop_at=int(steps * 0.4), kill_at=int(steps * 0.7),
                   eval_subset=eval_subset, gpus=gpus)

    @property
    def device(self) -> str:
        return "the CPU" if self.gpus == 0 else "a free GPU per job"


class Demo:
    def __init__(self, layout: Layout, plan: DemoPlan, out: TextIO = sys.stdout) -> None:
        self.layout = layout
        self.plan = plan
        self.out = out
        self.stage_no = 0
        self.started = time.monotonic()
        self.offsets: dict[str, int] = {}

    def run(self) -> int:
        self.layout.ensure()
        self.say(f"rltui demo in {self.layout.root}: the tiny model on {self.plan.device}, "
                 "every step a supervised job")
        cfg = self.build_model()
        run = self.train(cfg)
        self.evaluate(run, "the checkpoints saved so far")
        self.resume_and_kill(run)
        self.evaluate(run, "the new checkpoints (the evaluated ones are skipped)")
        self.show_metrics(run)
        self.backup(run)
        self.closing(run)
        return 0

    # ------------------------------------------------------------ stages

    def build_model(self) -> Path:
        self.stage("build the tiny model and its warm-start adapter")
        t0 = time.monotonic()
        tiny = self.layout.models / "tiny"
        if not (tiny / "tiny_info.json").exists():
            self.say("building under models/tiny/ (first time only; a few minutes on a free CPU) ...")
        # torch runs in a child process: the manager never imports it
        self.run_child([sys.executable, "-m", "trainer.tiny", "--root", str(self.layout.root),
                        "--eval", "0"], "building the tiny model")
        base, self.warmstart = tiny / "base", tiny / "warmstart"
        if not (self.warmstart / "adapter_config.json").is_file():
            raise WorkFailed(f"demo: no warm-start adapter in {self.warmstart} after building the tiny model")
        self.say(f"tiny model ready ({time.monotonic() - t0:.0f}s): base {base}")
        self.say(f"warm-start adapter (a short supervised fine-tune): {self.warmstart}")
        return self.write_config()

    def run_child(self, argv: list[str], what: str) -> None:
        """Run `argv` to its end, its output shown indented (library warnings left out)."""
        env = with_code_root({**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"})
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL)
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = clean(raw.decode("utf-8", "replace").rstrip("\r\n"))
                if "Warning" not in line and "warnings.warn" not in line:
                    self.say(f"    {line}")
            code = proc.wait()
        finally:
            if proc.poll() is None:  # Ctrl-C: the child has its own SIGINT; make sure it ends
                proc.kill()
                proc.wait()
        if code != 0:
            raise WorkFailed(f"demo: {what} failed (exit {code}): {' '.join(argv)}")

    def write_config(self) -> Path:
        import yaml

        cfg = yaml.safe_load(CONFIG_SOURCE.read_text(encoding="utf-8"))
        cfg["training"].update(total_steps=self.plan.steps, save_every=self.plan.save_every,
                               keep_last=3, keep_every=self.plan.save_every * 2)
        path = self.layout.root / "demo" / "demo.yaml"
        write_yaml_atomic(path, cfg)
        self.say(f"config: {path} ({self.plan.steps} steps, a checkpoint every {self.plan.save_every})")
        return path

    def train(self, cfg: Path) -> str:
        self.stage("train from the warm-start as a job with auto-resume on, and stop it mid-way")
        spec = builders.train_job(self.layout, cfg, ckpt=self.warmstart, auto_resume=True, gpus=self.plan.gpus,
                              restart=RestartSettings(backoff_s=1.0, stop_grace_s=120))
        job = control.launch(self.layout, spec)
        run = job.spec.run
        self.say(f"job {job.id} started run {run}; the keeper runs it detached from this command")
        self.follow(job.id, run, until=lambda s: s >= self.plan.stop_at)
        self.say(f"past step {self.plan.stop_at}: asking the job to stop (the trainer finishes the step, "
                 "saves, exits 0)")
        control.stop(self.layout, job.id)
        final = self.follow(job.id, run)
        self.expect(final, JobState.STOPPED)
        status = read_json(self.layout.run_status(run))
        self.say(f"stopped at step {status['step']}; latest complete checkpoint: step "
                 f"{latest_complete_step(self.layout.training_state(run))}")
        return run

    def evaluate(self, run: str, what: str) -> None:
        self.stage(f"evaluate {what}")
        spec = builders.eval_job(self.layout, run, subset_frac=self.plan.eval_subset, gpus=self.plan.gpus)
        job = control.launch(self.layout, spec)
        self.say(f"job {job.id}: one process, one base-model load, {self.plan.eval_subset:g} of the test set")
        self.expect(self.follow(job.id, None, show_log=True), JobState.SUCCEEDED)

    def resume_and_kill(self, run: str) -> None:
        self.stage("resume, then kill the trainer with SIGKILL and let the keeper resume it")
        spec = builders.resume_job(self.layout, run, "latest", auto_resume=True, gpus=self.plan.gpus,
                               restart=RestartSettings(backoff_s=1.0))
        start = latest_complete_step(self.layout.training_state(run)) or 0
        job = control.launch(self.layout, spec)
        self.say(f"job {job.id}: {spec.title}")
        # status.json still shows the stopped session until the resumed trainer finishes a step:
        # wait for a step past the one it resumed from, so the kill hits the new process.
        kill_after = max(self.plan.kill_at, start + 1)
        self.follow(job.id, run, until=lambda s: s >= kill_after)
        pid = read_state(self.layout, job.id).child_pid
        if pid is None:
            raise WorkFailed(f"demo: job {job.id} has no running trainer to kill")
        self.say(f"past step {kill_after}: kill -9 {pid} (the trainer, as the OOM killer would)")
        if not ownership.has_token(pid, job.id):  # only the job's own process (issue 13)
            raise WorkFailed(f"demo: process {pid} is no longer job {job.id}'s; nothing was signalled")
        os.kill(pid, signal.SIGKILL)
        final = self.follow(job.id, run)
        self.expect(final, JobState.SUCCEEDED)
        state = final.state
        self.say(f"the keeper resumed it {state.restarts} time(s): "
                 + "; ".join(r for r in state.reasons if "restart" in r))
        status = read_json(self.layout.run_status(run))
        self.say(f"run {run} {status['phase']} at step {status['step']} of {status['target_step']}")

    def show_metrics(self, run: str) -> None:
        self.stage("consolidated metrics (every evaluated step, one row each)")
        for path in [f / "consolidated_metrics.csv" for _d, f in eval_folders_of(self.layout, run)]:
            if not path.is_file():
                continue
            self.say(str(path))
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            cols = ["step", "accuracy", "format_rate", "mean_reward", "n"]
            self.out.write("    " + "  ".join(f"{c:>12}" for c in cols) + "\n")
            for row in rows:
                self.out.write("    " + "  ".join(f"{_short(row.get(c, '')):>12}" for c in cols) + "\n")

    def backup(self, run: str) -> None:
        self.stage("back up to S3")
        from rltui.archive.settings import load_settings

        try:
            load_settings()
        except UsageError as e:
            self.say(f"skipped: no S3 settings ({e}). Put them in ~/.lambda_s3.env to back runs up.")
            return
        job = control.launch(self.layout, builders.sync_job(self.layout, "backup", run))
        self.say(f"job {job.id}: backing up {run}")
        self.expect(self.follow(job.id, None, show_log=True), JobState.SUCCEEDED)

    def closing(self, run: str) -> None:
        if self.plan.gpus != 0:
            for job in control.list_jobs(self.layout):
                if job.state is not None and job.state.gpus:
                    u = job.state.usage
                    peak = "n/a" if u.peak_gpu_mem_mib is None else f"{u.peak_gpu_mem_mib:.0f} MiB"
                    util = "n/a" if u.mean_gpu_util is None else f"{u.mean_gpu_util:.0f}%"
                    self.say(f"job {job.id}: GPUs {job.state.gpus}, {u.gpu_seconds:.0f} GPU-seconds, "
                             f"peak {peak}, mean utilisation {util}")
        minutes = (time.monotonic() - self.started) / 60
        self.say(f"demo finished in {minutes:.1f} min. Everything is in {self.layout.root}:")
        self.say(f"  rltui --root {self.layout.root}                      the TUI on the demo's localfs")
        self.say(f"  rltui --root {self.layout.root} --batch status       runs, checkpoints, evals, jobs")
        self.say(f"  rltui --root {self.layout.root} --batch jobs         every job of the demo")

    # ------------------------------------------------------------ helpers

    def follow(self, job_id: str, run: str | None, until: Callable[[int], bool] | None = None,
               show_log: bool = False) -> Job:
        """Report progress until `until(step)` holds or the job ends; returns the job then.

        Shows the job's whole output with `show_log`, else only the keeper's notes and the steps.
        """
        deadline = time.monotonic() + STAGE_TIMEOUT_S
        shown_step = -1
        offset = self.offsets.get(job_id, 0)
        while time.monotonic() < deadline:
            job = control.read_job(self.layout, job_id)
            offset = self.offsets[job_id] = self._copy_log(job_id, offset, keeper_only=not show_log)
            step = self._step(run) if run else None
            if step is not None and step != shown_step:
                shown_step = step
                self.progress(run, step)
                if until is not None and until(step):
                    return job
            if job.phase is None or job.phase.final:
                self.offsets[job_id] = self._copy_log(job_id, offset, keeper_only=not show_log)
                if until is not None:
                    self.expect(job, JobState.RUNNING)
                return job
            time.sleep(POLL_S)
        raise WorkFailed(f"demo: job {job_id} took longer than {STAGE_TIMEOUT_S:.0f}s; "
                         f"see rltui --root {self.layout.root} --batch logs {job_id}")

    def progress(self, run: str, step: int) -> None:
        last = read_last_jsonl(self.layout.train_log(run)) or {}
        reward = last.get("reward_mean") if last.get("step") == step else None
        tail = f" reward {reward:.3f}" if isinstance(reward, (int, float)) else ""
        self.say(f"  step {step}/{self.plan.steps}{tail}")

    def _step(self, run: str) -> int | None:
        try:
            status = read_json(self.layout.run_status(run))
        except Exception:
            return None
        step = status.get("step") if isinstance(status, dict) else None
        return step if isinstance(step, int) else None

    def _copy_log(self, job_id: str, offset: int, keeper_only: bool) -> int:
        try:
            with open(self.layout.job_log(job_id), "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return offset
        data = data[:data.rfind(b"\n") + 1]
        for line in data.decode("utf-8", "replace").splitlines():
            if keeper_only and not line.startswith("[rltui keeper"):
                continue
            if "Warning" not in line and "warnings.warn" not in line:
                self.out.write(f"    {line}\n")
        self.out.flush()
        return offset + len(data)

    def expect(self, job: Job, want: JobState) -> None:
        if job.phase is not want:
            reason = job.state.shown_reason if job.state else job.error
            raise WorkFailed(f"demo: job {job.id} is {job.phase.value if job.phase else 'unreadable'}, "
                             f"expected {want.value} ({reason}); see rltui --root {self.layout.root} "
                             f"--batch logs {job.id}")

    def stage(self, title: str) -> None:
        self.stage_no += 1
        self.out.write(f"\n== {self.stage_no}. {title}\n")
        self.out.flush()

    def say(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()


def _short(value: str) -> str:
    try:
        f = float(value)
    except ValueError:
        return value
    return str(int(f)) if f.is_integer() else f"{f:.3f}"
