"""What a captured training micro-batch computes (grpo._graph_inputs' body, trainer/train_graph.py
replays it on CUDA), run eagerly on a CPU in float32: on completions padded to GRAPH_WIDTH with
masked-out tokens it gives the eager micro-batch's loss, statistics and LoRA gradients."""

from __future__ import annotations

import pytest
import torch

from tests.trainer.test_qwen2_train import _grads, _grouped_batch, _lora_model
from trainer import grpo
from trainer.qwen2_train import prefix_shared_logprobs, prompt_groups


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "dr_grpo"])
def test_graph_body_on_padded_completions_equals_the_eager_micro_batch(loss_type):
    model = _lora_model()
    model.train()
    ids, mask, p = _grouped_batch(3)
    n, c = ids.shape[0], ids.shape[1] - p
    gen = torch.Generator().manual_seed(4)
    chunk = grpo.Batch(prompts=[""] * n, answers=[""] * n, completions=[""] * n, input_ids=ids, attention_mask=mask,
                       completion_mask=mask[:, p:], prompt_length=p, truncated=torch.zeros(n, dtype=torch.bool),
                       advantages=torch.randn(n, generator=gen), ref_logps=-3 * torch.rand(n, c, generator=gen))
    settings = {"loss_type": loss_type, "epsilon": 0.2, "epsilon_high": 0.28, "beta": 0.04,
                "max_completion_length": c, "n_sequences": n}
    n_tokens = int(chunk.completion_mask.sum())

    logps = prefix_shared_logprobs(model, ids, mask, p, 0.9)  # the eager CUDA path of policy_update
    loss, stats = grpo.grpo_loss_lazy(logps, logps.detach(), chunk.ref_logps, chunk.advantages,
                                      chunk.completion_mask, n_tokens=n_tokens, **settings)
    (loss / 2).backward()
    want, want_stats = _grads(model), grpo.LossStats.of(stats())

    key, body, inputs = grpo._graph_inputs(model, chunk, 0.9, settings, n_tokens, 2, prompt_groups(ids, mask, p))
    assert inputs["input_ids"].shape == (n, p + grpo.GRAPH_WIDTH) and key[0] == (n, p + grpo.GRAPH_WIDTH)
    got_stats = grpo.LossStats.of(body({name: t.clone() for name, t in inputs.items()}))
    got = _grads(model)

    assert got.keys() == want.keys() and len(got) > 0
    for name in want:
        assert torch.allclose(got[name], want[name], rtol=1e-4, atol=1e-7), name
    assert got_stats.tokens == want_stats.tokens == n_tokens
    for field in ("loss", "kl", "ratio_mean", "ratio_min", "ratio_max", "clip_low", "clip_high"):
        assert getattr(got_stats, field) == pytest.approx(getattr(want_stats, field), rel=1e-5, abs=1e-9), field
