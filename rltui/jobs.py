"""Jobs: build a job's spec, launch it through the keeper, and stop, kill, list or read it.

    spec = jobs.train_job(layout, "configs/tiny.yaml", steps=20, auto_resume=True)
    job = jobs.launch(layout, spec)            # -> Job; the keeper now runs it, detached
    jobs.stop(layout, job.id)                  # graceful: stop request, grace period, signals

The builders (`train_job`, `resume_job`, `eval_job`, `sync_job`) are pure: they validate their
input (UsageError naming the bad value) and return a JobSpec; nothing touches the disk until
`launch`. The TUI and the batch mode share them. Every job runs under `python -m rltui.keeper`,
started detached in a new session so it outlives the launcher (docs/ARCHITECTURE.md, jobs).
"""

from __future__ import annotations

import argparse

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from rltui import gpu, gpu_assign
from rltui.errors import UsageError, WorkFailed
from rltui.gpu import Sampler
from rltui.job_records import (
    FollowUp, Job, JobKind, JobSpec, JobState, StateFile, auto_resume_override_path,
    effective_auto_resume, read_job, read_state, with_code_root, write_spec, write_state,
)
from rltui.localfs import (
    BadName, DamagedFile, Layout, boot_time, checkpoint_problems, create_run_dir, pid_alive, read_json,
    resolve_step, this_host, validate_dataset_name, validate_name, write_json_atomic,
)
from rltui.restart_policy import RestartSettings
from rltui.sync_to_s3 import ACTIONS as SYNC_ACTIONS
from rltui.sync_to_s3 import check_flags as check_sync_flags

PY = sys.executable
NCCL_TIMEOUT_ENV = "RLTUI_NCCL_TIMEOUT_S"
KEEPER_START_GRACE_S = 60.0
KEEPER_PID_WAIT_S = 10.0  # stop/kill of a job whose keeper is starting waits this long for its pid


# ---------------------------------------------------------------- builders (pure)


def train_job(
    layout: Layout, cfg: str | os.PathLike[str], ckpt: str | os.PathLike[str] | None = None,
    steps: int | None = None, nproc: int = 1, gpus: int | Sequence[int] | None = None,
    auto_resume: bool = False, eval_after: str | None = None, restart: RestartSettings | None = None,
) -> JobSpec:
    """A new training run. `launch` creates the run folder and adds `--run-name RUN`."""
    cfg_path = _existing(cfg, "--cfg", want_dir=False)
    nproc = _positive(nproc, "--nproc")
    argv = _trainer_head(nproc, "trainer.rl_runner") + ["--cfg", cfg_path]
    if ckpt is not None:
        argv += ["--ckpt", _existing(ckpt, "--ckpt", want_dir=True)]
    if steps is not None:
        argv += ["--steps", str(_positive(steps, "--steps"))]
    argv += ["--root", str(layout.root)]
    gpu_list, gpu_count = gpu_assign.parse_request(gpus, nproc)
    return JobSpec(
        id=new_job_id(JobKind.TRAIN), kind=JobKind.TRAIN, argv=tuple(argv),
        title=f"train {Path(cfg_path).name}" + (f" {steps} steps" if steps else ""),
        env=_distributed_env(nproc, restart or RestartSettings()), cwd=os.getcwd(),
        gpus=gpu_list, gpu_count=gpu_count, nproc=nproc,
        restart=_with_auto_resume(restart, auto_resume), followups=_eval_followups(eval_after),
    )


def resume_job(
    layout: Layout, run: str, from_step: str | int = "latest", additional_steps: int | None = None,
    no_torchrun: bool = False, gpus: int | Sequence[int] | None = None, auto_resume: bool = False,
    eval_after: str | None = None, restart: RestartSettings | None = None,
) -> JobSpec:
    """Resume `run` from a complete checkpoint, to its target or `additional_steps` further."""
    step = _checkpoint_step(layout, run, from_step)
    info = _checkpoint_info(layout, run, step)
    world = 1 if no_torchrun else max(1, int(info.get("world_size") or 1))
    argv = [PY, "-m", "trainer.resume_training", "--training-run", run, "--from-step", str(from_step)]
    if additional_steps is not None:
        argv += ["--additional-steps", str(_positive(additional_steps, "--additional-steps"))]
    if no_torchrun or world == 1:
        argv += ["--no-torchrun"]
    argv += ["--root", str(layout.root)]
    gpu_list, gpu_count = gpu_assign.parse_request(gpus, world)
    settings = _with_auto_resume(restart, auto_resume)
    return JobSpec(
        id=new_job_id(JobKind.RESUME), kind=JobKind.RESUME, argv=tuple(argv), run=run,
        title=f"resume {run} from step {step}"
        + (f" +{additional_steps}" if additional_steps else ""),
        env=_distributed_env(world, settings), cwd=os.getcwd(), gpus=gpu_list, gpu_count=gpu_count,
        nproc=world, restart=settings, resume_argv=tuple(resume_argv(layout, run, world)),
        followups=_eval_followups(eval_after),
    )


