"""What one training session was asked to do, resolved and validated before any work starts.

Every check that can fail on bad input runs here, in every process alike and before the process
group forms, so that bad input ends in one line and exit 2 on every rank and no rank is left
waiting in a collective.
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rltui.runs import localfs, writer_lock
from trainer.config import Config, config_from_dict, load_config
from trainer.errors import ConfigError
from trainer.runfiles import MODEL_DIR, RESOLVED_CONFIG, existing_run_dir, verify_checkpoint
from trainer.start_adapter import FROM_ADAPTER, StartAdapter, open_start_adapter, same_base


@dataclass
class ResumePoint:
    run: str
    step: int
    step_dir: Path
    info: dict[str, Any]

    @property
    def adapter(self) -> Path:
        return self.step_dir / MODEL_DIR


@dataclass
class Session:
    cfg: Config
    root: Path
    layout: localfs.Layout
    base_path: Path
    init_adapter: Path | None  # None: a fresh LoRA (or the checkpoint's, when resuming)
    target_step: int
    schedule_steps: int  # the run's original target: the LR schedule's horizon
    world_size: int
    cfg_text: str | None = None  # the config file as given (new runs)
    run_name: str | None = None  # --run-name (new runs)
    resume: ResumePoint | None = None
    parent: dict[str, Any] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)  # base model and starting adapter
    notes: list[str] = field(default_factory=list)  # lines for the log (rank 0)
    writer: writer_lock.WriterLock | None = None  # rank 0: the run's writer lock, held to the end
    wait_for_lock: bool = False
    examples: list = field(default_factory=list)  # the training split, loaded once
    reward_fns: list = field(default_factory=list)


def prepare(args: argparse.Namespace) -> Session:
    """The validated Session for parsed rl_runner arguments; ConfigError on any bad input.
    Rank 0 takes the run's writer lock first (a run being written is refused before any check)."""
    root = localfs.resolve_root(args.root)
    layout = localfs.Layout(root)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    writer = claim_run(layout, args.resume_run or args.run_name, getattr(args, "wait_for_lock", False))
    try:
        session = _prepare_any(args, root, layout, world_size)
    except BaseException:
        if writer is not None:
            writer.release()
        raise
    session.writer = writer
    session.wait_for_lock = getattr(args, "wait_for_lock", False)
    return session


def _prepare_any(args: argparse.Namespace, root: Path, layout: localfs.Layout,
                 world_size: int) -> Session:
    from trainer.data import load_split
    from trainer.hub import resolve_model
    from trainer.modeling import check_adapter_fits
    from trainer.rewards import load_reward

    if args.resume_run:
        session = _prepare_resume(args, root, layout, world_size)
    else:
        session = _prepare_new(args, root, layout, world_size)
    cfg = session.cfg
    if session.resume is None:
        start = _start_adapter(args.ckpt or cfg.model.init_adapter, cfg, root)
        base = _resolve_base(cfg, start, root)
        session.init_adapter = start.path if start else None
        # config_resolved.yaml names what this run really started from: the Hub commit and the
        # adapter actually given (--ckpt), so that a resume loads the very same weights
        cfg.model.base = base.pinned
        if start is not None and cfg.model.init_adapter != "warmstart":
            cfg.model.init_adapter = start.given
        session.provenance = {"base": base.record(), "start_adapter": start.record() if start else None}
        session.notes = [line for line in (start.intake_line() if start else None,) if line]
    else:
        base = resolve_model(cfg.model.base, root)
        session.provenance = session.resume.info.get("provenance") or {"base": base.record(),
                                                                        "start_adapter": None}
    session.base_path = base.path
    adapter = session.resume.adapter if session.resume else session.init_adapter
    if adapter is not None:
        check_adapter_fits(session.base_path, adapter)
    session.examples = load_split(root, cfg.data.dataset, cfg.data.split)
    session.reward_fns = [load_reward(r.function) for r in cfg.rewards]
    return session


def claim_run(layout: localfs.Layout, run: str | None, wait: bool) -> writer_lock.WriterLock | None:
    """Rank 0: the writer lock of `run` (an existing folder), held until the process ends; a run
    another process writes is refused (ConfigError naming the holder) unless `wait`. None on
    other ranks and for a folder not made yet (open_run claims it); the launcher's when it
    passed it on (resume_training execs this process, or torchrun, holding it)."""
    if run is None or os.environ.get("RANK", "0") != "0":
        return None
    try:
        folder = layout.run_dir(run)
    except localfs.BadName as e:
        raise ConfigError(str(e)) from None
    if not folder.is_dir():
        return None
    passed = writer_lock.handed_off(folder)
    if passed is not None:
        atexit.register(passed.release)
        return passed

    def waiting(holder: writer_lock.Holder | None) -> None:
        who = holder.describe() if holder else "another process"
        print(f"waiting for run {run}: it is being written by {who}", file=sys.stderr, flush=True)

    try:
        lock = writer_lock.acquire(folder, wait=wait, on_wait=waiting)
    except writer_lock.WriterBusy as e:
        raise ConfigError(str(e)) from None
    atexit.register(lock.release)
    return lock


