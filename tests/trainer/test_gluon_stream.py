"""trainer/gluon_stream.py: the decode step as the attention and one layer kernel a layer.

Triton's interpreter does not run Gluon, so on a CPU the step runs with `LayerStream.reference`
(the kernel's K slices, sums and roundings in torch) in the kernel's place, through the real
rope_attention kernel in the interpreter, on a tiny random Qwen2 whose widths the kernel's split
takes on 6 programs (o's K in 1 + 2 steps: uneven slices). Checked: the fused step's own check
(the one the engine runs before it captures a step) passes at float32 rounding; three planted
bugs (the wrong norm after the MLP, the next q/k/v from this layer's weights or never written)
fail it and the engine's check at its own batch; the engine's teacher-forced logits across two attention buckets equal the
plain step's; a hang's diagnosis reads a traced kernel's marks and the counters; a barrier giving
up during a rollout makes the engine drop the step and choose again; releasing the engines frees
the workspaces; a stream step the engine drops is also run ungraphed and with its reference, each
error recorded (the diagnosis); the shapes the kernel refuses are refused with the reason; the engine is offered
the step only where the split fits a Hopper GPU's multiprocessors and the weights are bf16; the spin limit's flag is read and cleared; the kernel
compiles for sm_90a at the tiny widths (the benchmark's test compiles Qwen2.5-1.5B's). A child
process: TRITON_INTERPRET is set before Triton is imported."""

from __future__ import annotations

import pytest

from tests.trainer.test_triton_kernels import ENGINE_PROMPTS, RANDOM_QWEN2, _interpreted

pytest.importorskip("triton")