def eval_job(
    layout: Layout, run: str, dataset: str | None = None, steps: str | Sequence[int] | None = None,
    subset_frac: float | None = None, ckpt_path: str | os.PathLike[str] | None = None,
    gpus: int | Sequence[int] | None = None, hang_timeout_s: float = 600.0,
) -> JobSpec:
    """Evaluate checkpoints of `run` (all, or `steps`) on `dataset`.

    No progress in its eval_status.json for `hang_timeout_s` (3x while the base model loads)
    and the keeper kills it; the job fails, and a new one skips the steps already evaluated.
    """
    if not hang_timeout_s > 0:
        raise UsageError(f"bad --hang-timeout: {hang_timeout_s!r} (must be > 0 seconds)")
    validate_name(run, "run name")
    if not (layout.run_dir(run).is_dir() or layout.legacy_run_dir(run).is_dir() or ckpt_path):
        raise UsageError(f"no such training run: {run!r} (not in {layout.training_runs})")
    argv = [PY, "-m", "evaluator.eval_batch", "--training-run", run]
    if dataset is not None:
        argv += ["--eval-dataset", _dataset(dataset, "--eval-dataset")]
    if steps is not None:
        argv += ["--steps", ",".join(str(s) for s in parse_steps(steps))]
    if subset_frac is not None:
        if not 0 < float(subset_frac) <= 1:
            raise UsageError(f"bad --subset-frac: {subset_frac!r} (must be in (0, 1])")
        argv += ["--subset-frac", repr(float(subset_frac))]
    if ckpt_path is not None:
        argv += ["--ckpt-path", _existing(ckpt_path, "--ckpt-path", want_dir=True)]
    argv += ["--root", str(layout.root)]
    gpu_list, gpu_count = gpu_assign.parse_request(gpus, 1)
    return JobSpec(
        id=new_job_id(JobKind.EVAL), kind=JobKind.EVAL, argv=tuple(argv), run=run,
        title=f"eval {run}" + (f" on {dataset}" if dataset else ""), cwd=os.getcwd(),
        gpus=gpu_list, gpu_count=gpu_count,
        restart=RestartSettings(hang_timeout_s=hang_timeout_s, save_hang_timeout_s=3 * hang_timeout_s),
    )


def sync_job(
    layout: Layout, action: str, run: str | None = None, cleanup: bool = False,
    keep_latest: bool = False,
) -> JobSpec:
    """An S3 archive action (rltui.sync_to_s3); needs no GPU."""
    if action not in SYNC_ACTIONS:
        raise UsageError(f"bad --action: {action!r} (choose from {', '.join(SYNC_ACTIONS)})")
    # The archive's own flag rules, so a job is never created that sync_to_s3 would refuse.
    check_sync_flags(argparse.Namespace(
        action=action, training_run=run, cleanup=cleanup, keep_latest=keep_latest,
        dry_run=False, force=False, json=False,
    ))
    argv = [PY, "-m", "rltui.sync_to_s3", "--action", action]
    if run:
        argv += ["--training-run", validate_name(run, "run name")]
    if cleanup:
        argv += ["--cleanup"]
    if keep_latest:
        argv += ["--keep-latest"]
    argv += ["--root", str(layout.root)]
    return JobSpec(
        id=new_job_id(JobKind.SYNC), kind=JobKind.SYNC, argv=tuple(argv), run=run,
        title=f"sync {action}" + (f" {run}" if run else ""), cwd=os.getcwd(), gpu_count=0,
    )


def resume_argv(layout: Layout, run: str, nproc: int) -> list[str]:
    """What a restart of a training job runs: resume from the latest complete checkpoint.

    The keeper appends `--additional-steps K` when the run's target lies beyond the checkpoint's.
    """
    argv = [PY, "-m", "trainer.resume_training", "--training-run", run, "--from-step", "latest"]
    if nproc == 1:
        argv += ["--no-torchrun"]
    return argv + ["--root", str(layout.root)]


