"""The fast rollout path computes the same function as transformers: greedy tokens equal, on a CPU.

A small randomly initialised Qwen2 in float32 (wider initialisation than the default so that the
next-token logits have clear margins), the tiny model's tokenizer, prompts of different lengths
(left padding), repeated as in a GRPO group.
"""

from __future__ import annotations

import pytest
import torch

from trainer.fast_generation import engine_for, generate, release_engines, supports_fast_generation
from trainer.generation import generate as plain_generate
from trainer.qwen2_decode import DecodeWeights, effective_linear
from trainer.tiny import TinySettings, build_tokenizer

PROMPTS = [
    "Tom has 3 apples and buys 4 more. How many apples?",
    "What is 12 + 7?",
    "A box holds 6 pens; 5 boxes hold how many pens in total?",
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(TinySettings())


def _model(tokenizer, *, seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.set_num_threads(1)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=160, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, initializer_range=0.15, rope_theta=10000.0,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # Qwen2 q/k/v have biases, zero at init: make them count
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.1)
    return model


def _lora(model, *, seed: int = 1):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                  target_modules="all-linear"))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # B is zero at init, which would make the adapter a no-op
                param.normal_(0, 0.2)
    return peft_model.eval()


def _hf_greedy(model, tokenizer, prompts, max_new_tokens):
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[:, enc["input_ids"].shape[1]:]


def _repeated(group: int) -> list[str]:
    return [p for p in PROMPTS for _ in range(group)]


def test_greedy_tokens_equal_transformers_generate(tokenizer):
    model = _model(tokenizer)
    prompts = _repeated(2)
    fast = generate(model, tokenizer, prompts, max_new_tokens=24, do_sample=False, min_new_tokens=24)
    assert fast.completion_ids.shape == (len(prompts), 24)
    assert torch.equal(fast.completion_ids, _hf_greedy(model, tokenizer, prompts, 24))
    assert fast.completion_mask.all()


def test_greedy_output_equals_the_plain_generate_including_eos_stops(tokenizer):
    model = _model(tokenizer, seed=3)
    # Make EOS likely so that rows stop at different steps: the masks and widths must agree too.
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_token_id] *= 4.0
    prompts = _repeated(2)
    fast = generate(model, tokenizer, prompts, max_new_tokens=40, do_sample=False)
    plain = plain_generate(model, tokenizer, prompts, max_new_tokens=40, do_sample=False)
    assert any(n < 40 for n in plain.completion_lengths), "the setup should make some rows stop early"
    assert torch.equal(fast.completion_ids, plain.completion_ids)
    assert torch.equal(fast.completion_mask, plain.completion_mask)
    assert fast.texts == plain.texts
    assert fast.truncated == plain.truncated
    assert torch.equal(fast.prompt_ids, plain.prompt_ids)


def test_lora_adapter_is_folded_and_base_weights_stay_bitwise_unchanged(tokenizer):
    model = _lora(_model(tokenizer))
    before = {k: v.clone() for k, v in model.named_parameters() if "lora_" not in k}
    prompts = _repeated(3)
    fast = generate(model, tokenizer, prompts, max_new_tokens=20, do_sample=False, min_new_tokens=20)
    assert torch.equal(fast.completion_ids, _hf_greedy(model, tokenizer, prompts, 20))
    with model.disable_adapter():
        base_tokens = _hf_greedy(model, tokenizer, prompts, 20)
    assert not torch.equal(fast.completion_ids, base_tokens), "the adapter must change the output"
    for name, param in model.named_parameters():
        if name in before:
            assert torch.equal(param, before[name]), name


def test_disabled_adapter_generates_the_base_model(tokenizer):
    model = _lora(_model(tokenizer))
    prompts = _repeated(1)
    with model.disable_adapter():
        fast = generate(model, tokenizer, prompts, max_new_tokens=12, do_sample=False, min_new_tokens=12)
        assert torch.equal(fast.completion_ids, _hf_greedy(model, tokenizer, prompts, 12))


def test_cached_engine_picks_up_new_adapter_weights(tokenizer):
    model = _lora(_model(tokenizer))
    prompts = _repeated(2)
    generate(model, tokenizer, prompts, max_new_tokens=8, do_sample=False)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_A" in name:
                param.mul_(-1.5)  # an optimizer step, in effect
    fast = generate(model, tokenizer, prompts, max_new_tokens=16, do_sample=False, min_new_tokens=16)
    assert torch.equal(fast.completion_ids, _hf_greedy(model, tokenizer, prompts, 16))
    release_engines()


