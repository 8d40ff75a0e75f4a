"""The optional Triton kernels in Triton's interpreter (CPU): trainer/triton_sampling.py draws from
softmax(l / T) and never a banned id; trainer/triton_decode.py equals SDPA's decode attention;
trainer/fused_decode.py's step (RoPE, cache write and attention in one kernel, residual + RMSNorm
fused) equals the plain step on a tiny random Qwen2: to float rounding in float32 (every index,
sign and slot right), and passing the engine's own check in bf16.
Skipped where Triton is not installed (the CUDA image has it). Each runs in a child process:
TRITON_INTERPRET must be set before Triton is first imported."""

from __future__ import annotations

import pytest
from child import child_json

pytest.importorskip("triton")

CHILD = r"""
import json, torch
from trainer import triton_sampling as ts
ts.COLUMNS_PER_PROGRAM, ts.BLOCK = 32, 16  # several blocks and programs per row
rows, vocab, temperature = 600, 40, 0.8
logits = (torch.randn(vocab, generator=torch.Generator().manual_seed(0)) * 1.5).bfloat16()[None].repeat(rows, 1)
banned = torch.tensor([3, 17])
tokens = ts.race_sample(logits, 1 / temperature, torch.Generator().manual_seed(1), banned)
p = (logits[0].float() / temperature).index_fill(0, banned, float("-inf")).softmax(-1)
freq = torch.bincount(tokens, minlength=vocab).float() / rows
print(json.dumps({"dtype": str(tokens.dtype), "banned": float(freq[banned].sum()),
                  "tv": float(0.5 * (freq - p).abs().sum())}))
"""


def _interpreted(code: str) -> dict:
    return child_json(code, TRITON_INTERPRET="1")


def test_race_sample_draws_from_the_softmax_and_never_a_banned_id():
    found = _interpreted(CHILD)
    assert found["dtype"] == "torch.int64" and found["banned"] == 0
    # Total variation from the softmax. 600 exact multinomial draws alone give 0.06-0.11 here (six
    # seeds); a wrong column, row or noise mapping gives several tenths.
    assert found["tv"] < 0.14


DECODE = r"""
import json, torch
from trainer.qwen2_decode import Attention, ModelDims, _attend
dims = ModelDims(layers=1, hidden=96, heads=6, kv_heads=2, head_dim=16, intermediate=8, vocab=8, eps=1e-6,
                 rope_theta=1e4)
gen = torch.Generator().manual_seed(0)
batch, length = 3, 150  # more than two blocks of slots, the last one partial
q = torch.randn(batch, dims.heads, dims.head_dim, generator=gen).bfloat16()
live = torch.randn(batch, dims.kv_heads, length + 10, 2 * dims.head_dim, generator=gen).bfloat16()[:, :, :length]
valid = torch.rand(batch, length, generator=gen) > 0.3
valid[1, :70] = False  # a whole block of slots masked (left padding)
bias = torch.zeros(batch, 1, length).bfloat16().masked_fill_(~valid[:, None], float("-inf"))[:, None]
want = _attend(dims, q.float(), live.float(), bias.float(), Attention.SDPA)
got = _attend(dims, q, live, bias, Attention.TRITON)
print(json.dumps({"shape": list(got.shape), "error": float((got.float() - want).norm() / want.norm())}))
"""


def test_triton_decode_attention_equals_sdpa():
    found = _interpreted(DECODE)
    assert found["shape"] == [3, 6 * 16]
    assert found["error"] < 0.01  # bf16 output rounding


# A tiny random Qwen2 for the child processes: `random_model(dtype)`.
RANDOM_QWEN2 = r"""
from transformers import Qwen2Config, Qwen2ForCausalLM
config = Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                     rope_theta=1e4, rms_norm_eps=1e-6, use_sliding_window=False)
def random_model(dtype):
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():  # norms and biases off their init (ones, zeros): a wrong one shows
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.3 * torch.randn_like(param))
            elif name.endswith("bias"):
                param.normal_(0, 0.2)
    return model.to(dtype).eval()
"""

# Teacher-forced prompts for the engine: 4 rows (rows 1 and 2 one group sharing a prompt, row 0 left
# padded), 20 prompt + 48 completion slots: two attention buckets.
ENGINE_PROMPTS = r"""
gen = torch.Generator().manual_seed(1)
prompt = torch.randint(1, 128, (4, 20), generator=gen)
prompt[2] = prompt[1]  # a group of two rows: the fused step reads row 2's prompt slots from row 1
mask = torch.ones_like(prompt)
mask[0, :7] = 0  # left padding
completion = torch.randint(1, 128, (4, 48), generator=gen)
"""

