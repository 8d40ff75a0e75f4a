"""Train a LoRA adapter with GRPO: a new run, or the continuation of a saved step.

Usage:
    python -m trainer.rl_runner --cfg CFG [--ckpt ADAPTER] [--root ROOT] [--steps N] [--run-name NAME]
    torchrun --nproc_per_node=N -m trainer.rl_runner --cfg CFG ...
    (to continue a run use python -m trainer.resume_training, which calls this module)

Prints `run: RUN_NAME` early. Exit codes: 0 done or stopped on request (STOP file, SIGTERM,
SIGINT: the current step finishes, the state is saved); 1 the training failed; 2 bad input.
Test-only environment hooks (for the supervision tests, never for real use):
RLTUI_TEST_STALL_AT_STEP=k stops making progress before step k in a new run's first session (sleeps
forever, status.json untouched; a resumed session does not stall, so recovery can be tested); RLTUI_TEST_STEP_SLEEP=s sleeps s seconds in every step's training phase;
RLTUI_TEST_SAVE_SLEEP=s pauses inside every save (before the checkpoint is sealed).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rltui.runs import disk, localfs
from trainer import checkpoint, grpo
from trainer.config import Config
from trainer.distributed import Dist, exit_process, init_distributed, wrap_ddp
from trainer.errors import ConfigError, DownloadFailed
from trainer.progress import Progress
from trainer.runfiles import PROVENANCE, RESOLVED_CONFIG
from trainer.runlog import Phase, RunLog, RunStatus
from trainer.schedule import DataOrder, build_scheduler, rank_micro_batches
from trainer.session import Session, claim_run, prepare

STALL_ENV = "RLTUI_TEST_STALL_AT_STEP"
STEP_SLEEP_ENV = "RLTUI_TEST_STEP_SLEEP"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m trainer.rl_runner", description=__doc__.split("\n")[0])
    p.add_argument("--cfg", help="training config (YAML)")
    p.add_argument("--ckpt", help="LoRA adapter folder to start from (e.g. an SFT adapter)")
    p.add_argument("--root", help="localfs root (default: $LOCALFS_ROOT, else ~/localfs)")
    p.add_argument("--steps", type=int, help="target step (default: the config's training.total_steps)")
    p.add_argument("--run-name", help="use this (pre-created, empty) run folder")
    # set by trainer.resume_training
    p.add_argument("--resume-run", help=argparse.SUPPRESS)
    p.add_argument("--resume-step", type=int, help=argparse.SUPPRESS)
    p.add_argument("--target-step", type=int, help=argparse.SUPPRESS)
    p.add_argument("--allow-world-size-change", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--wait-for-lock", action="store_true",
                   help="wait while another process writes the run, instead of refusing (exit 2)")
    args = p.parse_args(argv)
    if not args.resume_run and not args.cfg:
        p.error("--cfg is required")
    return args


class StopRequest:
    """SIGTERM, SIGINT or the run's STOP file: finish the step, save, exit 0."""

    def __init__(self) -> None:
        self.signalled = False
        self.file: Path | None = None
        self._previous = {sig: signal.signal(sig, self._on_signal)
                          for sig in (signal.SIGTERM, signal.SIGINT)}

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signalled = True

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self) -> bool:
        return self.signalled or (self.file is not None and self.file.exists())


@dataclass
class Trainer:
    """The loop's state: what `train_step` reads and changes."""

    s: Session
    d: Dist
    log: RunLog
    model: Any  # the PeftModel (generation, saving, the reference with the adapter disabled)
    ddp_model: Any  # what gradients flow through (the DDP wrapper under torchrun)
    no_sync: Any
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    sampler: torch.Generator
    examples: list
    order: DataOrder
    reward_fns: list
    position: int  # prompts consumed by the whole run (all ranks)

    @property
    def cfg(self) -> Config:
        return self.s.cfg


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        session = prepare(args)
    except ConfigError as e:
        print(f"rl_runner: error: {e}", file=sys.stderr)
        return 2
    except DownloadFailed as e:
        print(f"rl_runner: error: {e}", file=sys.stderr)
        return 1
    stop = StopRequest()
    d = init_distributed()
    try:
        return train(session, d, stop)
    finally:
        d.close()
        stop.close()
        if session.writer is not None:
            session.writer.release()  # the run's writer lock: the next writer may start


