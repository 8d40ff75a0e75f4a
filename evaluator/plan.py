"""Turning eval_batch's flags into a validated plan before any model is loaded.

Every check that can fail on bad input runs here (names, numbers, the dataset, the base model,
the reward functions, the steps asked for), so that bad input is one line and exit 2 and nothing
is written.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluator.checkpoints import Checkpoint, RunSource, from_path, from_training_run, resolve_base
from evaluator.scoring import SAMPLE_SEED, SAMPLE_TEMPERATURE, SUBSET_SEED, EvalSettings, subset_indices
from rltui.runs import localfs
from trainer.data import Example, build_prompt, load_split, parse_dataset_name
from trainer.errors import ConfigError
from trainer.rewards import load_reward

EVAL_SPLIT = "test"
DEFAULT_MAX_NEW_TOKENS = 256
DEFAULT_REWARDS = (("correctness", 1.0),)


@dataclass
class EvalPlan:
    root: Path
    layout: localfs.Layout
    run: str
    source_label: str
    settings: EvalSettings
    checkpoints: list[Checkpoint]  # in step order; the base model first as step 0 when asked
    prompts_examples: list[Example]
    base_path: Path
    device: str
    dtype: Any
    batch_size: int
    timeout: float | None
    force: bool
    notes: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)  # built once the tokenizer is loaded

    def is_base(self, ckpt: Checkpoint) -> bool:
        return ckpt.step == 0 and ckpt.adapter == self.base_path

    def build_prompts(self, tokenizer: Any) -> None:
        template = self.settings.template
        self.prompts = [build_prompt(tokenizer, e.question, template) for e in self.prompts_examples]

    def config_file(self) -> dict[str, Any]:
        from trainer.triton_base import repeatable  # (torch: loaded by the time the file is written)

        return {
            "run": self.run, "source": self.source_label, "dataset": self.settings.dataset,
            "split": self.settings.split, "base_model": str(self.base_path),
            "steps": [c.step for c in self.checkpoints], "device": self.device,
            "dtype": str(self.dtype).removeprefix("torch."), "batch_size": self.batch_size,
            "timeout_per_step": self.timeout, "settings": self.settings.for_config_file(),
            "argv": sys.argv[1:], "written": time.time(),
            # no decode kernel picked by timing (the CPU's plain loop has none)
            "repeatable_decoding": self.device == "cpu" or repeatable(),
        }


def make_plan(args: argparse.Namespace) -> EvalPlan:
    _check_numbers(args)
    root = localfs.resolve_root(args.root)
    layout = localfs.Layout(root)
    source = _source(args, layout)
    dataset = args.eval_dataset or (source.config.data.dataset if source.config else None)
    if not dataset:
        raise ConfigError(f"--eval-dataset is needed: no run config found for {source.name}")
    parsed = parse_dataset_name(dataset)  # a short name (arith) becomes its full one here
    dataset, template = parsed.name, parsed.template
    examples = load_split(root, dataset, EVAL_SPLIT)
    questions = subset_indices(len(examples), args.subset_frac)
    base_path = resolve_base(source, root)
    rewards = _rewards(source)
    max_new = args.max_new_tokens or (source.config.grpo.max_completion_length if source.config
                                      else DEFAULT_MAX_NEW_TOKENS)
    settings = EvalSettings(
        dataset=dataset, split=EVAL_SPLIT, template=template, base_model=str(base_path),
        subset_frac=args.subset_frac, subset_seed=SUBSET_SEED, questions=questions,
        max_new_tokens=max_new, num_samples=args.num_samples,
        temperature=SAMPLE_TEMPERATURE if args.num_samples > 1 else 0.0, sample_seed=SAMPLE_SEED,
        rewards=rewards,
    )
    notes: list[str] = []
    checkpoints = _select(source, args.steps, args.include_base, base_path, notes)
    device, dtype, device_notes = _device(args.gpu, source)
    return EvalPlan(
        root=root, layout=layout, run=source.name,
        source_label=str(args.ckpt_path) if args.ckpt_path else f"training_runs/{source.name}",
        settings=settings, checkpoints=checkpoints, prompts_examples=[examples[i] for i in questions],
        base_path=base_path, device=device, dtype=dtype, batch_size=args.batch_size,
        timeout=args.timeout_per_step, force=args.force, notes=source.notes + notes + device_notes,
    )


def _check_numbers(args: argparse.Namespace) -> None:
    if not 0.0 < args.subset_frac <= 1.0:
        raise ConfigError(f"--subset-frac {args.subset_frac}: must be in (0, 1]")
    for flag, value in (("--batch-size", args.batch_size), ("--num-samples", args.num_samples),
                        ("--max-new-tokens", args.max_new_tokens)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value}: must be at least 1")
    if args.timeout_per_step is not None and args.timeout_per_step <= 0:
        raise ConfigError(f"--timeout-per-step {args.timeout_per_step}: must be positive")
    if args.gpu is not None and args.gpu < 0:
        raise ConfigError(f"--gpu {args.gpu}: must be a device index (0, 1, ...)")
    if not args.training_run and not args.ckpt_path:
        raise ConfigError("--training-run RUN (or --ckpt-path DIR) is required")


def _source(args: argparse.Namespace, layout: localfs.Layout) -> RunSource:
    try:
        if args.ckpt_path:
            return from_path(args.ckpt_path, args.training_run)
        legacy = layout.rl_runs / localfs.validate_name(args.training_run, "run name")
        if not layout.run_dir(args.training_run).is_dir() and legacy.is_dir():
            return from_path(legacy, args.training_run)  # an older run's step_N folders
        return from_training_run(layout, args.training_run)
    except localfs.BadName as e:
        raise ConfigError(str(e)) from None


def _rewards(source: RunSource) -> tuple[tuple[str, float], ...]:
    rewards = tuple((r.function, float(r.weight)) for r in source.config.rewards) \
        if source.config else DEFAULT_REWARDS
    for function, _ in rewards:
        load_reward(function)
    return rewards


def parse_steps(spec: str) -> list[int] | None:
    """'all' -> None; '1,5,10' -> [1, 5, 10]; anything else is a ConfigError naming it."""
    if spec.strip() == "all":
        return None
    try:
        steps = sorted({int(s) for s in spec.split(",") if s.strip()})
    except ValueError:
        steps = []
    if not steps or steps[0] < 0:
        raise ConfigError(f"--steps {spec!r}: use 'all' or step numbers such as 1,5,10")
    return steps


def _select(source: RunSource, spec: str, include_base: bool, base_path: Path,
            notes: list[str]) -> list[Checkpoint]:
    wanted = parse_steps(spec)
    found = {c.step: c for c in source.checkpoints}
    if wanted is not None:
        missing = [s for s in wanted if s not in found]
        if missing:
            have = ", ".join(map(str, sorted(found))) or "none"
            raise ConfigError(f"--steps: no step {', '.join(map(str, missing))} in {source.name} "
                              f"(checkpoints: {have})")
        chosen = [found[s] for s in wanted]
    else:
        chosen = sorted(source.checkpoints, key=lambda c: c.step)
    if include_base:
        if any(c.step == 0 for c in chosen):
            # The trainer saves its starting adapter as step_0; --include-base means the base alone.
            notes.append(f"--include-base: step 0 is the base model alone; {source.name}'s own "
                         "step_0 adapter is not evaluated in this pass")
            chosen = [c for c in chosen if c.step != 0]
        chosen.insert(0, Checkpoint(0, base_path, base_path, (), f"base:{base_path}"))
    if not chosen:
        raise ConfigError(f"{source.name} has no checkpoints to evaluate (add --include-base for the base model)")
    return chosen


def _device(gpu: int | None, source: RunSource) -> tuple[str, Any, list[str]]:
    """One device: the chosen (or first visible) GPU, else the CPU; bf16 on GPU, fp32 on CPU."""
    import torch

    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        index = 0 if gpu is None else gpu
        if index >= count:
            raise ConfigError(f"--gpu {gpu}: only {count} CUDA device(s) visible")
        torch.cuda.set_device(index)
        precision = source.config.model.precision if source.config else "auto"
        dtype = {"fp32": torch.float32, "fp16": torch.float16}.get(precision, torch.bfloat16)
        return f"cuda:{index}", dtype, []
    notes = [f"--gpu {gpu} ignored: no CUDA device visible; evaluating on the CPU"] if gpu is not None else []
    return "cpu", torch.float32, notes
