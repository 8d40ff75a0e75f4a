"""An experiment (docs/benchmarks.md, calls 26-28): the attention half of 28 decode layers at batch 128,
Qwen2.5-1.5B shapes, cuBLAS q/k/v + rope_attention + cuBLAS o + compiled add_norm (the fused step)
against bench/attention_block.py (and the whole layer against layer_block.py), each in a CUDA graph, at 384 attention slots (383 filled, the
first 128 shared per group of 8 rows).

    PYTHONPATH=.:bench python bench/gpu_attention_block.py
"""
import sys

import torch
import torch.nn.functional as F
from attention_block import AttentionShape, attention_block
from layer_block import layer_block

from trainer.fused_decode import element_fns, rope_attention, step_bias
from trainer.mlp_block import BlockShape, mlp_block
from trainer.qwen2_decode import DecodeState, ModelDims
from trainer.triton_products import _graph_ms

LAYERS, BATCH, KV, CAP = 28, 128, 384, 448


class Layer:
    def __init__(self, dims, gen, dev):
        def rand(*shape, scale=1.0):
            return (torch.randn(*shape, device=dev, generator=gen) * scale).to(torch.bfloat16)
        n = dims.q_size + 2 * dims.kv_size
        self.qkv, self.qkv_bias = rand(n, dims.hidden, scale=dims.hidden ** -0.5), rand(n, scale=0.2)
        self.o, self.post_norm = rand(dims.hidden, dims.q_size, scale=dims.q_size ** -0.5), 1 + 0.1 * rand(dims.hidden)
        self.gate_up = rand(2 * dims.intermediate, dims.hidden, scale=dims.hidden ** -0.5)
        self.down = rand(dims.hidden, dims.intermediate, scale=dims.intermediate ** -0.5)
        self.input_norm = 1 + 0.1 * rand(dims.hidden)


