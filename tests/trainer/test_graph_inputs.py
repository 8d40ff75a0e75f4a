"""What a captured training micro-batch computes (grpo._graph_inputs' body, trainer/train_graph.py
replays it on CUDA), run eagerly on a CPU in float32: on prompts left-padded and completions
right-padded to GRAPH_WIDTH with masked-out tokens it gives the eager micro-batch's loss,
statistics and LoRA gradients; and prompts of different widths in one bucket share one shape."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.trainer.test_qwen2_train import _grads, _grouped_batch, _lora_model
from trainer import grpo
from trainer.qwen2_train import prefix_shared_logprobs, prompt_groups


def _left_pad(ids: torch.Tensor, mask: torch.Tensor, p: int, extra: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The same rows with `extra` more masked-out prompt columns (a longer prompt elsewhere in the batch)."""
    return F.pad(ids, (extra, 0)), F.pad(mask, (extra, 0)), p + extra


@pytest.mark.parametrize("loss_type,extra", [("dapo", 0), ("grpo", 0), ("dr_grpo", 0), ("dr_grpo", 5)])
def test_graph_body_on_padded_prompts_and_completions_equals_the_eager_micro_batch(loss_type, extra):
    model = _lora_model()
    model.train()
    ids, mask, p = _left_pad(*_grouped_batch(3), extra)
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
    w = grpo.GRAPH_WIDTH  # prompt (7 or 12 wide) and completion (9) each padded to one width
    assert inputs["input_ids"].shape == (n, 2 * w) and key[:2] == ((n, 2 * w), w)
    assert inputs["attention_mask"][:, :w - p].sum() == 0 and torch.equal(inputs["input_ids"][:, w - p:w + c], ids)
    got_stats = grpo.LossStats.of(body({name: t.clone() for name, t in inputs.items()}))
    got = _grads(model)

    assert got.keys() == want.keys() and len(got) > 0
    for name in want:
        assert torch.allclose(got[name], want[name], rtol=1e-4, atol=1e-7), name
    assert got_stats.tokens == want_stats.tokens == n_tokens
    for field in ("loss", "kl", "ratio_mean", "ratio_min", "ratio_max", "clip_low", "clip_high"):
        assert getattr(got_stats, field) == pytest.approx(getattr(want_stats, field), rel=1e-5, abs=1e-9), field


def test_prompts_of_two_widths_in_one_bucket_replay_one_captured_shape():
    ids, mask, p = _grouped_batch(5)
    n, c = ids.shape[0], ids.shape[1] - p
    model = _lora_model()
    settings = {"loss_type": "dr_grpo", "epsilon": 0.2, "epsilon_high": 0.28, "beta": 0.0,
                "max_completion_length": c, "n_sequences": n}
    keys = []
    for extra in (0, 9):  # a rollout whose longest prompt is 7 tokens, then one whose is 16
        wide_ids, wide_mask, wide_p = _left_pad(ids, mask, p, extra)
        chunk = grpo.Batch(prompts=[""] * n, answers=[""] * n, completions=[""] * n, input_ids=wide_ids,
                           attention_mask=wide_mask, completion_mask=wide_mask[:, wide_p:], prompt_length=wide_p,
                           truncated=torch.zeros(n, dtype=torch.bool), advantages=torch.ones(n))
        key, _, _ = grpo._graph_inputs(model, chunk, 1.0, settings, int(chunk.completion_mask.sum()), 1,
                                       prompt_groups(wide_ids, wide_mask, wide_p))
        keys.append(key)
    assert keys[0] == keys[1]
