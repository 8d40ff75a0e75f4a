"""The GRPO loss of each loss_type, the advantages and the reward mix, against values worked out
by hand on small fixed tensors (the arithmetic is written out in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.grpo import Batch, grpo_loss, group_advantages, score

# Two sequences of three completion tokens; the second token of sequence 0 is padding.
#   ratios      [[1.5, 0.9, 1.0], [0.7, 1.1, 1.0]]    (old log-probs 0, so logps = log ratio)
#   advantages  [+1, -1],  epsilon 0.2, epsilon_high 0.28 -> clip range [0.8, 1.28]
# per-token loss = -min(r * A, clip(r) * A):
#   seq 0 (A=+1): -min(1.5, 1.28) = -1.28 ; -min(0.9, 0.9) = -0.9 ; (masked)
#   seq 1 (A=-1): -min(-0.7, -0.8) = 0.8  ; -min(-1.1, -1.1) = 1.1 ; -min(-1, -1) = 1.0
RATIOS = torch.tensor([[1.5, 0.9, 1.0], [0.7, 1.1, 1.0]])
MASK = torch.tensor([[1, 1, 0], [1, 1, 1]])
ADV = torch.tensor([1.0, -1.0])


def _loss(loss_type: str, beta: float = 0.0, ref=None, **kw):
    logps = torch.log(RATIOS)
    return grpo_loss(logps, torch.zeros_like(logps), ref, ADV, MASK, loss_type=loss_type,
                     epsilon=0.2, epsilon_high=0.28, beta=beta, max_completion_length=4, **kw)


def test_grpo_loss_is_the_mean_of_per_sequence_token_means():
    loss, _ = _loss("grpo")
    # seq 0: (-1.28 - 0.9) / 2 = -1.09 ; seq 1: (0.8 + 1.1 + 1.0) / 3 = 0.96667 ; mean -0.061667
    assert loss.item() == pytest.approx(-0.0616667, abs=1e-6)


def test_dr_grpo_loss_divides_the_token_sum_by_sequences_times_max_length():
    loss, _ = _loss("dr_grpo")
    # token sum: -2.18 + 2.9 = 0.72 ; / (2 sequences * max_completion_length 4) = 0.09
    assert loss.item() == pytest.approx(0.09, abs=1e-6)


def test_dapo_loss_divides_the_token_sum_by_the_token_count():
    loss, _ = _loss("dapo")
    # 0.72 / 5 tokens
    assert loss.item() == pytest.approx(0.144, abs=1e-6)


def test_clip_fractions_count_tokens_clipped_on_each_side():
    _, stats = _loss("grpo")
    # low: r < 0.8 with A < 0 -> seq 1 token 0 ; high: r > 1.28 with A > 0 -> seq 0 token 0 ; of 5
    assert stats.clip_low == pytest.approx(0.2) and stats.clip_high == pytest.approx(0.2)
    assert stats.ratio_min == pytest.approx(0.7) and stats.ratio_max == pytest.approx(1.5)
    assert stats.tokens == 5


def test_beta_adds_the_k3_kl_to_the_reference_per_token():
    # reference log-probs 0 (as old): delta = ref - logp = -log r ; kl = e^delta - delta - 1
    #   = 1/r + log r - 1 per token; grpo loss gains beta * (mean over sequences of token means)
    kl = [[1 / r + math.log(r) - 1 for r in row] for row in RATIOS.tolist()]
    kl_term = ((kl[0][0] + kl[0][1]) / 2 + sum(kl[1]) / 3) / 2
    loss, stats = _loss("grpo", beta=0.1, ref=torch.zeros(2, 3))
    assert loss.item() == pytest.approx(-0.0616667 + 0.1 * kl_term, abs=1e-6)
    token_mean_kl = (kl[0][0] + kl[0][1] + sum(kl[1])) / 5
    assert stats.kl == pytest.approx(token_mean_kl, abs=1e-6)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_chunk_losses_add_up_to_the_whole_batch_loss(loss_type):
    whole, _ = _loss(loss_type)
    logps = torch.log(RATIOS)
    parts = [
        grpo_loss(logps[i:i + 1], torch.zeros(1, 3), None, ADV[i:i + 1], MASK[i:i + 1],
                  loss_type=loss_type, epsilon=0.2, epsilon_high=0.28, beta=0.0,
                  max_completion_length=4, n_sequences=2, n_tokens=5)[0]
        for i in range(2)
    ]
    assert sum(p.item() for p in parts) == pytest.approx(whole.item(), abs=1e-6)


def test_loss_gradient_vanishes_where_the_ratio_is_clipped():
    logps = torch.log(RATIOS).requires_grad_(True)
    loss, _ = grpo_loss(logps, torch.zeros(2, 3), None, ADV, MASK, loss_type="dapo", epsilon=0.2,
                        epsilon_high=0.28, beta=0.0, max_completion_length=4)
    loss.backward()
    # clipped tokens (seq 0 token 0, seq 1 token 0) and the padding get no gradient
    assert logps.grad[0, 0] == 0 and logps.grad[1, 0] == 0 and logps.grad[0, 2] == 0
    # d(-r * A)/d logp = -r * A / 5 tokens: seq 0 token 1 -> -0.9 / 5
    assert logps.grad[0, 1].item() == pytest.approx(-0.9 / 5, abs=1e-6)


def test_group_advantages_scale_by_group_std_batch_std_or_not_at_all():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    # group 0: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.57735 ; group 1: all equal -> 0
    g = group_advantages(r, 4, "group")
    a = 0.5 / (0.57735 + 1e-4)
    assert g[:4].tolist() == pytest.approx([a, -a, -a, a], abs=1e-4)
    assert g[4:].tolist() == [0.0] * 4
    # batch std of r (6 ones, 2 zeros): sqrt(8 * 0.75 * 0.25 / 7) = 0.46291
    b = group_advantages(r, 4, "batch")
    assert b[0].item() == pytest.approx(0.5 / (0.46291 + 1e-4), abs=1e-4)
    n = group_advantages(r, 4, "none")
    assert n.tolist() == [0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0]


def test_score_fills_one_column_per_reward_and_the_weighted_sum():
    b = Batch(prompts=["p"] * 2, answers=["4", "5"], completions=["4", "x"],
              input_ids=torch.zeros(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 3),
              completion_mask=torch.ones(2, 1), prompt_length=2, truncated=torch.zeros(2, dtype=torch.bool))

    def exact(prompts, completions, answers):
        return [1.0 if c == a else 0.0 for c, a in zip(completions, answers)]

    def length(prompts, completions, answers):
        return [float(len(c)) for c in completions]

    score(b, [exact, length], [2.0, 0.5])
    assert b.rewards.tolist() == [[1.0, 1.0], [0.0, 1.0]]
    assert b.reward.tolist() == [2.5, 0.5]
