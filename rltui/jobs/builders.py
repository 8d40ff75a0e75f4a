"""Job builders: turn what a user asked for (flags, a TUI form) into a JobSpec, validated.

    spec = builders.train_job(layout, "configs/tiny.yaml", steps=20, auto_resume=True)
    job = control.launch(layout, spec)

The builders (`train_job`, `resume_job`, `eval_job`, `sync_job`) validate their input (UsageError
naming the bad value) and return a JobSpec; nothing is written until `control.launch`.
`train_job` has the trainer's own parser read the config, in a child (`python -m trainer.config`:
the manager never imports trainer/). The TUI and the batch mode share them.
"""

from __future__ import annotations

import errno
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from rltui.archive.flags import check_flags as check_sync_flags
from rltui.jobs import gpu_assign
from rltui.errors import UsageError
from rltui.jobs.records import (
    ArchivePlan,
    FollowUp,
    JobKind,
    JobSpec,
    unended_jobs,
)
from rltui.runs.localfs import (
    BadName,
    DamagedFile,
    Layout,
    read_json,
    validate_name,
)
from rltui.runs import writer_lock
from rltui.text import clean
from rltui.runs.checkpoints import checkpoint_problems, latest_complete_step, list_step_dirs, resolve_step
from rltui.jobs.policy import RestartSettings

PY = sys.executable
NCCL_TIMEOUT_ENV = "RLTUI_NCCL_TIMEOUT_S"
CONFIG_CHECK_S = 30.0  # the config's check in a child (~0.1 s); one slower is left to the trainer


# ---------------------------------------------------------------- builders (they write nothing)


def train_job(
    layout: Layout, cfg: str | os.PathLike[str], ckpt: str | os.PathLike[str] | None = None,
    steps: int | None = None, nproc: int = 1, gpus: int | Sequence[int] | None = None,
    auto_resume: bool = False, eval_after: str | None = None, restart: RestartSettings | None = None,
) -> JobSpec:
    """A new training run. `launch` creates the run folder and adds `--run-name RUN`."""
    cfg_path = _utf8_text(_existing(cfg, "--cfg", want_dir=False), cfg, "--cfg")
    nproc = _positive(nproc, "--nproc")
    argv = trainer_command(nproc, "trainer.rl_runner") + ["--cfg", cfg_path]
    if ckpt is not None:
        argv += ["--ckpt", _existing(ckpt, "--ckpt", want_dir=True)]
    if steps is not None:
        argv += ["--steps", str(_positive(steps, "--steps"))]
    argv += ["--root", str(layout.root)]
    gpu_list, gpu_count = gpu_assign.parse_request(gpus, nproc)
    _valid_config(cfg_path)
    return JobSpec(
        id=new_job_id(JobKind.TRAIN), kind=JobKind.TRAIN, argv=tuple(argv),
        title=f"train {Path(cfg_path).name}" + (f" {steps} steps" if steps else ""),
        env=_distributed_env(nproc, restart or RestartSettings()), cwd=os.getcwd(),
        gpus=gpu_list, gpu_count=gpu_count, nproc=nproc,
        restart=_with_auto_resume(restart, auto_resume), followups=_eval_followups(eval_after, layout),
    )


