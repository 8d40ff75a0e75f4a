"""completion_logprobs equals the naive full-logits computation, values and gradients, on a CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainer.grpo import token_logps
from trainer.logprobs import completion_logprobs, selective_logprobs


def _naive(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    length = targets.shape[1]
    logp = F.log_softmax(logits[:, :length].float() / temperature, dim=-1)
    return logp.gather(-1, targets[..., None]).squeeze(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 3])
def test_selective_logprobs_match_log_softmax_in_value_and_gradient(dtype, rows):
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(5, 7, 50, generator=gen) * 3).to(dtype)
    targets = torch.randint(0, 50, (5, 6), generator=gen)
    weights = torch.randn(5, 6, generator=gen)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    fast = selective_logprobs(a, targets, 0.7, rows)
    slow = _naive(b, targets, 0.7)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    (fast * weights).sum().backward()
    (slow * weights).sum().backward()
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(a.grad, b.grad, rtol=tol, atol=tol)
    assert torch.all(a.grad[:, 6:] == 0), "the last position predicts nothing"


def _lora_model():
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.set_num_threads(1)
    config = Qwen2Config(vocab_size=300, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         max_position_embeddings=64)
    torch.manual_seed(0)
    model = get_peft_model(Qwen2ForCausalLM(config), LoraConfig(r=4, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return model


def test_completion_logprobs_equal_the_trainers_token_logps_with_gradients():
    model = _lora_model()
    gen = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, 300, (4, 20), generator=gen)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :3] = 0  # left padding
    attention_mask[2, :5] = 0
    attention_mask[3, 17:] = 0  # a completion that stopped early
    prompt_length, weights = 8, torch.randn(4, 12, generator=gen)

    fast = completion_logprobs(model, input_ids, attention_mask, prompt_length, 0.9, rows=2)
    (fast * weights).sum().backward()
    fast_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    slow = token_logps(model, input_ids, attention_mask, prompt_length, 0.9)
    (slow * weights).sum().backward()

    assert fast.shape == slow.shape == (4, 12) and fast.dtype == torch.float32
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    for name, param in model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(fast_grads[name], param.grad, rtol=1e-4, atol=1e-6)


def test_completion_logprobs_without_grad_under_disabled_adapter():
    model = _lora_model()
    input_ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(input_ids)
    with torch.no_grad(), model.disable_adapter():
        fast = completion_logprobs(model, input_ids, mask, 5)
        slow = token_logps(model, input_ids, mask, 5, 1.0)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


def _saved_float32_sizes(fn) -> list[int]:
    sizes: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.dtype == torch.float32:
            sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sizes


def test_no_float32_logits_tensor_is_kept_for_backward():
    model = _lora_model().to(torch.bfloat16)  # as on a GPU: the model's own tensors are bf16
    for module in model.modules():
        if hasattr(module, "lora_A"):  # keep everything but the logits path out of the count
            module.requires_grad_(False)
    model.base_model.model.model.norm.weight.requires_grad_(True)
    input_ids = torch.randint(0, 300, (4, 20), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(input_ids)
    full = 4 * 12 * 300  # rows x completion tokens x vocab
    ours = _saved_float32_sizes(lambda: completion_logprobs(model, input_ids, mask, 8))
    plain = _saved_float32_sizes(lambda: token_logps(model, input_ids, mask, 8, 1.0))
    assert max(plain) >= full, "the plain path keeps a float32 [rows, tokens, vocab] tensor"
    assert max(ours, default=0) < full


def test_bf16_adapter_compute_keeps_float32_master_weights_and_gradients():
    """Mixed precision for the adapter branch (on CPU via CPU autocast): the values stay close to
    the float32 computation, the adapter weights and their gradients stay float32, and peft's
    input casting is restored afterwards."""
    model = _lora_model()
    gen = torch.Generator().manual_seed(4)
    input_ids = torch.randint(0, 300, (3, 16), generator=gen)
    mask = torch.ones_like(input_ids)
    mask[1, :4] = 0
    exact = completion_logprobs(model, input_ids, mask, 6, bf16_adapter=False)
    mixed = completion_logprobs(model, input_ids, mask, 6, bf16_adapter=True)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, exact, rtol=0.05, atol=0.1)
    mixed.sum().backward()
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert all(p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32 for p in lora)
    assert any(float(p.grad.abs().sum()) > 0 for p in lora)
    assert all(getattr(m, "cast_input_dtype_enabled", True) for m in model.modules())


def test_bf16_adapter_is_chosen_only_for_a_cuda_bf16_base_with_float32_adapter():
    from trainer.logprobs import wants_bf16_adapter

    assert not wants_bf16_adapter(_lora_model())  # CPU, float32: results stay as they were