def train(s: Session, d: Dist, stop: StopRequest) -> int:
    cfg = s.cfg
    if cfg.training.cpu_threads > 0:
        torch.set_num_threads(cfg.training.cpu_threads)
    try:
        run = open_run(s, d)
    except Exception as e:
        if disk.is_full(e):
            return checkpoint.end_on_full_disk(e, s.layout.training_runs)
        raise
    stop.file = s.layout.stop_request(run)
    status = RunStatus(run=run, target_step=s.target_step, world_size=d.world_size,
                       parent=s.parent, session=uuid.uuid4().hex[:12], target_history=target_history(s))
    log = RunLog(s.layout, status, enabled=d.is_main)
    start = s.resume.step if s.resume else 0
    log.phase(Phase.LOADING, step=start, latest_checkpoint=s.resume.step if s.resume else None)
    try:
        t = build_trainer(s, d, log)
        return run_loop(t, start, stop)
    except Exception as e:
        if disk.is_full(e):
            return checkpoint.end_on_full_disk(e, s.layout.run_dir(run), log)
        log.phase(Phase.FAILED, error=f"{type(e).__name__}: {e}")
        traceback.print_exc()
        return 1
    finally:
        log.close()


def target_history(s: Session) -> list[int]:
    """The run's targets: the original, then each extension (--additional-steps) up to this one."""
    if s.resume is None:
        return [s.target_step]
    info = s.resume.info
    before = [int(t) for t in info.get("target_history") or [info.get("target_step", s.target_step)]]
    return before if before[-1] == s.target_step else [*before, s.target_step]


def open_run(s: Session, d: Dist) -> str:
    """The run's name on every rank; a new run gets its folder and config files from rank 0."""
    if s.resume:
        run = s.resume.run
    else:
        run = None
        if d.is_main:
            if s.run_name:
                run = s.run_name
                s.layout.run_dir(run).mkdir(parents=True, exist_ok=True)
            else:
                run = localfs.create_run_dir(s.layout)
            if s.writer is None:  # a folder made just now: claimed before anything is written
                s.writer = claim_run(s.layout, run, wait=s.wait_for_lock)
            localfs.write_text_atomic(s.layout.run_config(run), s.cfg_text or "")
            localfs.write_yaml_atomic(s.layout.run_dir(run) / RESOLVED_CONFIG, s.cfg.to_dict())
            localfs.write_json_atomic(s.layout.run_dir(run) / PROVENANCE, s.provenance)
        run = d.broadcast(run)
    if d.is_main:
        print(f"run: {run}", flush=True)
        for line in s.notes:
            print(line, flush=True)
        s.layout.stop_request(run).unlink(missing_ok=True)  # a stale request from a past session
        checkpoint.remove_interrupted_saves(s.layout.training_state(run))
        checkpoint.repair_step_latest(s.layout.training_state(run))
    d.barrier()
    return run


def build_trainer(s: Session, d: Dist, log: RunLog) -> Trainer:
    """Config -> model -> optimizer -> (resume) -> the loop's state."""
    cfg = s.cfg
    torch.manual_seed(cfg.training.seed)  # a fresh LoRA's initial weights; the same on every rank
    model, tokenizer = load_policy(s, d)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.learning_rate, weight_decay=cfg.optim.weight_decay,
                                  betas=(cfg.optim.adam_beta1, cfg.optim.adam_beta2))
    scheduler = build_scheduler(optimizer, cfg.optim, s.schedule_steps, cfg.grpo.num_iterations)
    sampler = torch.Generator(device=d.device).manual_seed(cfg.training.seed * 1000 + d.rank)
    torch.manual_seed(cfg.training.seed * 1000 + d.rank)
    position = 0
    if s.resume:
        checkpoint.load_training_state(s.resume.step_dir, d, optimizer=optimizer,
                                       scheduler=scheduler, sampler=sampler,
                                       allow_missing_rng=s.world_size != s.resume.info["world_size"])
        position = int(s.resume.info["data_position"])
    ddp_model, no_sync = wrap_ddp(model, d)
    return Trainer(
        s=s, d=d, log=log, model=model, ddp_model=ddp_model, no_sync=no_sync, tokenizer=tokenizer,
        optimizer=optimizer, scheduler=scheduler, sampler=sampler, examples=s.examples,
        order=DataOrder(len(s.examples), cfg.training.seed), reward_fns=s.reward_fns,
        position=position,
    )


def load_policy(s: Session, d: Dist):
    """The base model with its trainable LoRA adapter (checkpoint, --ckpt, or fresh)."""
    from peft import LoraConfig, get_peft_model

    from trainer.modeling import enable_checkpointing, load_adapter, load_model_and_tokenizer

    cfg = s.cfg
    precision = cfg.model.precision
    if precision == "auto":
        precision = "bf16" if d.device.type == "cuda" else "fp32"
    model, tokenizer = load_model_and_tokenizer(s.base_path, d.device, precision)
    adapter = s.resume.adapter if s.resume else s.init_adapter
    if adapter is not None:
        model = load_adapter(model, adapter, is_trainable=True)
    else:
        lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    if cfg.model.gradient_checkpointing:
        enable_checkpointing(model)
    return model, tokenizer