def resume_job(
    layout: Layout, run: str, from_step: str | int = "latest", additional_steps: int | None = None,
    no_torchrun: bool = False, gpus: int | Sequence[int] | None = None, auto_resume: bool = False,
    eval_after: str | None = None, restart: RestartSettings | None = None,
) -> JobSpec:
    """Resume `run` from a complete checkpoint, to its target or `additional_steps` further.

    "latest" is resolved here, once (rltui.runs.checkpoints.resolve_step: the newest complete
    checkpoint), and the job runs `--from-step N` with that number: its title names the step
    it resumes."""
    step = _checkpoint_step(layout, run, from_step)
    info = _checkpoint_info(layout, run, step)
    world = 1 if no_torchrun else max(1, int(info.get("world_size") or 1))
    if additional_steps is not None:
        _positive(additional_steps, "--additional-steps")
    else:
        _short_of_target(info, run, step)
    _no_writer(layout, run)
    newest = latest_complete_step(layout.training_state(run))
    if newest is None or step >= newest:  # an older step forks a new run: this one is only read
        _no_training_job(layout, run)
    template = resume_argv(layout, run, world)
    argv = resume_command(layout, template, run, step, additional_steps=additional_steps)
    gpu_list, gpu_count = gpu_assign.parse_request(gpus, world)
    settings = _with_auto_resume(restart, auto_resume)
    return JobSpec(
        id=new_job_id(JobKind.RESUME), kind=JobKind.RESUME, argv=tuple(argv), run=run,
        title=f"resume {run} from step {step}"
        + (f" +{additional_steps}" if additional_steps else ""),
        env=_distributed_env(world, settings), cwd=os.getcwd(), gpus=gpu_list, gpu_count=gpu_count,
        nproc=world, restart=settings, resume_argv=tuple(template),
        followups=_eval_followups(eval_after, layout),
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
        dataset = _dataset(dataset, "--eval-dataset", layout)
        argv += ["--eval-dataset", dataset]
        layout.eval_dir(run, dataset)  # BadName now, not in the job, if the folder name is too long
    if steps is not None:
        wanted = parse_steps(steps)
        if ckpt_path is None and layout.run_dir(run).is_dir():
            _check_steps(layout, run, wanted)
        argv += ["--steps", ",".join(str(s) for s in wanted)]
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
    keep_latest: bool = False, follow_job: str | None = None, archive: ArchivePlan | None = None,
    dry_run: bool = False, force: bool = False, json: bool = False,
) -> JobSpec:
    """An S3 archive action (rltui.sync_to_s3); needs no GPU. `action` follow: the live archive
    of `run` until `follow_job` ends, with `archive`'s interval, retention and bandwidth (which
    `backup` and `backup-all` take too). `dry_run`, `force`, `json`: the archive's flags."""
    plan = archive or ArchivePlan()
    if archive is not None:
        keep_latest = keep_latest or plan.keep_latest
    # The archive's own flag rules, so a job is never created that the archive would refuse.
    check_sync_flags(action, training_run=run, cleanup=cleanup, keep_latest=keep_latest,
                     dry_run=dry_run, force=force, json=json,
                     follow_job=follow_job, interval=plan.interval_s, keep_every=plan.keep_every,
                     local_budget=plan.local_budget, bandwidth=plan.bandwidth)
    argv = [PY, "-m", "rltui.sync_to_s3", "--action", action]
    if run:
        argv += ["--training-run", validate_name(run, "run name")]
    for flag, given in (("--cleanup", cleanup), ("--keep-latest", keep_latest),
                        ("--dry-run", dry_run), ("--force", force), ("--json", json)):
        if given:
            argv += [flag]
    for flag, value in (("--follow-job", follow_job), ("--interval", plan.interval_s),
                        ("--keep-every", plan.keep_every), ("--local-budget", plan.local_budget),
                        ("--bandwidth", plan.bandwidth)):
        if value is not None:
            argv += [flag, str(value)]
    argv += ["--root", str(layout.root)]
    return JobSpec(
        id=new_job_id(JobKind.SYNC), kind=JobKind.SYNC, argv=tuple(argv), run=run,
        title=f"sync {action}" + (f" {run}" if run else "") + (" (dry run)" if dry_run else ""),
        cwd=os.getcwd(), gpu_count=0,
    )


def resume_argv(layout: Layout, run: str, nproc: int) -> list[str]:
    """A training job's resume template (job.json `resume_argv`): `--from-step latest`, which
    `resume_command` turns into the step resolved when a resume is built."""
    argv = [PY, "-m", "trainer.resume_training", "--training-run", run, "--from-step", "latest"]
    if nproc == 1:
        argv += ["--no-torchrun"]
    return argv + ["--root", str(layout.root)]


def resume_command(layout: Layout, template: Sequence[str], run: str, step: int,
                   additional_steps: int | None = None) -> list[str]:
    """The one resume command line: `template` (a job's resume_argv) resuming from checkpoint
    `step`, a number resolved by the caller (resume_job, the keeper's restart, supervise).

    `--additional-steps K`: K when given, else when the run's target (status.json) lies beyond
    the target saved in that checkpoint (a resume that was asked for more): the K that makes
    trainer.resume_training end at the run's target (max(checkpoint's target, step) + K)."""
    argv = list(template)
    if "--from-step" in argv[:-1]:
        argv[argv.index("--from-step") + 1] = str(step)
    else:
        argv += ["--from-step", str(step)]
    if additional_steps is None:
        target = run_target(layout, run)
        saved = _int(_read_dict(layout.step_dir(run, step) / "training_info.json").get("target_step"))
        # resume_training's rule: --additional-steps K ends at max(checkpoint's target, step) + K
        if target is not None and saved is not None and target > max(saved, step):
            additional_steps = target - max(saved, step)
    if additional_steps is not None:
        argv += ["--additional-steps", str(additional_steps)]
    return argv


def run_target(layout: Layout, run: str) -> int | None:
    """The run's target step, from its status.json; None when unknown."""
    return _int(_read_dict(layout.run_status(run)).get("target_step"))


def latest_step(layout: Layout, run: str) -> int | None:
    """The one rule for "latest": the run's newest complete checkpoint (resolve_step), or None."""
    try:
        return resolve_step(layout.training_state(run), "latest")
    except FileNotFoundError:
        return None


def _read_dict(path: Path) -> dict:
    try:
        d = read_json(path)
    except (OSError, DamagedFile):
        return {}
    return d if isinstance(d, dict) else {}


def _int(v: object) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


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


def trainer_command(nproc: int, module: str) -> list[str]:
    """The one torchrun command line of the manager: `python -m MODULE`, under torchrun when
    nproc > 1 (trainer.resume_training builds the trainer's own from a checkpoint's world size)."""
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


