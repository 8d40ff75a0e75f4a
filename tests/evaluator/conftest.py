"""Fixtures for the evaluator tests: training runs with real peft checkpoints of the tiny model.

    make_run(root, steps=(1, 2, 3), run=...) -> run name
        writes training_runs/RUN/config.yaml and, for each step, a complete checkpoint through
        rltui.runs.localfs's staging/finalize API whose model/ is a real peft adapter: the tiny
        model's warm-start adapter with step-dependent noise on its LoRA B matrices, so that
        steps give different answers.
    eval_args(root, run, *more) -> the argv list (a fixture returning this function) for evaluator.eval_batch with small settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch

from rltui.runs import checkpoints, localfs

RUN = "run_2026-01-02_03-04-05"
CONFIG = """\
model: {base: tiny}
data: {dataset: arith_r1_template}
rewards:
  - {function: correctness, weight: 1.0}
  - {function: format_strict, weight: 0.5}
grpo: {max_completion_length: 16}
"""


@pytest.fixture(scope="session")
def _policy(tiny_paths):
    from trainer.modeling import load_adapter, load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(tiny_paths.base, "cpu", torch.float32)
    model = load_adapter(model, tiny_paths.warmstart, is_trainable=True)
    original = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    return model, original


def write_adapter(policy, out: Path, noise: float, seed: int) -> None:
    model, original = policy
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in original:
                param.copy_(original[name] + noise * torch.randn(param.shape, generator=gen))
    model.save_pretrained(out)


@pytest.fixture
def make_run(_policy) -> Callable[..., str]:
    def make(root: Path, steps=(1, 2, 3), run: str = RUN, noise_per_step: float = 0.05) -> str:
        layout = localfs.Layout(root)
        layout.run_dir(run).mkdir(parents=True, exist_ok=True)
        localfs.write_text_atomic(layout.run_config(run), CONFIG)
        state = layout.training_state(run)
        for step in steps:
            staging = checkpoints.staging_dir(state, step)
            write_adapter(_policy, staging / "model", noise_per_step * (step - 1), seed=step)
            (staging / "rng").mkdir()
            torch.save({"cpu": torch.get_rng_state()}, staging / "rng" / "rank_0.pt")
            checkpoints.finalize_checkpoint(staging, layout.step_dir(run, step),
                                        {"step": step, "target_step": max(steps), "world_size": 1})
            checkpoints.update_step_latest(state, step)
        return run

    return make


@pytest.fixture
def eval_args() -> Callable[..., list[str]]:
    def args(root: Path, run: str, *more: str) -> list[str]:
        return ["--root", str(root), "--training-run", run, "--subset-frac", "0.1",
                "--max-new-tokens", "16", *more]

    return args
