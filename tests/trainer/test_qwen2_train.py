"""trainer/qwen2_train.py (the CUDA training log-prob path) against the plain token_logps, on a CPU
in float32: values and LoRA gradients, shared prompts, padding, disabled adapter, checkpointing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainer.grpo import token_logps
from trainer.logprobs import head_logprobs
from trainer.qwen2_decode import UnsupportedModel
from trainer.qwen2_train import adapters_off, fast_logprobs_supported, prefix_shared_logprobs, prompt_groups


def _lora_model(dropout: float = 0.0):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.set_num_threads(1)
    config = Qwen2Config(vocab_size=300, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         max_position_embeddings=64)
    torch.manual_seed(0)
    model = get_peft_model(Qwen2ForCausalLM(config),
                           LoraConfig(r=4, lora_dropout=dropout, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return model


def _grouped_batch(seed: int):
    """3 prompts (one left-padded) x 3 completions, one completion stopped early, plus a lone row."""
    gen = torch.Generator().manual_seed(seed)
    prompts = torch.randint(0, 300, (3, 7), generator=gen)
    prompt_mask = torch.ones_like(prompts)
    prompt_mask[1, :2] = 0
    rows = torch.cat([prompts.repeat_interleave(3, dim=0), torch.randint(0, 300, (1, 7), generator=gen)])
    pmask = torch.cat([prompt_mask.repeat_interleave(3, dim=0), torch.ones(1, 7, dtype=torch.long)])
    completions = torch.randint(0, 300, (10, 9), generator=gen)
    cmask = torch.ones_like(completions)
    cmask[4, 6:] = 0
    return torch.cat([rows, completions], 1), torch.cat([pmask, cmask], 1), 7


def _grads(model) -> dict[str, torch.Tensor]:
    found = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    model.zero_grad(set_to_none=True)
    return found


def test_prompt_groups_merge_neighbouring_identical_prompts():
    ids, mask, p = _grouped_batch(0)
    starts, group = prompt_groups(ids, mask, p)
    assert starts.tolist() == [0, 3, 6, 9]
    assert group.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]


def test_checkpointing_is_switched_on_and_read_without_the_deprecated_names():
    import warnings

    from trainer.modeling import enable_checkpointing
    from trainer.qwen2_train import checkpointing

    model = _lora_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the names transformers 5 deprecated warn (FutureWarning)
        assert checkpointing(model) is False
        enable_checkpointing(model)
        assert checkpointing(model) is True
        assert checkpointing(model.get_base_model().model.layers[0]) is True  # the flag sits on each layer


@pytest.mark.parametrize("checkpointing", [False, True])
def test_prefix_shared_logprobs_equal_token_logps_with_gradients(checkpointing):
    model = _lora_model()
    if checkpointing:
        from trainer.modeling import enable_checkpointing
        from trainer.qwen2_train import checkpointing as checkpointed

        enable_checkpointing(model)
        assert checkpointed(model)  # so the layers below really are recomputed
    model.train()
    ids, mask, p = _grouped_batch(1)
    weights = torch.randn(10, 9, generator=torch.Generator().manual_seed(5))

    fast = prefix_shared_logprobs(model, ids, mask, p, 0.9, chunk_tokens=7)
    (fast * weights).sum().backward()
    fast_grads = _grads(model)
    slow = token_logps(model, ids, mask, p, 0.9)
    (slow * weights).sum().backward()
    slow_grads = _grads(model)

    assert fast.shape == slow.shape == (10, 9) and fast.dtype == torch.float32
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    assert fast_grads.keys() == slow_grads.keys() and len(fast_grads) == 2 * 7 * 2  # A, B x 7 x layers
    for name, grad in slow_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-4, atol=1e-5)


def test_prefix_shared_logprobs_with_the_adapter_disabled_are_the_base_model():
    model = _lora_model()
    ids, mask, p = _grouped_batch(2)
    with torch.no_grad(), model.disable_adapter():
        fast = prefix_shared_logprobs(model, ids, mask, p, 1.0)
        slow = token_logps(model, ids, mask, p, 1.0)
    with torch.no_grad():
        policy = prefix_shared_logprobs(model, ids, mask, p, 1.0)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(policy, fast, atol=1e-4), "the adapter must change the policy"


def test_adapters_off_is_peft_disable_adapter_bitwise_and_refuses_a_merged_adapter():
    model = _lora_model()
    ids, mask, p = _grouped_batch(3)
    with torch.no_grad(), model.disable_adapter():
        want = prefix_shared_logprobs(model, ids, mask, p, 1.0)
    with torch.no_grad(), adapters_off():
        got = prefix_shared_logprobs(model, ids, mask, p, 1.0)
    with torch.no_grad():
        policy = prefix_shared_logprobs(model, ids, mask, p, 1.0)  # the switch is gone afterwards
    assert torch.equal(got, want)
    assert not torch.allclose(policy, want, atol=1e-4)
    model.merge_adapter()  # the base weights now hold the adapter: only peft can take it out
    with torch.no_grad(), adapters_off(), pytest.raises(UnsupportedModel, match="merged"):
        prefix_shared_logprobs(model, ids, mask, p, 1.0)


def test_support_checks_are_remembered_per_adapter_set():
    from trainer import qwen2_decode
    from trainer.fast_generation import supports_fast_generation

    model = _lora_model()
    calls = []
    for _ in range(3):
        assert qwen2_decode.checked_once(model, "probe", lambda: calls.append(1) or True)
    assert len(calls) == 1  # remembered
    model.add_adapter("second", model.peft_config["default"])
    assert qwen2_decode.checked_once(model, "probe", lambda: calls.append(1) or False) is False
    assert len(calls) == 2  # a new adapter set is checked again
    model.set_adapter("second")
    qwen2_decode.checked_once(model, "probe", lambda: calls.append(1) or True)
    assert len(calls) == 3  # and so is another active adapter
    assert fast_logprobs_supported(model) and supports_fast_generation(model)


def test_lora_dropout_is_applied_in_training_only():
    model = _lora_model(dropout=0.5)
    ids, mask, p = _grouped_batch(3)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(prefix_shared_logprobs(model, ids, mask, p), token_logps(model, ids, mask, p, 1.0),
                                   rtol=1e-5, atol=1e-5)
        model.train()
        torch.manual_seed(0)
        a = prefix_shared_logprobs(model, ids, mask, p)
        torch.manual_seed(1)
        b = prefix_shared_logprobs(model, ids, mask, p)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_head_logprobs_equal_log_softmax_in_value_and_gradient(chunk):
    gen = torch.Generator().manual_seed(6)
    hidden = torch.randn(11, 8, generator=gen, requires_grad=True)
    weight = torch.randn(40, 8, generator=gen, requires_grad=True)
    targets = torch.randint(0, 40, (11,), generator=gen)
    g = torch.randn(11, generator=gen)
    fast = head_logprobs(hidden, weight, targets, 0.7, chunk)
    (fast * g).sum().backward()
    fast_grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    slow = F.log_softmax((hidden @ weight.T) / 0.7, -1).gather(-1, targets[:, None]).squeeze(-1)
    (slow * g).sum().backward()
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_grads[0], hidden.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast_grads[1], weight.grad, rtol=1e-5, atol=1e-6)


def test_supported_models():
    model = _lora_model()
    assert fast_logprobs_supported(model)
    assert fast_logprobs_supported(model.get_base_model())


def test_head_logprobs_with_a_frozen_head_gives_the_same_hidden_gradient():
    gen = torch.Generator().manual_seed(7)
    hidden = torch.randn(9, 8, generator=gen, requires_grad=True)
    weight = torch.randn(30, 8, generator=gen)
    targets = torch.randint(0, 30, (9,), generator=gen)
    g = torch.randn(9, generator=gen)
    (head_logprobs(hidden, weight, targets, 1.3, 4) * g).sum().backward()
    fast = hidden.grad.clone()
    hidden.grad = None
    (F.log_softmax((hidden @ weight.T) / 1.3, -1).gather(-1, targets[:, None]).squeeze(-1) * g).sum().backward()
    torch.testing.assert_close(fast, hidden.grad, rtol=1e-5, atol=1e-6)