def test_folded_weight_is_base_plus_scaled_lora_product(tokenizer):
    model = _lora(_model(tokenizer))
    proj = model.base_model.model.model.layers[1].mlp.up_proj
    weight, _ = effective_linear(proj)
    lora_a, lora_b = proj.lora_A["default"].weight, proj.lora_B["default"].weight
    expected = proj.base_layer.weight + proj.scaling["default"] * lora_b @ lora_a
    torch.testing.assert_close(weight, expected, rtol=1e-6, atol=1e-6)
    fused = DecodeWeights.allocate(model)
    inter = model.config.intermediate_size
    torch.testing.assert_close(fused.layers[1].gate_up[inter:], expected, rtol=1e-6, atol=1e-6)


def test_sampling_is_reproducible_from_the_generator_state(tokenizer):
    model = _model(tokenizer)
    prompts = _repeated(4)
    runs = [generate(model, tokenizer, prompts, max_new_tokens=16, do_sample=True, temperature=1.0,
                     top_p=0.9, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    other = generate(model, tokenizer, prompts, max_new_tokens=16, do_sample=True,
                     generator=torch.Generator().manual_seed(8))
    assert torch.equal(runs[0].completion_ids, runs[1].completion_ids)
    assert not torch.equal(runs[0].completion_ids, other.completion_ids)
    # Within a group the same prompt gets different samples (one shared prefill, separate draws).
    assert len({tuple(r) for r in runs[0].completion_ids[:4].tolist()}) > 1


def test_min_new_tokens_suppresses_eos(tokenizer):
    model = _model(tokenizer, seed=3)
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_token_id] *= 6.0
    out = generate(model, tokenizer, _repeated(1), max_new_tokens=30, do_sample=False, min_new_tokens=30)
    assert out.completion_lengths == [30] * len(PROMPTS)
    assert tokenizer.eos_token_id not in out.completion_ids.flatten().tolist()


def test_engine_is_reused_for_the_same_batch_and_a_long_enough_cache(tokenizer):
    model = _model(tokenizer)
    first = engine_for(model, 4, 128, graphs=False, compiled=False)
    assert engine_for(model, 4, 128, graphs=False, compiled=False) is first
    assert engine_for(model, 4, 64, graphs=False, compiled=False) is first, "a longer cache serves"
    assert engine_for(model, 4, 192, graphs=False, compiled=False) is not first
    assert engine_for(model, 8, 192, graphs=False, compiled=False) is not first
    release_engines()


def test_supports_plain_lora_qwen2_only(tokenizer):
    from peft import LoraConfig, get_peft_model

    assert supports_fast_generation(_model(tokenizer))
    assert supports_fast_generation(_lora(_model(tokenizer)))
    dora = get_peft_model(_model(tokenizer), LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    assert not supports_fast_generation(dora)


def test_sampling_draws_from_the_tempered_softmax_and_respects_top_p_and_bans():
    from trainer.fast_generation import sample_tokens

    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5]).repeat(40000, 1)
    gen = torch.Generator().manual_seed(0)
    tokens = sample_tokens(logits, do_sample=True, temperature=0.7, top_p=1.0, generator=gen, banned=None)
    freq = torch.bincount(tokens, minlength=5).float() / len(tokens)
    torch.testing.assert_close(freq, (logits[0] / 0.7).softmax(-1), atol=0.01, rtol=0)

    probs = logits[0].softmax(-1)  # sorted: 0.47, 0.17 (id 1), 0.10 (id 4), 0.06, 0.02
    kept = sample_tokens(logits, do_sample=True, temperature=1.0, top_p=0.6, generator=gen, banned=None)
    assert set(kept.unique().tolist()) == {0, 1}, "top-p keeps the tokens up to the one crossing p"
    freq = torch.bincount(kept, minlength=5).float() / len(kept)
    torch.testing.assert_close(freq[:2], probs[:2] / probs[:2].sum(), atol=0.01, rtol=0)

    banned = sample_tokens(logits, do_sample=True, temperature=1.0, top_p=1.0, generator=gen,
                           banned=torch.tensor([0]))
    assert 0 not in banned.tolist()
    greedy = sample_tokens(logits[:3], do_sample=False, temperature=1.0, top_p=1.0, generator=None,
                           banned=torch.tensor([0]))
    assert greedy.tolist() == [1, 1, 1]