def run_loop(t: Trainer, start: int, stop: StopRequest) -> int:
    s, d, log = t.s, t.d, t.log
    step = start
    saved = start if s.resume else None
    if saved is None:  # step 0: every run is resumable from its start, and evaluable there
        save(t, 0)
        saved = 0
    stopped = False
    progress = Progress(start=step, target=s.target_step, enabled=d.is_main)
    progress.warming_up(d.device.type == "cuda")
    while step < s.target_step:
        if d.any(stop.requested()):  # every rank agrees, at the step boundary
            stopped = True
            break
        if s.resume is None:
            _test_stall(step + 1)
        step += 1
        record = train_step(t, step)
        if s.cfg.training.save_every and step % s.cfg.training.save_every == 0:
            record["time_saving"] = save(t, step)
            saved = step
        progress.finished(step)  # the session's first step ends the warm-up, which the ETA leaves out
        if step % s.cfg.training.log_every == 0 or step == s.target_step:
            log.step(record)
            progress.step(record)
    progress.close()
    if saved != step:
        save(t, step)
    log.phase(Phase.STOPPED if stopped else Phase.COMPLETED, step=step)
    if d.is_main:
        print(f"{'stopped' if stopped else 'completed'} at step {step}: {log.run}", flush=True)
    return 0


def save(t: Trainer, step: int) -> float:
    cfg = t.cfg
    t.log.phase(Phase.SAVING, step=step)
    info = {"target_step": t.s.target_step, "target_history": t.log.status.target_history,
            "schedule_steps": t.s.schedule_steps,
            "config_hash": cfg.hash(), "data_position": t.position, "run": t.log.run,
            "parent": t.s.parent, "metrics": t.log.last_metrics, "provenance": t.s.provenance}
    result = checkpoint.save_checkpoint(
        t.d, t.s.layout.training_state(t.log.run), step, model=t.model, optimizer=t.optimizer,
        scheduler=t.scheduler, sampler=t.sampler, info=info,
        keep_last=cfg.training.keep_last, keep_every=cfg.training.keep_every,
    )
    t.log.phase(Phase.SAVING, latest_checkpoint=step)
    return round(result.seconds, 4)


def train_step(t: Trainer, step: int) -> dict[str, Any]:
    """Rollout -> rewards -> advantages -> (old/ref log-probs) -> update, timed by phase."""
    cfg, g, d = t.cfg, t.cfg.grpo, t.d
    times: dict[str, float] = {}
    clock = time.monotonic()
    t.log.phase(Phase.GENERATING, step=step - 1)
    batches = rollouts(t)
    times["generation"], clock = time.monotonic() - clock, time.monotonic()

    t.log.phase(Phase.SCORING)
    for b in batches:
        grpo.score(b, t.reward_fns, [r.weight for r in cfg.rewards])
        b.advantages = grpo.group_advantages(b.reward, g.num_generations, g.scale_rewards)
        if g.mask_truncated_completions:
            b.completion_mask = b.completion_mask * (~b.truncated).to(b.completion_mask).unsqueeze(1)
    times["scoring"], clock = time.monotonic() - clock, time.monotonic()

    t.log.phase(Phase.TRAINING)
    _test_step_sleep()
    for b in batches:
        b.advantages = b.advantages.to(d.device)
        if g.num_iterations > 1:  # the sampling policy's log-probs, once per rollout
            b.old_logps = grpo.frozen_logps(t.model, b, g.temperature, g.forward_batch_size, reference=False)
        if g.beta > 0:
            b.ref_logps = grpo.frozen_logps(t.model, b, g.temperature, g.forward_batch_size, reference=True)
    t.model.train()
    updates = [
        grpo.policy_update(
            t.ddp_model, t.optimizer, t.scheduler, batches, loss_type=g.loss_type,
            epsilon=g.epsilon, epsilon_high=g.clip_high, beta=g.beta, temperature=g.temperature,
            max_completion_length=g.max_completion_length, forward_batch_size=g.forward_batch_size,
            max_grad_norm=cfg.optim.max_grad_norm, no_sync=t.no_sync,
        )
        for _ in range(g.num_iterations)
    ]
    t.model.eval()
    times["training"] = time.monotonic() - clock
    t.position += g.per_device_prompts * g.gradient_accumulation_steps * d.world_size
    return step_record(t, step, batches, updates, times)