CHILD = r"""
import json, os, torch
from trainer import fast_generation, gluon_stream as gs
from trainer.decode_graphs import disagreeing
from trainer.fused_decode import check_error, check_passes, element_fns, fused_decode_step
from trainer.qwen2_decode import Attention, DecodeState, DecodeWeights, decode_step
from trainer.triton_products import DecodeProducts

torch.manual_seed(0)
""" + RANDOM_QWEN2 + r"""
config = Qwen2Config(vocab_size=128, hidden_size=192, intermediate_size=384, num_hidden_layers=2,
                     num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=512,
                     rope_theta=1e4, rms_norm_eps=1e-6, use_sliding_window=False)
model = random_model(torch.float32)  # (RANDOM_QWEN2's, with these widths)
weights = DecodeWeights.allocate(model)
variant = gs.StreamVariant(programs=6, reference=True)
products = DecodeProducts(stream=variant)
found = {"shape": str(gs.StreamShape.of(weights.dims, 3, 6)), "why_not": gs.StreamShape.of(weights.dims, 3, 6).why_not()}
result = check_error(weights, Attention.SDPA, products=products)
found["check"] = result | {"passes": check_passes(result)}

# Three planted bugs: each must fail the engine's checks.
original = gs.LayerStream.reference
def wrong_norm(self, index, attn, layer, following, post_norm, next_norm, v):
    original(self, index, attn, layer, following, post_norm, post_norm, v)
def qkv_not_handed_on(self, index, attn, layer, following, post_norm, next_norm, v):
    original(self, index, attn, layer, None, post_norm, next_norm, v)
def qkv_of_this_layer(self, index, attn, layer, following, post_norm, next_norm, v):
    original(self, index, attn, layer, following and layer, post_norm, next_norm, v)
start = DecodeState.allocate(weights.dims, 4, 128, "cpu", torch.float32)
start.kv_cache.normal_()
start.valid[:, :70] = True
start.valid[1, :9] = False
start.positions.copy_(torch.tensor([70, 61, 70, 70]))
start.write_index.fill_(70)
start.tokens.copy_(torch.tensor([5, 17, 99, 3]))
def fresh():
    return DecodeState(**{k: getattr(start, k).clone() for k in start.__dataclass_fields__})
fns = element_fns(weights.dims, compiled=False)
steps = {"plain": lambda: decode_step(weights, fresh(), 128, None, Attention.SDPA),
         "stream": lambda: fused_decode_step(weights, fresh(), 128, fns, products)}
found["planted"] = {}
for name, bug in (("wrong_norm", wrong_norm), ("qkv_of_this_layer", qkv_of_this_layer),
                  ("qkv_not_handed_on", qkv_not_handed_on)):
    gs._WORKSPACES.clear()  # (a part never written is NaN in a new workspace, not the last step's)
    gs.LayerStream.reference = bug
    result = check_error(weights, Attention.SDPA, products=products)
    timing = {}
    found["planted"][name] = {"passes": check_passes(result), "logits_rel_error": result["logits_rel_error"],
                              "dropped": disagreeing(["stream"], lambda n: steps[n](), timing), "timing": timing}
    gs.LayerStream.reference = original
timing = {}
found["engine_check"] = {"dropped": disagreeing(["stream"], lambda n: steps[n](), timing), "timing": timing}

# Through the engine: teacher-forced logits with the stream step against the plain one.
""" + ENGINE_PROMPTS + r"""
logits = {}
for mode in ("0", "1"):
    os.environ[fast_generation.FUSED_ENV] = mode
    fast_generation.release_engines()
    engine = fast_generation.engine_for(model, 4, 128, graphs=False, compiled=False)
    if mode == "1":
        engine.products = products
    logits[mode] = fast_generation.forced_logits(model, prompt, mask, completion, use_graphs=False,
                                                 compile_layers=False)
    found["engine_fused_" + mode] = [engine.fused, str(engine.products.stream)]
found["engine_rel_error"] = float((logits["1"] - logits["0"]).norm() / logits["0"].norm())
found["failed"] = gs.failed(torch.device("cpu"))
work = next(iter(gs._WORKSPACES.values()))
work.count[work.flag] = 1
found["failed_set"] = [gs.failed(torch.device("cpu")), gs.failed(torch.device("cpu"))]
# A hang's diagnosis: marks as a traced kernel leaves them (programs 0-3 in gate/up at ring step 7
# with their weights loader done, 4-5 waiting for h), layer 1's act counter short
marks = work.count[work.flag + 1:].view(6, 3)
marks[:4] = torch.tensor([4 * 10000 + 7, 11 * 10000 + 20, 4 * 10000 + 7])
marks[4:] = torch.tensor([3 * 10000 + 2, 4 * 10000 + 2, 3 * 10000 + 2])
work.count[:work.flag] = 6
work.count[gs.COUNTERS + 2:work.flag] = torch.tensor([4, 0, 0])
found["trace"] = work.trace()
work.count[:work.flag] = 0
work.count[:gs.COUNTERS] = 6  # one layer ran (the benchmark's one-layer check)
found["trace_one_layer"] = work.trace()[0]
marks.zero_()

# A barrier giving up during a rollout: the engine warns and chooses its step again without it.
import warnings
from trainer.decode_graphs import STREAM_ENV, stream_variants
os.environ[STREAM_ENV] = "1"
engine = fast_generation._ENGINES[model]
found["gave_up_without_flag"] = engine.stream_gave_up()
work.count[work.flag] = 1
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    found["gave_up"] = engine.stream_gave_up()
found["gave_up_after"] = [engine.no_stream, engine.fused, engine.products.stream, len(engine.graphs),
                          stream_variants(engine), [str(w.message)[:60] for w in caught]]
fast_generation.release_engines()
found["workspaces_after_release"] = len(gs._WORKSPACES)
print(json.dumps(found))
"""