def _prepare_new(args: argparse.Namespace, root: Path, layout: localfs.Layout,
                 world_size: int) -> Session:
    cfg = load_config(args.cfg)
    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps {args.steps}: must be >= 1")
    target = args.steps if args.steps is not None else cfg.training.total_steps
    if args.run_name is not None:
        _check_fresh_run_folder(layout, args.run_name)
    return Session(
        cfg=cfg, root=root, layout=layout, base_path=Path(), init_adapter=None,
        target_step=target, schedule_steps=target, world_size=world_size,
        cfg_text=Path(args.cfg).read_text(encoding="utf-8"), run_name=args.run_name,
    )


def _check_fresh_run_folder(layout: localfs.Layout, name: str) -> None:
    try:
        folder = layout.run_dir(name)
    except localfs.BadName as e:
        raise ConfigError(f"--run-name: {e}") from None
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--run-name {name}: {folder} is not a folder")
    for used in (layout.run_status(name), layout.training_state(name)):
        if used.exists():
            raise ConfigError(f"--run-name {name}: run folder already in use ({used.name} exists); "
                              "resume it with python -m trainer.resume_training")


def _start_adapter(spec: str | None, cfg: Config, root: Path) -> StartAdapter | None:
    if spec is None:
        return None
    if spec == "warmstart":
        if cfg.model.base != "tiny":
            raise ConfigError("model.init_adapter 'warmstart' is the tiny model's; model.base is "
                              f"{cfg.model.base!r}")
        from trainer.tiny import ensure_tiny

        return open_start_adapter(str(ensure_tiny(root).warmstart))
    return open_start_adapter(spec)


def _resolve_base(cfg: Config, start: StartAdapter | None, root: Path):
    """The base model (trainer.hub.ResolvedModel): the config's, or the adapter's own named one."""
    from trainer.hub import resolve_model

    spec = cfg.model.base
    if spec == FROM_ADAPTER:
        if start is None:
            raise ConfigError(f"model.base: {FROM_ADAPTER} needs a starting adapter (--ckpt or "
                              "model.init_adapter)")
        if not start.base_named:
            raise ConfigError(f"model.base: {FROM_ADAPTER}, but {start.path}/adapter_config.json "
                              "names no base_model_name_or_path")
        return resolve_model(start.base_named, root)
    base = resolve_model(spec, root)
    if start is not None and not same_base(start.base_named, spec, base.path, base.repo_id):
        _warn(f"warning: the starting adapter {start.label} was trained on {start.base_named}; "
              f"model.base is {spec} (shapes are checked next)")
    return base


def _warn(line: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr, flush=True)


def _prepare_resume(args: argparse.Namespace, root: Path, layout: localfs.Layout,
                    world_size: int) -> Session:
    run = args.resume_run
    existing_run_dir(layout, run)
    step_dir = layout.step_dir(run, args.resume_step)
    info = verify_checkpoint(step_dir, run)
    cfg = read_run_config(layout, run)
    if info.get("config_hash") != cfg.hash():
        raise ConfigError(f"checkpoint {run}/{step_dir.name} was written with another config "
                          f"(hash {info.get('config_hash')}, {RESOLVED_CONFIG} gives {cfg.hash()})")
    saved_world = int(info.get("world_size", 1))
    if saved_world != world_size and not args.allow_world_size_change:
        raise ConfigError(
            f"checkpoint {run}/{step_dir.name} was saved with world size {saved_world}, this "
            f"session has {world_size}; pass --allow-world-size-change to continue anyway "
            "(not bitwise identical)")
    target = args.target_step if args.target_step is not None else int(info["target_step"])
    if target <= args.resume_step:
        raise ConfigError(f"target step {target} is not after the checkpoint's step {args.resume_step}")
    return Session(
        cfg=cfg, root=root, layout=layout, base_path=Path(), init_adapter=None,
        target_step=target, schedule_steps=int(info.get("schedule_steps", info["target_step"])),
        world_size=world_size, resume=ResumePoint(run, args.resume_step, step_dir, info),
        parent=info.get("parent"),  # the checkpoint's own record (status.json is not fsynced)
    )


def read_run_config(layout: localfs.Layout, run: str) -> Config:
    """The resolved config a run was started with (every default written out)."""
    path = layout.run_dir(run) / RESOLVED_CONFIG
    try:
        data = localfs.read_yaml(path)
    except FileNotFoundError:
        raise ConfigError(f"run {run} has no {RESOLVED_CONFIG}") from None
    except localfs.DamagedFile as e:
        raise ConfigError(str(e)) from None
    return config_from_dict(data, source=str(path))