def rollouts(t: Trainer) -> list[grpo.Batch]:
    """This rank's prompts of the step (micro-batches), each sampled num_generations times."""
    from trainer.data import build_prompt, parse_dataset_name

    g, d = t.cfg.grpo, t.d
    global_count = g.per_device_prompts * g.gradient_accumulation_steps * d.world_size
    picked = [t.examples[i] for i in t.order.indices(t.position, global_count)]
    template = parse_dataset_name(t.cfg.data.dataset).template
    t.model.eval()
    out = []
    for examples in rank_micro_batches(picked, rank=d.rank, world_size=d.world_size,
                                       micro_batches=g.gradient_accumulation_steps,
                                       per_micro_batch=g.per_device_prompts):
        prompts = [build_prompt(t.tokenizer, ex.question, template) for ex in examples]
        out.append(grpo.rollout(
            t.model, t.tokenizer, examples, prompts, num_generations=g.num_generations,
            max_prompt_length=g.max_prompt_length, max_completion_length=g.max_completion_length,
            temperature=g.temperature, top_p=g.top_p, generator=t.sampler,
        ))
    return out


def step_record(t: Trainer, step: int, batches: list[grpo.Batch], updates: list[grpo.UpdateStats],
                times: dict[str, float]) -> dict[str, Any]:
    """The step's numbers, averaged over ranks (one all-reduce that every rank joins)."""
    cfg, d = t.cfg, t.d
    rewards = torch.cat([b.rewards for b in batches])
    reward = torch.cat([b.reward for b in batches])
    lengths = torch.cat([b.completion_mask.sum(1).float().cpu() for b in batches])
    truncated = torch.cat([b.truncated.float() for b in batches])
    tokens = float(sum(b.generation_tokens for b in batches))
    last = updates[-1]
    local = [sum(u.loss for u in updates) / len(updates), last.kl, last.clip_low, last.clip_high,
             last.ratio_mean, float(reward.mean()), float((reward ** 2).mean()),
             float(lengths.mean()), float(truncated.mean()), tokens,
             *[float(c) for c in rewards.mean(0)]]
    mean = d.mean(local)
    step_time = sum(times.values())
    record: dict[str, Any] = {
        "step": step, "loss": mean[0], "kl": mean[1], "clip_low": mean[2], "clip_high": mean[3],
        "ratio_mean": mean[4], "reward_mean": mean[5],
        "reward_std": max(mean[6] - mean[5] ** 2, 0.0) ** 0.5, "completion_length": mean[7],
        "truncated_fraction": mean[8], "learning_rate": last.learning_rate, "grad_norm": last.grad_norm,
        "time_generation": round(times["generation"], 4), "time_scoring": round(times["scoring"], 4),
        "time_training": round(times["training"], 4), "time_saving": 0.0,
        "tokens_per_s": mean[9] * d.world_size / max(step_time, 1e-9),
        "generation_tokens_per_s": mean[9] * d.world_size / max(times["generation"], 1e-9),
    }
    for r, value in zip(cfg.rewards, mean[10:]):
        record[f"rewards/{r.function}"] = value
    if d.device.type == "cuda":  # this rank's peak since the session started
        record["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated(d.device) / 2**30, 3)
    t.log.last_metrics = {k: record[k] for k in ("loss", "reward_mean", "kl", "completion_length")}
    t.log.ratios(step, {"iterations": [
        {"ratio_mean": u.ratio_mean, "ratio_min": u.ratio_min, "ratio_max": u.ratio_max,
         "clip_low": u.clip_low, "clip_high": u.clip_high} for u in updates]})
    every = cfg.training.log_rollouts_every
    if every and (step == 1 or step % every == 0):  # the first step too: a short trial run has some
        t.log.rollouts(step, rollout_rows(batches[0], cfg.training.rollouts_per_log))
    t.log.phase(Phase.TRAINING, step=step)  # the step is done: progress
    return record


def rollout_rows(b: grpo.Batch, n: int) -> list[dict[str, Any]]:
    return [
        {"prompt": b.prompts[i], "completion": b.completions[i], "answer": b.answers[i],
         "reward": float(b.reward[i]), "rewards": [float(x) for x in b.rewards[i]],
         "advantage": float(b.advantages[i])}
        for i in range(min(n, b.size))
    ]


def _test_stall(step: int) -> None:
    if os.environ.get(STALL_ENV) and int(os.environ[STALL_ENV]) == step:
        while True:  # test-only: a hung trainer (no progress, status.json untouched)
            time.sleep(3600)


def _test_step_sleep() -> None:
    pause = float(os.environ.get(STEP_SLEEP_ENV, "0") or 0)
    if pause > 0:
        time.sleep(pause)


if __name__ == "__main__":
    exit_process(main())