def test_the_stream_step_equals_the_plain_step_and_the_checks_catch_planted_bugs():
    found = _interpreted(CHILD)
    assert found["why_not"] is None, found["shape"]
    check = found["check"]
    assert check["passes"], check
    assert check["logits_rel_error"] < 1e-5 and check["cache_rel_error"] < 1e-6, check
    for name, planted in found["planted"].items():
        assert not planted["passes"], (name, planted)
        assert planted["dropped"] == ["stream"], (name, planted)
        assert not planted["timing"]["stream_logits_rel_error"] < 0.1, (name, planted)  # (NaN too)
    assert found["engine_check"]["dropped"] == [], found["engine_check"]
    assert found["engine_check"]["timing"]["stream_logits_rel_error"] < 1e-5
    assert found["engine_fused_1"] == [True, "stream s6 weights ahead, 6 programs, reference"]
    assert found["engine_fused_0"][0] is False
    assert found["engine_rel_error"] < 1e-5, found["engine_rel_error"]
    assert found["failed"] is False
    assert found["failed_set"] == [True, False]  # read, then cleared
    assert found["trace"] == [
        "layer 1: counter 2 at 4 of 6",
        "programs 0-3: multiply gate/up at ring step 7, weights done at ring step 20, inputs gate/up at ring step 7",
        ("programs 4-5: multiply waits for counter 1 (h) at ring step 2, weights gate/up at ring step 2, "
         "inputs waits for counter 1 (h) at ring step 2")]
    assert found["trace_one_layer"] == "every counter of the layers that ran reached"
    assert found["gave_up_without_flag"] is False and found["gave_up"] is True
    no_stream, fused, stream, graphs, offered, warned = found["gave_up_after"]
    assert (no_stream, fused, stream, graphs, offered) == (True, None, None, 0, [])
    assert warned == ["the stream decode step gave up waiting at a barrier during a"]
    assert found["workspaces_after_release"] == 0


def test_the_kernel_refuses_shapes_it_does_not_split_and_is_offered_only_where_it_runs():
    from dataclasses import replace

    import torch

    from trainer import gluon_stream as gs
    from trainer.qwen2_decode import ModelDims

    qwen_1_5b = ModelDims(layers=28, hidden=1536, heads=12, kv_heads=2, head_dim=128, intermediate=8960,
                          vocab=151936, eps=1e-6, rope_theta=1e6)
    assert gs.StreamShape.of(qwen_1_5b, 128, 132).why_not() is None  # an H100 SXM's or H200's 132
    # an H100 PCIe's 114 multiprocessors: 78-79 gate/up columns a program, past a tile + 8
    assert "shares of 78-79" in gs.StreamShape.of(qwen_1_5b, 128, 114).why_not()
    assert "129 rows" in gs.StreamShape.of(qwen_1_5b, 129, 132).why_not()
    qwen_0_5b = ModelDims(layers=24, hidden=896, heads=14, kv_heads=2, head_dim=64, intermediate=4864,
                          vocab=151936, eps=1e-6, rope_theta=1e6)
    assert "shares of 36-37" in gs.StreamShape.of(qwen_0_5b, 128, 132).why_not()
    wide_heads = ModelDims(layers=2, hidden=1536, heads=16, kv_heads=2, head_dim=128, intermediate=8960,
                           vocab=10, eps=1e-6, rope_theta=1e6)
    assert "not the hidden width" in gs.StreamShape.of(wide_heads, 8, 132).why_not()
    # with TMA stores the gate/up shares are whole 8-column groups: 64 or 72 columns on 132
    # programs, 72-80 on 114 (past a tile + 8)
    assert gs.StreamShape.of(qwen_1_5b, 128, 132).why_not(8) is None
    assert "shares of 72-80" in gs.StreamShape.of(qwen_1_5b, 128, 114).why_not(8)
    # the engine's four variants where the split fits the multiprocessors and the weights are bf16:
    # weights ahead, with PDL, and both with TMA stores (5 stages: their staging buffers)
    tma = gs.StreamVariant(stages=5, tma_store=True)
    four = [gs.StreamVariant(), gs.StreamVariant(pdl=True), tma, replace(tma, pdl=True)]
    assert gs.fitting(128, qwen_1_5b, torch.bfloat16, 132) == four
    assert gs.fitting(64, qwen_1_5b, torch.bfloat16, 132) == four
    assert gs.fitting(128, qwen_1_5b, torch.float16, 132) == []
    assert gs.fitting(129, qwen_1_5b, torch.bfloat16, 132) == []
    assert gs.fitting(128, qwen_1_5b, torch.bfloat16, 114) == []
    assert gs.offered(torch.device("cpu"), 128, qwen_1_5b, torch.bfloat16) == []  # no Hopper GPU here


