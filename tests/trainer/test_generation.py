"""The shared generation helper: left-padded batches, seeded sampling, masks, deadline."""

from __future__ import annotations

import time

import pytest
import torch

from trainer.data import arith_split, build_prompt
from trainer.generation import generate
from trainer.modeling import load_adapter, load_model_and_tokenizer


@pytest.fixture(scope="module")
def policy(tiny_paths):
    model, tokenizer = load_model_and_tokenizer(tiny_paths.base, "cpu", torch.float32)
    return load_adapter(model, tiny_paths.warmstart), tokenizer


def _prompts(tokenizer, n: int) -> list[str]:
    return [build_prompt(tokenizer, e.question, "r1_template") for e in arith_split("test")[:n]]


def test_batched_left_padded_greedy_equals_one_prompt_at_a_time(policy) -> None:
    model, tokenizer = policy
    prompts = _prompts(tokenizer, 6)
    batched = generate(model, tokenizer, prompts, max_new_tokens=16, do_sample=False)
    assert len(set(batched.prompt_lengths)) > 1  # the batch really is padded
    singles = [generate(model, tokenizer, [p], max_new_tokens=16, do_sample=False).texts[0]
               for p in prompts]
    assert batched.texts == singles


def test_sampling_is_reproducible_from_the_generator_state(policy) -> None:
    model, tokenizer = policy
    prompts = _prompts(tokenizer, 4) * 2
    gen = torch.Generator().manual_seed(7)
    state = gen.get_state()
    first = generate(model, tokenizer, prompts, max_new_tokens=16, do_sample=True, generator=gen)
    gen.set_state(state)
    again = generate(model, tokenizer, prompts, max_new_tokens=16, do_sample=True, generator=gen)
    assert torch.equal(first.completion_ids, again.completion_ids)
    other = generate(model, tokenizer, prompts, max_new_tokens=16, do_sample=True, seed=8)
    assert not torch.equal(first.completion_ids, other.completion_ids)


def test_completion_mask_covers_tokens_up_to_and_including_eos(policy) -> None:
    model, tokenizer = policy
    out = generate(model, tokenizer, _prompts(tokenizer, 5), max_new_tokens=24, do_sample=False)
    for row, mask, n, truncated in zip(out.completion_ids, out.completion_mask,
                                       out.completion_lengths, out.truncated):
        assert mask[:n].all() and not mask[n:].any()
        assert (row[n:] == tokenizer.pad_token_id).all()
        assert truncated or row[n - 1].item() == tokenizer.eos_token_id
    assert out.completion_tokens == int(out.completion_mask.sum())


def test_max_new_tokens_truncates_and_says_so(policy) -> None:
    model, tokenizer = policy
    out = generate(model, tokenizer, _prompts(tokenizer, 3), max_new_tokens=3, do_sample=False)
    assert out.completion_ids.shape[1] == 3 and all(out.truncated)


def test_a_passed_deadline_stops_generation_early(policy) -> None:
    model, tokenizer = policy
    out = generate(model, tokenizer, _prompts(tokenizer, 2), max_new_tokens=50, do_sample=True,
                   seed=0, stop_at_eos=False, deadline=time.monotonic() - 1)
    assert out.timed_out and out.completion_ids.shape[1] == 1


def test_top_p_keeps_only_the_nucleus(policy) -> None:
    model, tokenizer = policy
    prompts = _prompts(tokenizer, 4)
    greedy = generate(model, tokenizer, prompts, max_new_tokens=12, do_sample=False)
    nucleus = generate(model, tokenizer, prompts, max_new_tokens=12, do_sample=True, top_p=1e-6,
                       seed=3)
    assert nucleus.texts == greedy.texts  # a vanishing nucleus is the single most likely token