def test_engine_with_a_longer_cache_serves_shorter_prompts_exactly(tokenizer):
    from trainer.fast_generation import _ENGINES

    model = _lora(_model(tokenizer, seed=5))
    generate(model, tokenizer, PROMPTS, max_new_tokens=70, do_sample=False)
    engine = _ENGINES[model]
    short = ["What is 12 + 7?", "2 + 2?", "Add 5 and 9 please."]
    fast = generate(model, tokenizer, short, max_new_tokens=12, do_sample=False, min_new_tokens=12)
    assert _ENGINES[model] is engine
    assert torch.equal(fast.completion_ids, _hf_greedy(model, tokenizer, short, 12))
    release_engines()


def test_a_longer_prompt_makes_a_longer_cache_with_the_same_weights_and_choices(tokenizer):
    # a rollout whose prompts are longer than any before needs a longer cache: a new engine, which
    # takes over the old one's weights and choices instead of timing and checking them again
    from trainer.fast_generation import _ENGINES

    model = _lora(_model(tokenizer, seed=7))
    short = ["2 + 2?", "What is 12 + 7?", "Add 5 and 9."]
    generate(model, tokenizer, short, max_new_tokens=8, do_sample=False, min_new_tokens=8)
    first = _ENGINES[model]
    long = [p + " " + "Please think it through step by step before you answer. " * 6 for p in PROMPTS]
    fast = generate(model, tokenizer, long, max_new_tokens=8, do_sample=False, min_new_tokens=8)
    second = _ENGINES[model]
    assert second is not first and second.key.capacity > first.key.capacity
    assert second.weights is first.weights and second.products is first.products
    assert second.fused is first.fused and second.attention is first.attention
    assert "attention_check" not in second.warm_up_s  # nothing checked or timed again
    assert torch.equal(fast.completion_ids, _hf_greedy(model, tokenizer, long, 8))
    release_engines()


