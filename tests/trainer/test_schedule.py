"""The learning-rate schedule and the data order depend on the step alone."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.config import OptimConfig
from trainer.schedule import DataOrder, build_scheduler, lr_lambda, rank_micro_batches


def test_warmup_rises_to_one_and_never_starts_at_zero():
    f = lr_lambda(OptimConfig(lr_scheduler_type="constant_with_warmup", warmup_steps=3), 10, 1)
    assert [f(s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_cosine_and_linear_decay_to_the_floor_at_the_run_target_and_stay_there():
    cos = lr_lambda(OptimConfig(lr_scheduler_type="cosine", warmup_steps=0, min_lr_ratio=0.1), 10, 1)
    assert cos(0) == pytest.approx(1.0)
    assert cos(5) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cos(10) == pytest.approx(0.1) and cos(25) == pytest.approx(0.1)
    lin = lr_lambda(OptimConfig(lr_scheduler_type="linear", warmup_steps=2), 6, 1)
    assert [round(lin(s), 6) for s in range(2, 7)] == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_num_iterations_stretches_the_schedule_over_optimizer_steps():
    one = lr_lambda(OptimConfig(lr_scheduler_type="linear"), 10, 1)
    two = lr_lambda(OptimConfig(lr_scheduler_type="linear"), 10, 2)
    assert two(10) == pytest.approx(one(5))


def test_scheduler_state_reloads_with_weights_only(tmp_path):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = build_scheduler(opt, OptimConfig(lr_scheduler_type="cosine"), 10, 1)
    for _ in range(3):
        opt.step()
        sched.step()
    torch.save(sched.state_dict(), tmp_path / "s.pt")
    opt2 = torch.optim.AdamW([p], lr=1.0)
    sched2 = build_scheduler(opt2, OptimConfig(lr_scheduler_type="cosine"), 10, 1)
    sched2.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    opt2.step()
    sched2.step()
    opt.step()
    sched.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_data_order_is_a_seeded_permutation_per_epoch_entered_anywhere():
    order = DataOrder(5, seed=3)
    stream = order.indices(0, 12)
    assert sorted(stream[:5]) == list(range(5)) and sorted(stream[5:10]) == list(range(5))
    assert stream[:5] != stream[5:10]  # each epoch reshuffled (seeded by epoch)
    assert DataOrder(5, seed=3).indices(7, 5) == stream[7:12]
    assert DataOrder(5, seed=4).indices(0, 5) != stream[:5]


def test_each_rank_gets_its_own_interleaved_micro_batches():
    items = list(range(12))  # 2 micro-batches x 2 ranks x 3 prompts
    r0 = rank_micro_batches(items, rank=0, world_size=2, micro_batches=2, per_micro_batch=3)
    r1 = rank_micro_batches(items, rank=1, world_size=2, micro_batches=2, per_micro_batch=3)
    assert r0 == [[0, 1, 2], [6, 7, 8]] and r1 == [[3, 4, 5], [9, 10, 11]]
