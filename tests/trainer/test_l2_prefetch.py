"""trainer/l2_prefetch.py on a CPU: what the side branch would ask the L2 for, per point of the
decode step (the byte ranges of a tiny random Qwen2's weights), the plan's refusals, and that the
branch does nothing off CUDA (its requests are CUDA instructions; bench/gpu_l2_prefetch.py and the
`decode_variants` side of bench/gpu_step.py run them on the GPU machine)."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from trainer.l2_prefetch import LINE, MB, L2Plan, SideBranch
from trainer.qwen2_decode import DecodeState, DecodeWeights


@pytest.fixture(scope="module")
def weights() -> DecodeWeights:
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=128, hidden_size=256, intermediate_size=1024, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return DecodeWeights.allocate(Qwen2ForCausalLM(config).eval())


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def test_layer_start_asks_for_the_first_megabytes_of_gate_up_and_down(weights):
    gate_up = weights.layers[1].gate_up  # 2048 x 256 float32: 2 MB
    plan = L2Plan(gate_up_mb=0.75, down_mb=0.001)
    found = plan.at_layer_start(weights, 1)
    assert [w.data_ptr() for w, _ in found] == [gate_up.data_ptr(), weights.layers[1].down.data_ptr()]
    assert found[0][1] == int(0.75 * MB) and found[1][1] == int(0.001 * MB) // LINE * LINE
    # more than the weight holds: the whole weight, no more
    assert L2Plan(gate_up_mb=64).at_layer_start(weights, 1) == [(gate_up, _nbytes(gate_up))]
    assert L2Plan().at_layer_start(weights, 1) == []


def test_the_next_layers_attention_weights_and_cache_after_gate_up(weights):
    plan = L2Plan(next_layer=True, next_kv=True)
    after = plan.after_gate_up(weights, 0)
    nxt = weights.layers[1]
    assert [(w.data_ptr(), n) for w, n in after] == [(nxt.qkv.data_ptr(), _nbytes(nxt.qkv)),
                                                     (nxt.o.data_ptr(), _nbytes(nxt.o))]
    assert plan.after_gate_up(weights, 2) == []  # the last layer: nothing after it
    assert [plan.cache_before(i, 3) for i in (-1, 0, 1, 2)] == [0, 1, 2, None]
    assert L2Plan(next_layer=True).cache_before(0, 3) is None
    # the step's start asks for the first layer's attention weights along with its gate/up
    start = L2Plan(gate_up_mb=1, next_layer=True).at_layer_start(weights, 0)
    assert [w.data_ptr() for w, _ in start] == [weights.layers[0].gate_up.data_ptr(),
                                                weights.layers[0].qkv.data_ptr(), weights.layers[0].o.data_ptr()]


@pytest.mark.parametrize("bad", [{"mode": "fast"}, {"chunk": 100}, {"chunk": 0}])
def test_a_bad_plan_is_refused_by_name(bad):
    with pytest.raises(ValueError, match=str(next(iter(bad.values())))):
        L2Plan(**bad)


def test_the_branch_does_nothing_off_cuda(weights):
    state = DecodeState.allocate(weights.dims, 2, 16, torch.device("cpu"), torch.float32)
    side = SideBranch(L2Plan(gate_up_mb=1, next_layer=True, next_kv=True), weights, state)
    assert side.plan is None
    side.step_start()  # no stream, no kernel: these must not touch CUDA on a CPU box
    side.layer_start(1)
    side.after_gate_up(0)
    side.join()
    assert "gate_up 1 MB" in L2Plan(gate_up_mb=1).describe()