def _check_steps(layout: Layout, run: str, steps: Sequence[int]) -> None:
    """Every asked-for step has a checkpoint folder in the run (whether it is complete, the
    evaluator says per step); one line naming the missing ones and what there is otherwise."""
    have = [s for s, _path in list_step_dirs(layout.training_state(run))]
    missing = [s for s in steps if s not in have]
    if missing:
        raise UsageError(f"bad --steps: no checkpoint at step {', '.join(map(str, missing))} in {run} "
                         f"(it has {', '.join(map(str, have)) or 'none'})")


def _eval_followups(dataset: str | None, layout: Layout) -> tuple[FollowUp, ...]:
    if dataset is None:
        return ()
    return (FollowUp(JobKind.EVAL, _dataset(dataset, "--eval-after", layout)),)


def _dataset(name: str, flag: str, layout: Layout | None = None) -> str:
    """The full name a dataset flag stands for (`arith` -> `arith_r1_template`); with `layout`, its
    test split must be readable there. One line naming the value otherwise, before any job exists."""
    from rltui.runs.datasets import missing_split, resolve_dataset_name

    try:
        full = resolve_dataset_name(name)
    except BadName as e:
        raise UsageError(f"bad {flag}: {e}") from None
    problem = missing_split(layout, full, "test") if layout is not None else None
    if problem:
        raise UsageError(f"bad {flag}: {problem}")
    return full


def _existing(path: str | os.PathLike[str], flag: str, *, want_dir: bool) -> str:
    p = Path(os.path.expanduser(str(path))).absolute()
    try:
        os.stat(p)
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise UsageError(f"bad {flag}: path too long ({e.strerror}): {str(path)[:60]!r}…") from None
    if want_dir and not p.is_dir():
        raise UsageError(f"bad {flag}: {str(path)!r} is not a folder")
    if not want_dir and not p.is_file():
        raise UsageError(f"bad {flag}: {str(path)!r} is not a file")
    return str(p)


def _utf8_text(path: str, given: str | os.PathLike[str], flag: str) -> str:
    """`path` if it reads as UTF-8 text; else one line naming it (before any job is made)."""
    try:
        with open(path, "rb") as f:
            f.read().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"bad {flag}: {str(given)!r} is not UTF-8 text "
                         f"(byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    except OSError as e:
        raise UsageError(f"bad {flag}: {str(given)!r} cannot be read ({e.strerror})") from None
    return path


def _valid_config(path: str) -> None:
    """Refuse a config the trainer would refuse (a bad key or value: one line naming it, from the
    trainer's own parser, `python -m trainer.config`, run in a child since the manager never imports
    trainer/). A check that cannot say (no trainer here, a crash, slower than CONFIG_CHECK_S) leaves
    it to the trainer, as before."""
    try:
        done = subprocess.run([PY, "-m", "trainer.config", path], capture_output=True, text=True,
                              errors="replace", timeout=CONFIG_CHECK_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return
    lines = done.stderr.strip().splitlines()
    if done.returncode == 2 and lines:
        raise UsageError(f"bad --cfg: {clean(lines[-1])}")


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
        complete = [str(s) for s, path in list_step_dirs(layout.training_state(run)) if not checkpoint_problems(path)]
        have = f"its complete checkpoints: {', '.join(complete) or 'none'}"
        if problems == ["missing folder"]:
            raise UsageError(f"bad --from-step: no checkpoint at step {step} in {run} ({have})")
        raise UsageError(f"bad --from-step: step {step} of {run} is not complete ({problems[0]}; {have})")
    return step


def _short_of_target(info: dict, run: str, step: int) -> None:
    """Refuse, before a job is made, a resume that would have nothing to train: the checkpoint is
    already at its run's target step (the trainer refuses it too, trainer.resume_training.target_step)."""
    target = info.get("target_step")
    if isinstance(target, int) and not isinstance(target, bool) and target <= step:
        raise UsageError(f"run {run} already reached its target step {target} at step {step}; "
                         "pass --additional-steps K to train further")


def _no_writer(layout: Layout, run: str) -> None:
    """Refuse, before a job is made, a resume of a run another process writes now. The trainer
    takes the run's writer lock itself and refuses then too (one writer at a time); this says so
    at once instead of in a job that fails a second later."""
    busy = writer_lock.holder(layout.run_dir(run))
    if busy is not None:
        then = f"stop it first (rltui --batch stop {busy.job})" if busy.job else "wait until it ends"
        raise UsageError(f"run {run} is being written by {busy.describe()}; one writer at a time: {then}")


def _no_training_job(layout: Layout, run: str) -> None:
    """Refuse, before a job is made, a resume of a run whose training job has not ended: between
    its restarts (`restarting`), waiting for GPUs (`queued`) or starting, it holds no writer lock,
    yet it will write the run again; a second job would train it twice over."""
    job = next((job for job in unended_jobs(layout, run) if job.spec.kind.trains), None)
    if job is not None:
        raise UsageError(f"run {run} has a training job not yet ended ({job.id}, {job.phase.value}); "
                         f"one writer at a time: stop it first (rltui --batch stop {job.id})")


def _checkpoint_info(layout: Layout, run: str, step: int) -> dict:
    try:
        info = read_json(layout.step_dir(run, step) / "training_info.json")
    except Exception:
        return {}
    return info if isinstance(info, dict) else {}