def test_an_evaluations_two_batch_sizes_keep_one_engine_each_sharing_the_weights(tokenizer):
    # 32 prompts and then the rest, checkpoint after checkpoint: with one engine a model, every
    # checkpoint built two, each timing, checking and capturing its steps again
    from trainer.fast_generation import _ENGINES, _KEPT

    model = _lora(_model(tokenizer, seed=6))
    full, rest = PROMPTS, PROMPTS[:2]
    generate(model, tokenizer, full, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    big = _ENGINES[model]
    generate(model, tokenizer, rest, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    small = _ENGINES[model]
    assert small is not big and _KEPT[model] == [big] and small.weights is big.weights
    with torch.no_grad():  # the next checkpoint's adapter (the evaluator hot-swaps it in place)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(0.05 * torch.randn_like(param))
    for prompts in (full, rest, full, rest):  # no new engine, and each sees the new adapter
        fast = generate(model, tokenizer, prompts, max_new_tokens=6, do_sample=False, min_new_tokens=6)
        assert _ENGINES[model] is (big if prompts is full else small)
        assert torch.equal(fast.completion_ids, _hf_greedy(model, tokenizer, prompts, 6))
    generate(model, tokenizer, PROMPTS[:1], max_new_tokens=6, do_sample=False)  # a third size
    assert _KEPT[model] == [small]  # the one used last is kept, the older one dropped
    release_engines()
    assert model not in _ENGINES and model not in _KEPT


class _FakeStream:
    def wait_stream(self, other) -> None:
        pass


class _FakeGraph:
    """Replays a recorded decode step into its static output, as a CUDA graph does."""

    def replay(self) -> None:
        self.replays += 1
        self.out.copy_(self.run())


class _FakeCapture:
    """Like torch.cuda.graph: the step inside is recorded, not executed (its effects are undone)."""

    def __init__(self, graph: _FakeGraph) -> None:
        self.graph = graph

    def __enter__(self):
        import trainer.fast_generation as fg

        self.real = real = fg.decode_step

        def record(weights, state, kv_len, *rest):
            buffers = (state.kv_cache, state.valid, state.tokens, state.positions,
                       state.write_index)
            before = [b.clone() for b in buffers]
            out = real(weights, state, kv_len, *rest)
            for buffer, saved in zip(buffers, before):
                buffer.copy_(saved)
            self.graph.run = lambda: real(weights, state, kv_len, *rest)
            self.graph.out, self.graph.replays = out, 0
            return out

        fg.decode_step = record

    def __exit__(self, *exc) -> None:
        import trainer.fast_generation as fg

        fg.decode_step = self.real


def test_graph_capture_bookkeeping_replays_exactly_the_eager_steps(tokenizer, monkeypatch):
    """The CUDA-graph path on a CPU with a recording stand-in for the graph: warm-ups must leave
    position and slot as they were, and replays must read only the static buffers."""
    import contextlib

    import trainer.fast_generation as fg

    for name, fake in (("CUDAGraph", _FakeGraph), ("graph", _FakeCapture), ("Stream", _FakeStream),
                       ("current_stream", _FakeStream), ("stream", lambda s: contextlib.nullcontext()),
                       ("device", lambda d: contextlib.nullcontext())):
        monkeypatch.setattr(torch.cuda, name, fake)
    model = _lora(_model(tokenizer, seed=2))
    prompts = _repeated(2)
    graphed = generate(model, tokenizer, prompts, max_new_tokens=80, do_sample=False, min_new_tokens=80,
                       use_graphs=True, compile_layers=False)
    engine = fg._ENGINES[model]
    assert len(engine.graphs) >= 2, "the run should cross an attention-length bucket"
    assert sum(g.replays for g, _ in engine.graphs.values()) == 79
    eager = generate(model, tokenizer, prompts, max_new_tokens=80, do_sample=False, min_new_tokens=80,
                     use_graphs=False, compile_layers=False)
    assert torch.equal(graphed.completion_ids, eager.completion_ids)
    assert torch.equal(graphed.completion_ids, _hf_greedy(model, tokenizer, prompts, 80))
    release_engines()


def test_compiled_layer_functions_trace_whole_and_once_for_all_layers(tokenizer, monkeypatch):
    """torch.compile's tracing (the aot_eager backend: no C compiler needed on this machine) takes
    each per-layer function as one graph without breaks, and every layer and step reuses it."""
    from torch._dynamo.utils import counters

    import trainer.fast_generation as fg

    real_compile = torch.compile
    monkeypatch.setattr(fg.torch, "compile", lambda fn, **kw: real_compile(fn, backend="aot_eager", **kw))
    monkeypatch.setattr(fg, "_COMPILED", {})
    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    model = _lora(_model(tokenizer))
    prompts = _repeated(2)
    out = generate(model, tokenizer, prompts, max_new_tokens=20, do_sample=False, min_new_tokens=20,
                   compile_layers=True)
    assert torch.equal(out.completion_ids, _hf_greedy(model, tokenizer, prompts, 20))
    # pre- and post-attention, once each for decode (static shapes) and once each for the prefill
    # (any token count)
    assert counters["stats"]["unique_graphs"] - before == 4
    race = real_compile(fg._race_argmax, backend="aot_eager", fullgraph=True)
    logits, noise = torch.randn(4, 50).bfloat16(), torch.empty(4, 50).exponential_()
    assert torch.equal(race(logits, noise, 1.3), fg._race_argmax(logits, noise, 1.3))
    release_engines()


def test_teacher_forced_logits_match_transformers_on_a_fixed_sequence(tokenizer):
    """forced_logits (prefill + one decode step per token, as generate runs them) gives
    transformers' logits for every completion position, left padding and LoRA included."""
    from trainer.fast_generation import forced_logits

    model = _lora(_model(tokenizer, seed=4))
    prompts = _repeated(2)
    out = generate(model, tokenizer, prompts, max_new_tokens=70, do_sample=True, min_new_tokens=70,
                   generator=torch.Generator().manual_seed(0))
    fast = forced_logits(model, out.prompt_ids, out.prompt_mask, out.completion_ids)
    ids = torch.cat([out.prompt_ids, out.completion_ids], dim=1)
    mask = torch.cat([out.prompt_mask, out.completion_mask], dim=1)
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                          use_cache=False).logits[:, out.prompt_ids.shape[1] - 1:-1]
    assert fast.shape == reference.shape == (len(prompts), 70, len(tokenizer))
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)
    release_engines()


def test_bmm_decode_attention_generates_the_transformers_tokens(tokenizer, monkeypatch):
    """The alternative decode attention (baddbmm + softmax + bmm, grouped-query heads as rows)
    computes the same function: greedy tokens equal transformers', left padding included."""
    from trainer.fast_generation import ATTENTION_ENV, _ENGINES

    monkeypatch.setenv(ATTENTION_ENV, "bmm")
    model = _lora(_model(tokenizer, seed=6))
    prompts = _repeated(2)
    fast = generate(model, tokenizer, prompts, max_new_tokens=70, do_sample=False, min_new_tokens=70)
    assert _ENGINES[model].attention.value == "bmm"
    assert torch.equal(fast.completion_ids, _hf_greedy(model, tokenizer, prompts, 70))
    release_engines()


