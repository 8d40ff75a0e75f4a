"""Repeatable decoding (trainer.triton_base.repeatable), the evaluator's: no decode kernel, shape
or step picked by timing, so one checkpoint gives the same completions in every evaluation on a
card kind. On a GPU, bench/eval_repeat.py shows it (docs/benchmarks.md, "Evaluator"); here, on a
CPU, what decides it: the switch, and the engine's untimed choice of its step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer import decode_graphs
from trainer.fast_generation import engine_for, release_engines
from trainer.tiny import TinySettings, build_tokenizer

REPO = Path(__file__).resolve().parents[2]
PROBE = ("import os; from trainer.triton_base import compile_options, decode_repeatably, repeatable; "
         "on = decode_repeatably(); "
         "print(on, repeatable(), os.environ.get('RLTUI_DECODE_REPEATABLE'), compile_options())")


def _probe(value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "RLTUI_DECODE_REPEATABLE"}
    if value is not None:
        env["RLTUI_DECODE_REPEATABLE"] = value
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    return done.stdout.strip()


def test_the_evaluators_switch_turns_it_on_for_its_process_unless_set_to_0() -> None:
    # and every torch.compile of the decode asks inductor to time nothing that changes numerics
    assert _probe(None) == "True True 1 {'options': {'deterministic': True}}"
    assert _probe("") == "True True 1 {'options': {'deterministic': True}}"
    assert _probe("0") == "False False 0 {}"


@pytest.fixture
def engine(monkeypatch):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    monkeypatch.setenv("RLTUI_DECODE_REPEATABLE", "1")
    tokenizer = build_tokenizer(TinySettings())
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    yield engine_for(model, 3, 64, graphs=False, compiled=False)
    release_engines()


def test_a_repeatable_engine_keeps_the_first_fixed_step_that_captures_untimed(engine, monkeypatch) -> None:
    # a CPU has no MLP block (Hopper only): the fused step, then the plain one
    variants = decode_graphs.fixed_variants(engine)
    assert [name for name, _, _ in variants] == ["fused", "plain"]
    assert all(not products.chosen for _, _, products in variants)  # no product shape from a timing
    captured = []

    def capture(kv_len):
        captured.append((engine.fused, kv_len))
        if engine.fused:
            raise RuntimeError("no fused step here")
        return "the plain step's graph", None

    monkeypatch.setattr(engine, "_capture", capture)
    with pytest.warns(UserWarning, match="fused decode step failed to capture"):
        graph = decode_graphs.choose_step(engine, 64)
    assert graph == ("the plain step's graph", None)
    assert captured == [(True, 64), (False, 64)]  # each once: nothing replayed to time it
    assert engine.fused is False
    assert engine.fused_timing == {"kv_len": 64, "chosen": "plain", "repeatable": True}


def test_a_repeatable_engine_keeps_the_first_when_it_captures(engine, monkeypatch) -> None:
    captured = []
    monkeypatch.setattr(engine, "_capture", lambda kv_len: captured.append(engine.fused) or ("graph", None))
    decode_graphs.choose_step(engine, 64)
    assert captured == [True] and engine.fused is True
    assert engine.fused_timing["chosen"] == "fused"


def test_each_compiled_piece_of_a_repeatable_decode_asks_inductor_for_its_deterministic_mode(monkeypatch) -> None:
    # Per compile: the global switch does not last (after every compiled frame dynamo puts back the
    # caller's torch.use_deterministic_algorithms, and that sets inductor's switch too).
    import trainer.fast_generation as fg
    import trainer.fused_decode as fd
    from trainer.qwen2_decode import ModelDims, rms_norm

    monkeypatch.setenv("RLTUI_DECODE_REPEATABLE", "1")
    monkeypatch.setenv(fg.COMPILE_ENV, "max-autotune")  # timed kernels: not where repeatable
    monkeypatch.setattr(fg, "_COMPILED", {})
    monkeypatch.setattr(fd, "_COMPILED", {})
    real_compile, asked = torch.compile, []

    def spy(fn, **kwargs):
        asked.append(kwargs)
        return real_compile(fn, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    dims = ModelDims(layers=1, hidden=32, heads=4, kv_heads=2, head_dim=8, intermediate=48, vocab=16, eps=1e-6,
                     rope_theta=1e4)
    fg._compiled_layer_fns(dims, fg._compile_mode())
    norm, _, _ = fd.element_fns(dims, compiled=True)
    assert len(asked) == 5 and all(kw.get("options") == {"deterministic": True} and "mode" not in kw
                                   for kw in asked), asked
    # and inductor takes it: compiled here for the CPU, the same as the eager norm
    x, weight = torch.randn(3, 32), torch.randn(32)
    assert torch.allclose(norm(x, weight), rms_norm(x, weight, 1e-6), atol=1e-5)


def test_a_fused_capture_that_fell_back_to_the_plain_step_is_named_plain(engine, monkeypatch) -> None:
    def capture(kv_len):  # as DecodeEngine._capture does when the fused warm-up fails
        engine.fused = False
        return "graph", None

    monkeypatch.setattr(engine, "_capture", capture)
    decode_graphs.choose_step(engine, 64)
    assert engine.fused is False and engine.fused_timing["chosen"] == "plain"