def parse_steps(steps: str | Sequence[int]) -> list[int]:
    items = steps.split(",") if isinstance(steps, str) else list(steps)
    out = []
    for s in items:
        try:
            n = int(str(s).strip())
        except ValueError:
            raise UsageError(f"bad --steps: {steps!r} (use step numbers like 1,5,10)") from None
        if n < 0:
            raise UsageError(f"bad --steps: {steps!r} (steps are >= 0)")
        out.append(n)
    if not out:
        raise UsageError(f"bad --steps: {steps!r} (empty)")
    return out


def new_job_id(kind: JobKind) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{kind.value}-{secrets.token_hex(2)}"


def _trainer_head(nproc: int, module: str) -> list[str]:
    if nproc == 1:
        return [PY, "-m", module]
    return [PY, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", module]


def _distributed_env(nproc: int, settings: RestartSettings) -> dict[str, str]:
    """NCCL settings that turn a silent hang into an error well before the keeper's hang timeout."""
    if nproc <= 1:
        return {}
    timeout = max(30, int(settings.hang_timeout_s * 0.5))
    return {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1", NCCL_TIMEOUT_ENV: str(timeout)}


def _with_auto_resume(restart: RestartSettings | None, auto_resume: bool) -> RestartSettings:
    base = restart or RestartSettings()
    if auto_resume and not base.auto_resume:
        return RestartSettings.from_json({**base.to_json(), "auto_resume": True})
    return base


def _eval_followups(dataset: str | None) -> tuple[FollowUp, ...]:
    if dataset is None:
        return ()
    return (FollowUp(JobKind.EVAL, _dataset(dataset, "--eval-after")),)


def _dataset(name: str, flag: str) -> str:
    try:
        return validate_dataset_name(name)
    except BadName as e:
        raise UsageError(f"bad {flag}: {e}") from None


def _existing(path: str | os.PathLike[str], flag: str, *, want_dir: bool) -> str:
    p = Path(os.path.expanduser(str(path))).absolute()
    if want_dir and not p.is_dir():
        raise UsageError(f"bad {flag}: {str(path)!r} is not a folder")
    if not want_dir and not p.is_file():
        raise UsageError(f"bad {flag}: {str(path)!r} is not a file")
    return str(p)


def _positive(n: int, flag: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UsageError(f"bad {flag}: {n!r} (must be a whole number >= 1)")
    return n


def _checkpoint_step(layout: Layout, run: str, from_step: str | int) -> int:
    validate_name(run, "run name")
    if not layout.run_dir(run).is_dir():
        raise UsageError(f"no such training run: {run!r} (not in {layout.training_runs})")
    try:
        step = resolve_step(layout.training_state(run), from_step)
    except BadName:
        raise UsageError(f"bad --from-step: {from_step!r} (use 'latest' or a step number)") from None
    except FileNotFoundError:
        raise UsageError(f"run {run} has no complete checkpoint to resume from") from None
    problems = checkpoint_problems(layout.step_dir(run, step))
    if problems:
        raise UsageError(f"bad --from-step: step {step} of {run} is not complete ({problems[0]})")
    return step


def _checkpoint_info(layout: Layout, run: str, step: int) -> dict:
    try:
        info = read_json(layout.step_dir(run, step) / "training_info.json")
    except Exception:
        return {}
    return info if isinstance(info, dict) else {}


# ---------------------------------------------------------------- launching


def launch(
    layout: Layout, spec: JobSpec, sampler: Sampler | None = None, *, check_usage: bool = True,
) -> Job:
    """Write the job's record and start its keeper, or leave it queued until GPUs are free.

    A train job without a run gets a fresh run folder here (`--run-name RUN`). `check_usage`
    False trusts the job records alone (a follow-up on GPUs its parent just released).
    """
    snapshot = gpu_assign.snapshot_for(spec, sampler)
    gpu_assign.check_possible(spec, snapshot)
    layout.ensure()
    if spec.kind is JobKind.TRAIN and spec.run is None:
        run = create_run_dir(layout)
        spec = spec.with_changes(
            run=run, argv=spec.argv + ("--run-name", run),
            resume_argv=tuple(resume_argv(layout, run, spec.nproc)),
        )
    layout.job_dir(spec.id).mkdir(parents=True)
    write_spec(layout, spec)
    with gpu_assign.lock(layout):
        state = StateFile(JobState.QUEUED, run=spec.run, host=this_host(), boot_time=boot_time())
        state.note("queued: waiting for GPUs")
        write_state(layout, spec.id, state)
        gpus = gpu_assign.try_assign(layout, spec, snapshot, check_usage=check_usage)
        if gpus is not None:
            _start(layout, spec, state, gpus)
    return read_job(layout, spec.id)


def start_queued(layout: Layout, sampler: Sampler | None = None) -> list[str]:
    """Start every queued job whose GPUs are free now, oldest first; returns their ids."""
    started = []
    queued = [j for j in list_jobs(layout) if j.phase is JobState.QUEUED and j.spec]
    if not queued:
        return started
    snapshot = None
    if any(gpu_assign.needs_snapshot(j.spec) for j in queued):
        snapshot = (sampler or gpu.default_sampler()).sample()
    with gpu_assign.lock(layout):
        held = gpu_assign.held_gpus(layout)  # read once; what this pass assigns is added
        for job in queued:
            try:
                state = read_state(layout, job.id)
            except (FileNotFoundError, DamagedFile):
                continue
            if state.state is not JobState.QUEUED:
                continue
            gpus = gpu_assign.try_assign(layout, job.spec, snapshot, held=held)
            if gpus is not None:
                _start(layout, job.spec, state, gpus)
                held.update(gpus)
                started.append(job.id)
    return started


def _start(layout: Layout, spec: JobSpec, state: StateFile, gpus: list[int]) -> None:
    """Mark the job starting on `gpus` and start its keeper detached (caller holds the GPU lock)."""
    state.state = JobState.STARTING
    state.gpus = gpus or None
    state.note("starting" + (f" on GPU {','.join(map(str, gpus))}" if gpus else ""))
    write_state(layout, spec.id, state)
    env = with_code_root(dict(os.environ))
    with open(layout.job_log(spec.id), "ab") as log:
        detacher = subprocess.Popen(
            [PY, "-m", "rltui.keeper", "--detach", str(layout.job_dir(spec.id))],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, cwd=spec.cwd or None, env=env,
        )
    detacher.wait()  # it forks the keeper and exits at once, so no zombie is left behind


# ---------------------------------------------------------------- control and reading


def list_jobs(layout: Layout) -> list[Job]:
    """Every job under jobs/, oldest first; damaged records show their error."""
    try:
        names = sorted(e.name for e in os.scandir(layout.jobs) if e.is_dir() and not e.name.startswith("."))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        try:
            out.append(read_job(layout, name))
        except BadName:
            continue
    return out


def get_job(layout: Layout, job_id: str) -> Job:
    try:
        validate_name(job_id, "job id")
    except BadName as e:
        raise UsageError(str(e)) from None
    if not layout.job_dir(job_id).is_dir():
        raise UsageError(f"no such job: {job_id!r} (not in {layout.jobs})")
    return read_job(layout, job_id)


def stop(layout: Layout, job_id: str) -> Job:
    """Ask a job to stop gracefully: its keeper asks the process, waits, then signals the group."""
    return _signal_keeper(layout, job_id, signal.SIGTERM, "stop requested by the user")


def kill(layout: Layout, job_id: str) -> Job:
    """Kill a job's whole process group now (SIGKILL), through its keeper when it has one."""
    return _signal_keeper(layout, job_id, signal.SIGUSR1, "killed by the user")


def _signal_keeper(layout: Layout, job_id: str, sig: signal.Signals, why: str) -> Job:
    job = get_job(layout, job_id)
    with gpu_assign.lock(layout):
        state = read_state(layout, job_id)
        if state.state is JobState.QUEUED:
            state.state = JobState.STOPPED
            state.ended_at = time.time()
            state.note(f"{why} while queued")
            write_state(layout, job_id, state)
            return read_job(layout, job_id)
    # Just launched: the keeper has not written its pid yet. A signal needs it, so wait for it.
    deadline = time.monotonic() + KEEPER_PID_WAIT_S
    while (not state.state.final and not state.keeper_pid and keeper_gone(state) is None
           and time.monotonic() < deadline):
        time.sleep(0.05)
        state = read_state(layout, job_id)
    if state.state.final:
        raise UsageError(f"job {job_id} has already ended ({state.state.value})")
    if not state.keeper_pid and keeper_gone(state) is None:
        raise WorkFailed(f"job {job_id}: its keeper has not started after {KEEPER_PID_WAIT_S:g}s; "
                         "nothing was signalled, try again")
    if keeper_gone(state) is None and state.keeper_pid:
        os.kill(state.keeper_pid, sig)
    else:
        reconcile(layout)
        if sig == signal.SIGUSR1 and state.pgid and state.boot_time == boot_time():
            _killpg(state.pgid, signal.SIGKILL)
    return read_job(layout, job.id)


def toggle_auto_resume(layout: Layout, job_id: str) -> bool:
    """Turn auto-resume of a training job on or off after launch; returns the new setting.

    job.json stays as written; the override lives in `auto_resume.json`, which the keeper reads
    before each restart decision and `supervise` before resuming a lost job.
    """
    job = get_job(layout, job_id)
    if job.spec is None or not job.spec.kind.trains:
        raise UsageError(f"job {job_id} is not a training job; auto-resume applies to train and resume jobs")
    if job.state is not None and job.state.state.final and job.state.state is not JobState.LOST:
        raise UsageError(f"job {job_id} has already ended ({job.state.state.value})")
    new = not effective_auto_resume(layout, job.spec)
    write_json_atomic(auto_resume_override_path(layout, job_id), {"auto_resume": new})
    return new


def keeper_gone(state: StateFile, now: float | None = None) -> str | None:
    """Why the keeper of an active job is gone, or None while it lives."""
    now = time.time() if now is None else now
    booted = boot_time()
    if state.boot_time and booted and abs(state.boot_time - booted) > 2:
        return "the machine rebooted since the job started"
    if not state.keeper_pid:
        if now - (state.updated_at or 0) > KEEPER_START_GRACE_S:
            return "its keeper never started"
        return None
    if not pid_alive(state.keeper_pid):
        return f"its keeper (pid {state.keeper_pid}) is gone"
    cmdline = _cmdline(state.keeper_pid)
    if cmdline is not None and "rltui.keeper" not in cmdline:
        return f"its keeper's pid {state.keeper_pid} now belongs to another process"
    return None


def reconcile(layout: Layout) -> list[str]:
    """Mark lost every active job whose keeper is gone; returns their ids. Cheap: state files only."""
    lost = []
    try:
        names = [e.name for e in os.scandir(layout.jobs) if e.is_dir() and not e.name.startswith(".")]
    except FileNotFoundError:
        return lost
    active = {s.value for s in JobState if s.active}
    for name in names:
        try:
            raw = read_json(layout.job_state(name))
            if not isinstance(raw, dict) or raw.get("state") not in active:
                continue  # most jobs have ended: skip building their records
            state = StateFile.from_json(raw)  # the file just read, not a second read
        except (FileNotFoundError, DamagedFile, BadName, KeyError, TypeError, ValueError):
            continue
        why = keeper_gone(state)
        if why is None:
            continue
        try:
            state = read_state(layout, name)  # a keeper that just ended wrote its final state
        except Exception:
            continue
        if not state.state.active:
            continue
        if state.pgid and "rebooted" not in why:
            _killpg(state.pgid, signal.SIGKILL)  # leftovers of a job nobody supervises any more
        state.state = JobState.LOST
        state.ended_at = time.time()
        state.note(f"lost: {why}")
        write_state(layout, name, state)
        lost.append(name)
    return lost


def reconcile_at_start(root: Path) -> list[str]:
    """`rltui` and every `--batch` command call this first; it never makes a command fail."""
    try:
        return reconcile(Layout(root))
    except OSError:
        return []


def read_log(layout: Layout, job_id: str, tail_lines: int | None = None) -> str:
    get_job(layout, job_id)
    try:
        data = layout.job_log(job_id).read_bytes()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", "replace")
    if tail_lines is not None:
        text = "".join(text.splitlines(keepends=True)[-tail_lines:])
    return text


def process_owners(layout: Layout) -> dict[int, tuple[str | None, str | None]]:
    """pid -> (job id, run) for every process in the tree of an active job's command."""
    from rltui.usage import owners_by_pid

    return owners_by_pid((job.id, job.state.run, job.state.child_pid) for job in list_jobs(layout)
                         if job.state and job.state.state.active)


def gpu_snapshot(layout: Layout, sampler: Sampler | None = None) -> "gpu.GpuSnapshot":
    """A GPU snapshot whose processes name their job and run (for `status` and the TUI)."""
    snap = (sampler or gpu.default_sampler()).sample()
    return gpu.attribute(snap, process_owners(layout)) if snap.gpus else snap


def _killpg(pgid: int, sig: int) -> None:
    if pgid <= 1:
        return
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _cmdline(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return None