FUSED = r"""
import json, os, torch
from trainer import fast_generation
from trainer.qwen2_decode import Attention, DecodeWeights
from trainer.fused_decode import check_error, check_passes
torch.manual_seed(0)
""" + RANDOM_QWEN2 + r"""
found = {}
for dtype in (torch.float32, torch.bfloat16):
    model = random_model(dtype)
    result = check_error(DecodeWeights.allocate(model), Attention.SDPA)
    result["passes"] = check_passes(result)
    found[str(dtype)] = result
# Through the engine: teacher-forced logits of the fused step against the plain one (float32).
model = random_model(torch.float32)
""" + ENGINE_PROMPTS + r"""
logits = {}
for mode in ("0", "1"):
    os.environ[fast_generation.FUSED_ENV] = mode
    fast_generation.release_engines()
    logits[mode] = fast_generation.forced_logits(model, prompt, mask, completion, use_graphs=False,
                                                 compile_layers=False)
    found["engine_fused_" + mode] = fast_generation._ENGINES[model].fused
found["engine_rel_error"] = float((logits["1"] - logits["0"]).norm() / logits["0"].norm())
print(json.dumps(found))
"""


SHARED = r'''
import json, torch
from trainer.fused_decode import rope_attention
from trainer.qwen2_decode import DecodeState, ModelDims
dims = ModelDims(layers=1, hidden=96, heads=6, kv_heads=2, head_dim=16, intermediate=8, vocab=8, eps=1e-6,
                 rope_theta=1e4)
gen = torch.Generator().manual_seed(0)
batch, capacity, prompt, slot, kv_len = 4, 256, 70, 150, 192
state = DecodeState.allocate(dims, batch, capacity, torch.device("cpu"), torch.float32)
cache = torch.randn(state.kv_cache[0].shape, generator=gen)
cache[1, :, :prompt] = cache[0, :, :prompt]  # rows 0-1 share a prompt, rows 2-3 another
cache[3, :, :prompt] = cache[2, :, :prompt]
state.valid[:, :slot] = True
state.valid[2:, :5] = False  # left padding of the second prompt
state.positions.copy_(torch.tensor([slot, slot, slot - 5, slot - 5]))
state.write_index.fill_(slot)
bias = torch.zeros(batch, kv_len).masked_fill_(~state.valid[:, :kv_len], float("-inf"))
qkv = torch.randn(batch, (dims.heads + 2 * dims.kv_heads) * dims.head_dim, generator=gen)
plain_cache = cache.clone()
want = rope_attention(dims, qkv, state, plain_cache, bias, kv_len)
shared_cache = cache.clone()
shared_cache[1, :, :prompt] = float("nan")  # a follower's own copy of the prompt is never read
shared_cache[3, :, :prompt] = float("nan")
shared_cache[:, :, slot + 1:] = float("nan")  # nor the unfilled slots past this step's
state.leaders.copy_(torch.tensor([0, 0, 2, 2]))
state.shared.fill_(prompt)
got = rope_attention(dims, qkv, state, shared_cache, bias, kv_len)
in_block = rope_attention(dims, qkv, state, shared_cache.clone(), bias, kv_len, mask_ahead=False)
print(json.dumps({"finite": bool(got.isfinite().all()), "max_abs_diff": float((got - want).abs().max()),
                  "slot_written": bool(torch.equal(shared_cache[:, :, slot], plain_cache[:, :, slot])),
                  "mask_ahead_equal": bool(torch.equal(got, in_block))}))
'''


def test_fused_attention_reads_the_groups_prompt_from_its_first_row_and_stops_at_the_slot():
    found = _interpreted(SHARED)
    assert found["finite"] and found["slot_written"]
    assert found["max_abs_diff"] < 1e-5  # float32 in the interpreter: the same sums
    # each block's mask read one block ahead gives what reading it in its block gave, bit for bit
    assert found["mask_ahead_equal"]


def test_fused_decode_step_equals_the_plain_step():
    found = _interpreted(FUSED)
    exact, bf16 = found["torch.float32"], found["torch.bfloat16"]
    assert exact["passes"] and bf16["passes"]
    assert exact["attention_rel_error"] < 1e-5 and exact["logits_rel_error"] < 1e-5
    assert exact["cache_slot_rel_max_diff"] < 1e-5 and exact["cache_other_slots_equal"]
    assert bf16["attention_rel_error"] < 0.02 and bf16["logits_rel_error"] < 0.05
    assert found["engine_fused_0"] is False and found["engine_fused_1"] is True
    assert found["engine_rel_error"] < 1e-5


