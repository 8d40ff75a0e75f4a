"""Triton's interpreter check of bench/attention_block.py and bench/layer_block.py (an experiment,
slower on an H200: docs/benchmarks.md, calls 26-28) against the fused step's pieces on a tiny random
Qwen2; fails if any output is more than 1e-6 off.

    TRITON_INTERPRET=1 PYTHONPATH=.:bench python bench/check_attention_block.py
"""
import json

import torch
import torch.nn.functional as F
from attention_block import AttentionShape, attention_block
from layer_block import layer_block
from transformers import Qwen2Config, Qwen2ForCausalLM

from trainer.fused_decode import element_fns, rope_attention, step_bias
from trainer.mlp_block import BlockShape
from trainer.qwen2_decode import DecodeState, DecodeWeights

torch.manual_seed(0)
config = Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=512, rope_theta=1e4, rms_norm_eps=1e-6,
                     use_sliding_window=False)
model = Qwen2ForCausalLM(config)
with torch.no_grad():
    for name, param in model.named_parameters():
        if "norm" in name:
            param.copy_(1 + 0.3 * torch.randn_like(param))
        elif name.endswith("bias"):
            param.normal_(0, 0.2)
weights = DecodeWeights.allocate(model.eval())
torch.set_grad_enabled(False)
dims, layer = weights.dims, weights.layers[0]
found = {}
for batch, written in ((3, 101), (20, 37)):
    capacity = 144
    states = [DecodeState.allocate(dims, batch, capacity, torch.device("cpu"), torch.float32) for _ in range(2)]
    cache = torch.randn(states[0].kv_cache.shape)
    valid = torch.rand(batch, capacity) > 0.3
    valid[:, written:] = False
    valid[0, :20] = False
    for s in states:
        s.kv_cache.copy_(cache)
        s.valid.copy_(valid)
        s.positions.copy_(torch.arange(batch) + written - batch)
        s.write_index.fill_(written)
        s.shared.fill_(10)
        s.leaders.copy_(torch.arange(batch) // 2 * 2)
    x, h = torch.randn(batch, dims.hidden), torch.randn(batch, dims.hidden)
    _, add_norm, _ = element_fns(dims, compiled=False)
    ref, got = states
    bias = step_bias(ref, capacity, torch.float32)
    attn = rope_attention(dims, F.linear(h, layer.qkv, layer.qkv_bias), ref, ref.kv_cache[0], bias, capacity)
    want_x, want_h = add_norm(x, F.linear(attn, layer.o), layer.post_norm)
    bias2 = step_bias(got, capacity, torch.float32)
    for name, shape in (("a", AttentionShape(programs=5, qkv_tile=16, qkv_splits=2, o_tile=16, o_splits=2, block_k=16)),
                        ("b", AttentionShape(programs=7, qkv_tile=32, qkv_splits=1, o_tile=32, o_splits=4, block_k=16))):
        got.kv_cache.copy_(cache)
        got_x, got_h = attention_block(dims, x, h, layer, got, got.kv_cache[0], bias2, capacity, shape)
        found[f"{name} {batch}"] = {"x": float((got_x - want_x).abs().max()), "h": float((got_h - want_h).abs().max()),
                                    "cache": float((got.kv_cache - ref.kv_cache).abs().max())}
    # the whole layer: the attention half, then the MLP half with the next layer's input norm
    _, _, silu_mul = element_fns(dims, compiled=False)
    nxt = weights.layers[1].input_norm
    want2_x, want2_h = add_norm(want_x, F.linear(silu_mul(F.linear(want_h, layer.gate_up)), layer.down), nxt)
    for name, (ashape, mshape) in (("layer a", (AttentionShape(programs=5, qkv_tile=16, qkv_splits=2, o_tile=16, o_splits=2,
                                                                block_k=16), BlockShape(programs=5, block_k=16, down_n=16))),
                                   ("layer b", (AttentionShape(programs=4, qkv_tile=32, qkv_splits=1, o_tile=32, o_splits=4,
                                                                block_k=16), BlockShape(programs=4, block_k=16, down_n=32)))):
        got.kv_cache.copy_(cache)
        got_x, got_h = layer_block(dims, x, h, layer, nxt, got, got.kv_cache[0], bias2, capacity, ashape, mshape)
        found[f"{name} {batch}"] = {"x": float((got_x - want2_x).abs().max()), "h": float((got_h - want2_h).abs().max()),
                                    "cache": float((got.kv_cache - ref.kv_cache).abs().max())}
print(json.dumps(found))
worst = max(v for found_one in found.values() for v in found_one.values())
assert worst <= 1e-6, f"off by {worst}"
