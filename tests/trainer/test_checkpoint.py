"""Full-state checkpoints: what is saved, that it loads with plain tools, retention, RNG."""

from __future__ import annotations

import random

import numpy as np
import torch

from rltui.runs import checkpoints
from trainer.checkpoint import (apply_retention, capture_rng, load_training_state,
                                remove_interrupted_saves, restore_rng, retention_victims,
                                save_checkpoint)
from trainer.distributed import Dist


def test_retention_keeps_the_last_k_every_mth_and_protected_steps():
    steps = [0, 10, 20, 30, 40, 50, 60]
    assert retention_victims(steps, 2, 0, set()) == [0, 10, 20, 30, 40]
    assert retention_victims(steps, 2, 20, set()) == [10, 30]  # 0, 20, 40 are multiples of 20
    assert retention_victims(steps, 1, 0, {10}) == [0, 20, 30, 40, 50]


def _fake_checkpoint(state, step):
    staging = checkpoints.staging_dir(state, step)
    (staging / "optimizer.pt").write_bytes(b"x" * step)
    checkpoints.finalize_checkpoint(staging, state / f"step_{step}", {"step": step})


def test_apply_retention_never_deletes_the_checkpoint_step_latest_names(tmp_path):
    state = tmp_path / "training_state"
    for step in (1, 2, 3, 4):
        _fake_checkpoint(state, step)
    checkpoints.update_step_latest(state, 2)  # e.g. a crash between sealing step_4 and the link
    deleted = apply_retention(state, keep_last=1, keep_every=0)
    assert deleted == [1, 3]
    assert [s for s, _ in checkpoints.list_step_dirs(state)] == [2, 4]
    assert checkpoints.read_step_latest(state) == 2 and not checkpoints.list_staging_dirs(state)


def test_interrupted_saves_are_removed_and_complete_checkpoints_kept(tmp_path):
    state = tmp_path / "training_state"
    _fake_checkpoint(state, 1)
    leftover = checkpoints.staging_dir(state, 2)
    (leftover / "optimizer.pt").write_bytes(b"half")
    assert remove_interrupted_saves(state) == [leftover]
    assert not leftover.exists() and checkpoints.is_complete(state / "step_1")


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path):
    sampler = torch.Generator().manual_seed(5)
    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    torch.save(capture_rng(sampler), tmp_path / "rng.pt")
    expected = (torch.rand(3), random.random(), np.random.rand(), torch.rand(2, generator=sampler))
    torch.manual_seed(9), random.seed(9), np.random.seed(9), sampler.manual_seed(9)
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True), sampler)
    again = (torch.rand(3), random.random(), np.random.rand(), torch.rand(2, generator=sampler))
    assert torch.equal(expected[0], again[0]) and expected[1:3] == again[1:3]
    assert torch.equal(expected[3], again[3])


def test_saved_checkpoint_loads_with_plain_peft_and_weights_only_torch(tiny_paths, tmp_path):
    from peft import PeftModel

    from trainer.modeling import load_adapter, load_model_and_tokenizer
    from trainer.schedule import build_scheduler
    from trainer.config import OptimConfig

    model, _ = load_model_and_tokenizer(tiny_paths.base, "cpu", "fp32")
    model = load_adapter(model, tiny_paths.warmstart, is_trainable=True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    sched = build_scheduler(opt, OptimConfig(lr_scheduler_type="cosine"), 10, 1)
    sum(p.sum() for p in params).backward()
    opt.step(), sched.step()
    sampler = torch.Generator().manual_seed(0)
    state = tmp_path / "training_state"
    result = save_checkpoint(Dist(), state, 7, model=model, optimizer=opt, scheduler=sched,
                             sampler=sampler, info={"target_step": 10, "data_position": 14},
                             keep_last=3, keep_every=0)
    step_dir = state / "step_7"
    assert result.path == step_dir and checkpoints.checkpoint_problems(step_dir, verify_hash=True) == []
    assert checkpoints.read_step_latest(state) == 7
    info = checkpoints.read_checkpoint_info(step_dir)
    assert info["step"] == 7 and info["world_size"] == 1 and info["rng_files"] == ["rng/rank_0.pt"]
    assert info["data_position"] == 14 and "model/adapter_model.safetensors" in info["files"]

    base, _ = load_model_and_tokenizer(tiny_paths.base, "cpu", "fp32")
    reloaded = PeftModel.from_pretrained(base, str(step_dir / "model"))
    for (name, a), (_, b) in zip(model.named_parameters(), reloaded.named_parameters()):
        if "lora_" in name:
            assert torch.equal(a, b), name
    for name in ("optimizer.pt", "scheduler.pt", "rng/rank_0.pt"):
        torch.load(step_dir / name, weights_only=True)

    opt2 = torch.optim.AdamW(params, lr=1e-3)
    sched2 = build_scheduler(opt2, OptimConfig(lr_scheduler_type="cosine"), 10, 1)
    load_training_state(step_dir, Dist(), optimizer=opt2, scheduler=sched2, sampler=sampler)
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert sched2.last_epoch == sched.last_epoch == 1