def main() -> int:
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    dims = ModelDims(layers=LAYERS, hidden=1536, heads=12, kv_heads=2, head_dim=128, intermediate=8960, vocab=151936,
                     eps=1e-6, rope_theta=1e6)
    layers = [Layer(dims, gen, dev) for _ in range(LAYERS)]
    state = DecodeState.allocate(dims, BATCH, CAP, dev, torch.bfloat16)
    state.kv_cache.normal_(generator=gen)
    state.valid[:, :KV - 1] = True
    state.positions.fill_(KV - 1)
    state.write_index.fill_(KV - 1)
    state.shared.fill_(128)
    state.leaders.copy_(torch.arange(BATCH, device=dev) // 8 * 8)
    bias = step_bias(state, KV, torch.bfloat16)
    x0 = torch.randn(BATCH, dims.hidden, device=dev, generator=gen).to(torch.bfloat16)
    h0 = torch.randn(BATCH, dims.hidden, device=dev, generator=gen).to(torch.bfloat16)
    _, add_norm, silu_mul = element_fns(dims, compiled=True)

    def fused():
        x, h = x0, h0
        for i, layer in enumerate(layers):
            attn = rope_attention(dims, F.linear(h, layer.qkv, layer.qkv_bias), state, state.kv_cache[i], bias, KV)
            x, h = add_norm(x, F.linear(attn, layer.o), layer.post_norm)
        return x, h

    def block(shape):
        def run():
            x, h = x0, h0
            for i, layer in enumerate(layers):
                x, h = attention_block(dims, x, h, layer, state, state.kv_cache[i], bias, KV, shape)
            return x, h
        return run

    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    variants = {"fused": fused}
    for qs, os_, st, w in ((4, 4, 3, 4), (8, 4, 3, 4), (4, 8, 3, 4), (4, 4, 4, 4), (4, 4, 3, 8)):
        variants[f"block qkv{qs} o{os_} s{st} w{w}"] = block(AttentionShape(programs=sms, qkv_splits=qs, o_splits=os_,
                                                                          stages=st, warps=w))
    variants["fused again"] = fused
    run_variants(variants)

    # Per phase, 28 layers each: the fused step's pieces, then the block's phases as separate launches.
    ashape0 = AttentionShape(programs=sms)
    qkv_out = F.linear(h0, layers[0].qkv, layers[0].qkv_bias)
    attn_out = rope_attention(dims, qkv_out, state, state.kv_cache[0], bias, KV)
    o_out = F.linear(attn_out, layers[0].o)
    pieces = {"piece qkv (cuBLAS)": lambda: [F.linear(h0, ly.qkv, ly.qkv_bias) for ly in layers],
              "piece rope_attention": lambda: [rope_attention(dims, qkv_out, state, state.kv_cache[i], bias, KV)
                                               for i in range(LAYERS)],
              "piece o (cuBLAS)": lambda: [F.linear(attn_out, ly.o) for ly in layers],
              "piece add_norm": lambda: [add_norm(x0, o_out, ly.post_norm) for ly in layers]}
    for ph in (1, 2, 3, 4):
        pieces[f"block phase {ph}"] = (lambda ph=ph: [attention_block(dims, x0, h0, ly, state, state.kv_cache[i], bias,
                                                                      KV, ashape0, phases=(ph,))
                                                      for i, ly in enumerate(layers)])
    for name, run in pieces.items():
        try:
            run()
            print(f"{name:28s} {_graph_ms(run, replays=30):.4f} ms", flush=True)
        except Exception as exc:  # noqa: BLE001
            print(f"{name:28s} {exc!r:.300}", flush=True)
            torch.cuda.synchronize()

    # The whole layer: the fused step's kernels, the two halves as two blocks, one layer block.
    def fused_layer():
        x, h = x0, h0
        for i, layer in enumerate(layers):
            attn = rope_attention(dims, F.linear(h, layer.qkv, layer.qkv_bias), state, state.kv_cache[i], bias, KV)
            x, h = add_norm(x, F.linear(attn, layer.o), layer.post_norm)
            nxt = layers[(i + 1) % LAYERS].input_norm
            x, h = add_norm(x, F.linear(silu_mul(F.linear(h, layer.gate_up)), layer.down), nxt)
        return x, h

    mshape, ashape = BlockShape.for_gpu(dev), AttentionShape(programs=sms)

    def two_blocks():
        x, h = x0, h0
        for i, layer in enumerate(layers):
            x, h = attention_block(dims, x, h, layer, state, state.kv_cache[i], bias, KV, ashape)
            x, h = mlp_block(x, h, layer.gate_up, layer.down, layers[(i + 1) % LAYERS].input_norm, dims.eps, mshape)
        return x, h

    def one_block(ashape=ashape, mshape=mshape):
        def run():
            x, h = x0, h0
            for i, layer in enumerate(layers):
                x, h = layer_block(dims, x, h, layer, layers[(i + 1) % LAYERS].input_norm, state, state.kv_cache[i],
                                   bias, KV, ashape, mshape)
            return x, h
        return run

    run_variants({"fused layer": fused_layer, "two blocks": two_blocks, "layer block": one_block(),
                  "layer block w8": one_block(AttentionShape(programs=sms, warps=8), BlockShape.for_gpu(dev, warps=8)),
                  "fused layer again": fused_layer})
    return 0


def run_variants(variants) -> None:
    base = None
    want = None
    for name, run in variants.items():
        try:
            got = [t.float() for t in run()]
            want = want or got
            err = max(float((g - w).norm() / w.norm()) for g, w in zip(got, want))
            ms = _graph_ms(run, replays=30)
            base = base or ms
            print(f"{name:28s} {ms:.4f} ms ({ms / base:.3f}x)  rel err {err:.2e}", flush=True)
        except Exception as exc:  # noqa: BLE001
            print(f"{name:28s} {exc!r:.300}", flush=True)
            torch.cuda.synchronize()


if __name__ == "__main__":
    sys.exit(main())