def test_decode_texts_equal_decoding_each_row(tokenizer):
    from trainer.fast_generation import decode_texts

    gen = torch.Generator().manual_seed(3)
    eos = tokenizer.eos_token_id
    rows = [torch.randint(0, len(tokenizer), (n,), generator=gen).tolist() + [eos] for n in (0, 3, 17, 40)]
    assert decode_texts(tokenizer, rows) == [tokenizer.decode(r, skip_special_tokens=True) for r in rows]
    tokenizer.clean_up_tokenization_spaces = not tokenizer.clean_up_tokenization_spaces  # the other branch
    try:
        assert decode_texts(tokenizer, rows) == [tokenizer.decode(r, skip_special_tokens=True) for r in rows]
    finally:
        tokenizer.clean_up_tokenization_spaces = not tokenizer.clean_up_tokenization_spaces


def test_repeated_prompts_are_tokenized_once_into_the_same_rows(tokenizer):
    from trainer.fast_generation import _tokenize_left

    prompts = ["What is 2 + 2?", "Name a colour.", "What is 2 + 2?", "x", "Name a colour.", "x"]
    ids, mask = _tokenize_left(tokenizer, prompts, None)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        want = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    assert torch.equal(ids, want["input_ids"]) and torch.equal(mask, want["attention_mask"])
    cut_ids, cut_mask = _tokenize_left(tokenizer, prompts, 3)
    assert torch.equal(cut_ids, want["input_ids"][:, -3:]) and torch.equal(cut_mask, want["attention_mask"][:, -3:])


def test_adapter_state_tells_a_switched_adapter_apart(tokenizer):
    # What the decode fold's and the training micro-batch's CUDA graphs compare before a replay.
    from trainer.qwen2_decode import adapter_state

    model = _lora(_model(tokenizer))
    on = adapter_state(model)
    assert on and on == adapter_state(model)
    with model.disable_adapter():
        assert adapter_state(model) != on
    assert adapter_state(model) == on
    assert adapter_state(_model(tokenizer)) == ()


def test_rows_are_one_prompt_only_when_ids_and_masks_agree():
    from trainer.fast_generation import _unique_rows

    eos = 7  # the pad id, and also a real first token of the second prompt
    ids = torch.tensor([[eos, 3, 4], [eos, 3, 4], [eos, 3, 4], [5, 3, 4]])
    mask = torch.tensor([[0, 1, 1], [0, 1, 1], [1, 1, 1], [1, 1, 1]])
    assert _unique_rows(ids, mask) == ([0, 2, 3], [0, 0, 1, 2])


ROPE_FIRST_CALL = r"""
import json, torch
from trainer.qwen2_decode import ModelDims, rope_tables
dims = ModelDims(layers=1, hidden=64, heads=4, kv_heads=2, head_dim=16, intermediate=8, vocab=8, eps=1e-6,
                 rope_theta=1e4)
cos, sin = rope_tables(dims, 144, torch.device("cpu"), torch.float32)  # this process's first cos and sin
again = rope_tables(dims, 144, torch.device("cpu"), torch.float32)
inv_freq = 1.0 / (1e4 ** (torch.arange(0, 16, 2).to(torch.float) / 16))
angles = torch.arange(144, dtype=torch.float)[:, None] * inv_freq[None, :]
angles = torch.cat((angles, angles), dim=-1).double()
print(json.dumps({"cos_err": float((cos.double() - angles.cos()).abs().max()),
                  "sin_err": float((sin.double() - angles.sin()).abs().max()),
                  "same_again": torch.equal(cos, again[0]) and torch.equal(sin, again[1])}))
"""


def test_rope_tables_on_a_cpu_are_the_same_from_a_process_first_call():
    # torch 2.13's CPU cos, on a process's first call from its worker threads, sometimes returned
    # values up to 1.5e-4 off (angles near 100 rad, the rows a second thread computed): two decode
    # states built in one process then disagreed. Each fresh process here makes its first call.
    from child import child_json

    for _ in range(3):
        found = child_json(ROPE_FIRST_CALL, timeout=300)
        assert found["same_again"]
        assert found["cos_err"] <= 6e-8 and found["sin_err"] <= 6e-8  # within float32 rounding