FOLD = r"""
import json, os, torch
os.environ["RLTUI_TRITON_FOLD"] = "1"
from peft import LoraConfig, get_peft_model
from transformers import Qwen2Config, Qwen2ForCausalLM
from trainer import triton_fold
from trainer.qwen2_decode import DecodeWeights, effective_linear
torch.manual_seed(0)
found = {"bf16": triton_fold.check(torch.randn(70, 150).bfloat16(), rank=5)}
config = Qwen2Config(vocab_size=64, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, use_sliding_window=False)
model = get_peft_model(Qwen2ForCausalLM(config), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
with torch.no_grad():
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.normal_(0, 0.1)
weights = DecodeWeights.allocate(model)
layer = model.base_model.model.model.layers[1]
want = torch.cat([effective_linear(layer.mlp.gate_proj)[0], effective_linear(layer.mlp.up_proj)[0]])
found["folded"] = weights.fold
found["fp32_max_abs_diff"] = float((weights.layers[1].gate_up - want).abs().max())
found["fp32_max_abs"] = float(want.abs().max())
print(json.dumps(found))
"""


def test_triton_fold_equals_the_torch_fold():
    found = _interpreted(FOLD)
    # bf16: within one step (the interpreter rounds float32 -> bf16 toward zero, a GPU to nearest,
    # so only the bound is checked here; on CUDA the engine's own check also wants < 1% differing).
    assert found["bf16"]["max_steps"] <= 1.01
    assert found["folded"] is True
    assert found["fp32_max_abs_diff"] <= 1e-6 * found["fp32_max_abs"]  # float32: summation order only


def _compiles_for_hopper(head_dim: int) -> bool:
    """The fused step's attention kernel compiled for sm_90a (no GPU needed: Triton's own
    ptxas) at these heads, bf16, as the fused step launches it with the fixed configuration."""
    import torch
    from triton.compiler.errors import CompilationError

    from trainer.fused_decode import _rope_attention_kernel as kernel
    from trainer.gluon_products import compile_for_hopper

    heads, kv_heads, batch, slots, bf16 = 4, 2, 3, 128, torch.bfloat16
    qkv = torch.zeros(batch, (heads + 2 * kv_heads) * head_dim, dtype=bf16)
    table = torch.zeros(256, head_dim)
    index = torch.zeros(batch, dtype=torch.int64)
    cache = torch.zeros(batch, kv_heads, slots, 2 * head_dim, dtype=bf16)
    bias = torch.zeros(batch, slots, dtype=bf16)
    out = torch.zeros(batch, heads * head_dim, dtype=bf16)
    args = (qkv, table, table, index, index, index, index, cache, bias, out, 0.25, batch, qkv.stride(0),
            cache.stride(0), cache.stride(1), cache.stride(2), bias.stride(0), out.stride(0), 0, out)
    options = dict(kv_len=64, F32_DOT=False, HEADS=heads, KV_HEADS=kv_heads, GROUPS=heads // kv_heads,
                   D=head_dim, BLOCK_M=16, BLOCK=64, PARTS=0, HAS_BIAS=False, num_warps=4, num_stages=3)
    try:
        compile_for_hopper(kernel, *args, **options)
    except CompilationError as e:
        assert "K >= 16" in str(e.__cause__ or e) or "K >= 16" in repr(e), e
        return False
    return True


@pytest.mark.parametrize("head_dim", [16, 32, 128])
def test_the_fused_step_is_offered_on_cuda_exactly_for_the_heads_its_attention_compiles_for(head_dim):
    # the tiny model's heads (16) made the fused step's check print a compile error into every
    # GPU job's log before the plain step took over; now it is not offered there
    import torch

    from trainer.fused_decode import fits
    from trainer.qwen2_decode import ModelDims

    dims = ModelDims(layers=1, hidden=4 * head_dim, heads=4, kv_heads=2, head_dim=head_dim, intermediate=8,
                     vocab=8, eps=1e-6, rope_theta=1e4)
    assert fits(dims, torch.device("cuda")) == _compiles_for_hopper(head_dim) == (head_dim >= 32)
    assert fits(dims, torch.device("cpu"))  # the interpreter's float32 dots take any
