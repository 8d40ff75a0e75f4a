"""The decode step's variants side by side in one process: the `decode_variants` side of
bench/gpu_step.py (not a command of its own).

    result = run_decode_variants(folder, work, device)

One rollout-shaped generation builds the engine (its own choice at the first bucket is kept in
the result), then each variant (the fused step with cuBLAS products, the chained step with every
product Triton's, the chained step with cuBLAS's gate/up and down, and whatever else the engine
offers; BENCH_DECODE_VARIANTS=name,name times only those) is captured for every attention bucket
the rollout visits and timed through the rollout's own sequence of slots, with its kernels by GPU
time at the last bucket and its check against the plain step (trainer/fused_decode.check_error)
on the model's weights. Names starting with `prefetched` (the chained step with the MLP block and
trainer/gluon_products.py's kernels, timed alone first): `prefetched_o_mlp_block` (o only),
`prefetched_mlp_block` (q/k/v too), `prefetched_late_mlp_block` (q/k/v letting the attention start
only at its end), `prefetched_o_<columns>x<slices>_mlp_block` (o of that shape),
`prefetched_o_gluon_block` (o 64 x 4 and the MLP block as trainer/gluon_mlp.py's kernel, launched
with PDL; `_plain` without, `_no_cross` without its down tiles asked for before the first barrier)
and `fused_mlp_block_again` (the baseline timed last). `gluon_block`: the fused step with the
Gluon block. `fused_mlp_block_apart`, `prefetched_o_64x4_mlp_block_apart`: the block with gate
and up as two products (BlockShape.stacked False; stacked is the default since call 78);
`fused_mlp_block_unaligned`, `prefetched_o_64x4_mlp_block_unaligned`: the block's column shares
starting anywhere, its stores 2 bytes wide (BlockShape.aligned False; aligned is the default since
session 25).
`stream`, `stream_pdl`: the layers as the attention and trainer/gluon_stream.py's one kernel
(weights ahead; launched with PDL after the attention), where the kernel's split fits the GPU;
`stream_tma`, `stream_pdl_tma`: the same with its outputs written by TMA stores (5 stages).
A variant's barriers giving up shows as `stream_barrier_gave_up` in its entry.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from gpu_common import Workload, load_tokenizer, make_prompts, sync


def run_decode_variants(folder: Path, work: Workload, device: str) -> dict[str, Any]:
    import torch
    from gpu_ours import kernel_breakdown, mean_replay_ms
    from peft import LoraConfig, get_peft_model

    from trainer import fast_generation, fused_decode, gluon_stream
    from trainer.mlp_block import BlockShape
    from trainer.modeling import load_model_and_tokenizer
    from trainer.triton_products import DecodeProducts

    model, _ = load_model_and_tokenizer(folder, device, "bf16")
    tokenizer = load_tokenizer(folder)
    model = get_peft_model(model, LoraConfig(r=work.lora_r, lora_alpha=work.lora_alpha, lora_dropout=0.0,
                                             target_modules="all-linear", task_type="CAUSAL_LM")).eval()
    prompts = [p for p in make_prompts(work, model.config.vocab_size) for _ in range(work.generations)]
    out = fast_generation.generate(model, tokenizer, prompts, max_new_tokens=work.completion_tokens, do_sample=True,
                                   generator=torch.Generator(device=device).manual_seed(0),
                                   min_new_tokens=work.completion_tokens)
    sync()
    engine = fast_generation._ENGINES[model]
    state = engine.state
    prompt_length = out.prompt_ids.shape[1]
    visits = [fast_generation.kv_length(prompt_length + i + 1, state.capacity) for i in range(work.completion_tokens - 1)]
    found: dict[str, Any] = {"engine_choice": engine.fused_timing, "prompt_length": prompt_length,
                             "chain": engine.chain.describe() if engine.chain else None,
                             "chain_timing_ms": engine.chain.timing if engine.chain else None, "variants": {}}
    block = BlockShape.for_gpu(torch.device(device))
    variants = {"fused": DecodeProducts(), "fused_mlp_block": DecodeProducts(mlp=block),
                "gluon_block": DecodeProducts(mlp=replace(block, gluon=True, pdl=True)),
                "fused_mlp_block_n128": DecodeProducts(mlp=replace(block, down_n=128)),
                "fused_mlp_block_apart": DecodeProducts(mlp=replace(block, stacked=False)),
                "fused_mlp_block_unaligned": DecodeProducts(mlp=replace(block, aligned=False))}
    for stream in gluon_stream.offered(state.tokens.device, state.tokens.shape[0], engine.weights.dims,
                                       state.kv_cache.dtype):  # where the kernel runs, asked for or not
        name = ("stream_pdl" if stream.pdl else "stream") + ("_tma" if stream.tma_store else "")
        variants[name] = DecodeProducts(stream=stream)
    if engine.chain is not None:
        chain = engine.chain
        variants |= {"chained": chain, "chained_split4": replace(chain, attention_splits=4),
                     "chained_mlp_cublas": chain.without("gate_up", "down"),
                     "chained_mlp_cublas_split4": replace(chain.without("gate_up", "down"), attention_splits=4),
                     "chained_gate_up_cublas_split4": replace(chain.without("gate_up"), attention_splits=4)}
    wanted = [name for name in os.environ.get("BENCH_DECODE_VARIANTS", "").split(",") if name]
    if any(name.startswith("prefetched") for name in wanted):  # tuned only when asked for: ~10 s
        batch = state.tokens.shape[0]
        prefetched = DecodeProducts.prefetched(engine.weights, batch)
        found["prefetched_timing_ms"] = prefetched.timing
        print(f"[decode_variants] Gluon products: {found['prefetched_timing_ms']}", flush=True)
        qkv, o = prefetched.chosen["qkv"], prefetched.chosen["o"]

        def chain(qkv_split):  # the chained step with the block, o the Gluon kernel's
            return replace(prefetched, chosen={"qkv": qkv_split, "o": o}, mlp=block)

        variants |= {"prefetched_o_mlp_block": chain(None),  # q/k/v cuBLAS's
                     "prefetched_mlp_block": chain(qkv),
                     "prefetched_late_mlp_block": chain(replace(qkv, early=False)),
                     "fused_mlp_block_again": DecodeProducts(mlp=block)}
        # prefetched_o_<columns>x<slices>_mlp_block: o as the Gluon kernel of that shape
        o4 = replace(o, block_n=64, splits=4)  # the engine's pick in calls 61-63
        for name, options in (("prefetched_o_gluon_block", {"pdl": True}),
                              ("prefetched_o_gluon_block_plain", {"pdl": False}),
                              ("prefetched_o_gluon_block_no_cross", {"pdl": True, "cross": False})):
            variants[name] = replace(prefetched, chosen={"qkv": None, "o": o4},
                                     mlp=replace(block, gluon=True, **options))
        variants["prefetched_o_64x4_mlp_block"] = replace(prefetched, chosen={"qkv": None, "o": o4}, mlp=block)
        variants["prefetched_o_64x4_mlp_block_apart"] = replace(prefetched, chosen={"qkv": None, "o": o4},
                                                                mlp=replace(block, stacked=False))
        variants["prefetched_o_64x4_mlp_block_unaligned"] = replace(prefetched, chosen={"qkv": None, "o": o4},
                                                                    mlp=replace(block, aligned=False))
        for name in wanted:
            shape = re.fullmatch(r"prefetched_o_(\d+)x(\d+)_mlp_block", name)
            if shape:
                sized = replace(o, block_n=int(shape[1]), splits=int(shape[2]))
                variants[name] = replace(prefetched, chosen={"qkv": None, "o": sized}, mlp=block)
    if wanted:  # the names above, to time only those
        unknown = [name for name in wanted if name not in variants]
        if unknown:
            print(f"BENCH_DECODE_VARIANTS: no variant {', '.join(map(repr, unknown))} here "
                  f"(these are: {', '.join(variants)})", file=sys.stderr)
            raise SystemExit(2)
        variants = {name: variants[name] for name in wanted}
    found["split_attention_repeats"] = split_attention_repeats(engine, max(visits))
    print(f"[decode_variants] split attention repeated: {found['split_attention_repeats']}", flush=True)
    saved = state.positions.clone(), state.write_index.clone()

    for name, products in variants.items():
        entry: dict[str, Any] = {"products": products.describe()}
        try:
            check = fused_decode.check_error(engine.weights, engine.attention, products=products)
            entry["check"] = check | {"passes": fused_decode.check_passes(check)}
            engine.fused, engine.products = True, products
            engine.graphs.clear()
            for kv in sorted(set(visits)):
                engine.graphs[kv] = engine._capture(kv)
            entry["fused_after_capture"] = engine.fused
            entry["replay_ms_mean"] = mean_replay_ms(engine, prompt_length, visits)
            last = max(visits)

            def at_last(last: int = last) -> None:
                state.write_index.fill_(last - 1)
                state.positions.fill_(last - 1)
            entry["kernels_at_last_bucket"] = kernel_breakdown(engine.graphs[last][0].replay, at_last, top=14)
            if products.stream is not None:
                entry["stream_barrier_gave_up"] = gluon_stream.failed(state.tokens.device)
        except Exception as exc:  # noqa: BLE001 - a variant failing is a finding, the others go on
            entry["error"] = repr(exc)[:500]
            torch.cuda.synchronize()
        state.positions.copy_(saved[0])
        state.write_index.copy_(saved[1])
        found["variants"][name] = entry
        print(f"[decode_variants] {name}: replay {entry.get('replay_ms_mean')} ms "
              f"{entry.get('error', '')} check {entry.get('check')}", flush=True)
        kernels = entry.get("kernels_at_last_bucket", {})
        for row in kernels.get("top", []):
            print(f"    {row['ms']:.4f} ms x{row['count']} {row['kernel']}", flush=True)
    engine.graphs.clear()
    fast_generation.release_engines()
    return found


def split_attention_repeats(engine, kv_len: int, calls: int = 200) -> dict[str, Any]:
    """The split attention kernel called many times on the same inputs (one layer's cache, the
    engine's state at slot kv_len - 1): every output bitwise the first (a partial read before it
    was written, or a ticket left over, would show here), and its difference from the one-program
    kernel, per split count."""
    import torch

    from trainer.fused_decode import rope_attention, step_bias
    from trainer.split_attention import rope_attention_split

    state, dims = engine.state, engine.weights.dims
    state.write_index.fill_(kv_len - 1)
    state.positions.fill_(kv_len - 1)
    bias = step_bias(state, kv_len, state.kv_cache.dtype)
    gen = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(state.tokens.shape[0], dims.q_size + 2 * dims.kv_size, device="cuda", generator=gen,
                      dtype=torch.float32).to(state.kv_cache.dtype)
    cache = state.kv_cache[0]
    want = rope_attention(dims, qkv, state, cache, bias, kv_len).float()
    found = {}
    for splits in (2, 4, 8):
        first = rope_attention_split(dims, qkv, state, cache, bias, kv_len, splits=splits, pdl=True)
        same = all(torch.equal(rope_attention_split(dims, qkv, state, cache, bias, kv_len, splits=splits, pdl=True),
                               first) for _ in range(calls))
        found[f"splits{splits}"] = {"repeats_bitwise_equal": same,
                                    "rel_diff_vs_one_program": float((first.float() - want).norm() / want.norm())}
    torch.cuda.synchronize()
    return found