def test_the_layer_kernel_compiles_at_other_widths():
    from dataclasses import replace

    from trainer import gluon_stream as gs
    from trainer.gluon_products import gluon
    from trainer.qwen2_decode import ModelDims

    if gluon is None:
        pytest.skip("Triton's Gluon is not installed")
    tiny = ModelDims(layers=2, hidden=192, heads=6, kv_heads=2, head_dim=32, intermediate=384, vocab=128, eps=1e-6,
                     rope_theta=1e4)
    plain = gs.compile_report(tiny, 3, 6, gs.StreamVariant(programs=6))
    for variant, last in ((gs.StreamVariant(programs=6), False), (gs.StreamVariant(programs=6, pdl=True), True),
                          (gs.StreamVariant(programs=6, trace=True), False)):
        report = gs.compile_report(tiny, 3, 6, variant, last=last)
        assert report["spill_bytes"] == 0 and not report["serialized"], report
        # with PDL: the input loader's wait and the weight loader's launch_dependents
        assert report["wgmma"] > 0 and report["griddepcontrol"] == 2 * variant.pdl, report
    # traced: the marks are stores at the phases' edges, the products the same
    assert report["wgmma"] == plain["wgmma"] and report["stores"] > plain["stores"], (report, plain)
    # TMA stores: the same products; of the plain stores only the norms' rows and SiLU x up's
    # remainder columns are left; the staging buffers fit beside 5 ring stages
    tma = gs.StreamVariant(programs=6, stages=5, tma_store=True)
    for variant, last in ((tma, False), (replace(tma, pdl=True), True)):
        report = gs.compile_report(tiny, 3, 6, variant, last=last)
        assert report["spill_bytes"] == 0 and not report["serialized"], report
        assert report["shared"] <= 227 * 1024 and report["griddepcontrol"] == 2 * variant.pdl, report
    report = gs.compile_report(tiny, 3, 6, tma)
    assert report["wgmma"] == plain["wgmma"] and report["stores"] < plain["stores"], (report, plain)


def test_a_stream_step_that_disagrees_is_also_run_ungraphed_and_with_its_reference():
    """decode_graphs._disagreeing_streams's diagnosis, the bookkeeping only (the graphs and steps are
    the engine's on a GPU): for a stream step whose graph disagrees with the plain one, its
    ungraphed and reference logits and the plain step's ungraphed, each against the plain graph's,
    go into the choice timing; a failing run is recorded, not raised; an agreeing step runs none."""
    import torch

    from trainer.decode_graphs import _disagreeing_streams
    from trainer.gluon_stream import StreamVariant
    from trainer.triton_products import DecodeProducts

    gen = torch.Generator().manual_seed(0)
    right, wrong = torch.randn(4, 16, generator=gen), torch.randn(4, 16, generator=gen)

    def choose(graphed, ungraphed):
        out = {name: torch.zeros(4, 16) for name in ("plain", "stream")}
        captured = {"plain": (("plain", out["plain"]), False, DecodeProducts()),
                    "stream": (("stream", out["stream"]), True, DecodeProducts(stream=StreamVariant()))}
        ran = []

        def replay(graph):  # a replay rewrites the graph's logits buffer
            out[graph].copy_(right if graph == "plain" else graphed)

        def eager(name, reference=False):
            ran.append((name, reference))
            if name == "stream" and reference:
                raise RuntimeError("no reference here")
            return right if name == "plain" else ungraphed

        timing = {}
        return _disagreeing_streams(captured, torch.device("cpu"), replay, timing, eager), timing, ran

    wrong_error = float((wrong - right).norm() / right.norm())
    dropped, timing, ran = choose(graphed=wrong, ungraphed=right)  # a capture fault
    assert dropped == ["stream"]
    assert ran == [("plain", False), ("stream", False), ("stream", True)]
    assert timing["stream_logits_rel_error"] == pytest.approx(wrong_error) and wrong_error > 0.1
    assert timing["stream_eager_logits_rel_error"] == 0 and timing["plain_eager_logits_rel_error"] == 0
    assert timing["stream_reference_logits_rel_error"] == "failed: RuntimeError('no reference here')"
    dropped, timing, _ = choose(graphed=wrong, ungraphed=wrong)  # the kernel's own fault
    assert dropped == ["stream"] and timing["stream_eager_logits_rel_error"] == pytest.approx(wrong_error)
    dropped, timing, ran = choose(graphed=right + 1e-3 * wrong, ungraphed=wrong)
    assert dropped == [] and ran == [] and timing["stream_logits_rel_error"] < 1e-2
    assert not any("eager" in key or "reference" in key for key in timing)
