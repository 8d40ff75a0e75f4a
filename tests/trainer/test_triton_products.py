"""trainer/triton_products.py in Triton's interpreter (CPU): the split-K product equals F.linear
(one split: bf16-style output with the bias; several: float32 partials that add up to it), the
residual + RMSNorm kernel equals fused_decode's add_norm, and the fused decode step with every
projection split (q/k/v partials added inside the attention kernel, o and down partials in the
norm kernel) equals the plain step on a tiny random Qwen2 to float32 rounding; so does the chained
step (every product a Triton kernel, SiLU x up in the gate/up product's epilogue, residual + RMSNorm
in the Triton kernel after a one-split product too; its PDL launch is CUDA-only).
Skipped where Triton is not installed. A child process: TRITON_INTERPRET is set before import."""

from __future__ import annotations

import pytest

from tests.trainer.test_triton_kernels import RANDOM_QWEN2, _interpreted

pytest.importorskip("triton")

CHILD = r"""
import json, torch, torch.nn.functional as F
from trainer import triton_products as tp
from trainer.fused_decode import check_error, check_passes, element_fns
from trainer.qwen2_decode import Attention, DecodeWeights
torch.manual_seed(0)
found = {}
x, w, b = torch.randn(5, 64), torch.randn(96, 64), torch.randn(96)
want = F.linear(x, w, b)
one = tp.product(x, w, b, tp.Split(32, 16, 1))
parts = tp.product(x, w, b, tp.Split(16, 16, 4))
found["one_shape"] = list(one.shape)
found["one_err"] = float((one - want).abs().max())
found["parts_shape"] = list(parts.shape)
found["parts_err"] = float((parts.sum(0) + b - want).abs().max())
try:
    tp.product(x, w, b, tp.Split(64, 16, 1))
    found["refused"] = False
except ValueError:
    found["refused"] = True
# residual + RMSNorm over partials, against the compiled-or-eager add_norm on the summed product
resid, norm_w, partials = torch.randn(5, 96), 1 + 0.3 * torch.randn(96), torch.randn(3, 5, 96)
_, add_norm, _ = element_fns(type("D", (), {"eps": 1e-6})(), compiled=False)
want_x, want_h = add_norm(resid, partials.sum(0), norm_w)
got_x, got_h = tp.add_norm(partials, resid, norm_w, 1e-6)
found["add_norm_err"] = max(float((got_x - want_x).abs().max()), float((got_h - want_h).abs().max()))
# the chained step's gate/up: SiLU(gate) * up from the stacked weight, in the product's epilogue
gate_up = torch.randn(64, 64)
swiglu = tp.product(x, gate_up, None, tp.Split(16, 16, 1), pdl=True, swiglu=True)
found["swiglu_shape"] = list(swiglu.shape)
found["swiglu_err"] = float((swiglu - F.silu(x @ gate_up[:32].T) * (x @ gate_up[32:].T)).abs().max())
# the same products through tensor descriptors (the TMA kernel)
tma = tp.Split(32, 16, 1, tma=True)
found["tma_errs"] = [float((tp.product(x, w, b, tma) - want).abs().max()),
                     float((tp.product(x, w, b, tp.Split(16, 16, 4, tma=True)).sum(0) + b - want).abs().max()),
                     float((tp.product(x, gate_up, None, tp.Split(16, 16, 1, tma=True), swiglu=True) - swiglu).abs().max())]
try:
    tp.product(x, gate_up, None, tp.Split(16, 16, 2), swiglu=True)
    found["swiglu_split_refused"] = False
except ValueError:
    found["swiglu_split_refused"] = True
""" + RANDOM_QWEN2 + r"""
weights = DecodeWeights.allocate(random_model(torch.float32))
split = tp.Split(16, 16, 2)
one = tp.Split(16, 16, 1)
for name, products in (("split", tp.DecodeProducts.fixed(qkv=split, o=split, gate_up=one, down=split)),
                       ("one", tp.DecodeProducts.fixed(qkv=one, o=one)),
                       ("chained", tp.DecodeProducts(chosen=dict(qkv=split, o=split, gate_up=one, down=split), pdl=True)),
                       ("chained_one", tp.DecodeProducts(chosen=dict(qkv=one, o=one, gate_up=one, down=one), pdl=True)),
                       ("chained_tma", tp.DecodeProducts(chosen=dict(qkv=tp.Split(16, 16, 2, tma=True), o=one,
                                                                    gate_up=tp.Split(16, 16, 1, tma=True),
                                                                    down=tp.Split(16, 16, 2, tma=True)), pdl=True)),
                       ("chained_split_attention", tp.DecodeProducts(chosen=dict(qkv=split, o=split, gate_up=one, down=split),
                                                                     pdl=True, attention_splits=3)),
                       ("split_attention", tp.DecodeProducts(attention_splits=2)),
                       ("chained_mlp_cublas", tp.DecodeProducts(chosen=dict(qkv=split, o=split, gate_up=one, down=split),
                                                                pdl=True).without("gate_up", "down"))):
    result = check_error(weights, Attention.SDPA, products=products)
    result["passes"] = check_passes(result)
    found[name] = result
print(json.dumps(found))
"""


def test_split_products_equal_linear_and_the_plain_decode_step():
    found = _interpreted(CHILD)
    assert found["one_shape"] == [5, 96] and found["one_err"] < 1e-4
    assert found["parts_shape"] == [4, 5, 96] and found["parts_err"] < 1e-4
    assert found["refused"] is True  # 96 columns are not a multiple of 64
    assert found["add_norm_err"] < 1e-5
    assert found["swiglu_shape"] == [5, 32] and found["swiglu_err"] < 1e-4
    assert found["swiglu_split_refused"] is True
    assert max(found["tma_errs"]) < 1e-4, found["tma_errs"]
    for name in ("split", "one", "chained", "chained_one", "chained_tma", "chained_split_attention", "split_attention",
                 "chained_mlp_cublas"):
        result = found[name]
        assert result["passes"], result
        assert result["attention_rel_error"] < 1e-5 and result["logits_rel_error"] < 1e-5, result
        assert result["cache_slot_rel_max_diff"] < 1e-5 and result["cache_other_slots_equal"], result


def test_attention_splits_switch(monkeypatch):
    from trainer.fused_decode import SPLITS_ENV, attention_splits

    monkeypatch.delenv(SPLITS_ENV, raising=False)
    assert attention_splits() == 0
    monkeypatch.setenv(SPLITS_ENV, "4")
    assert attention_splits() == 4
    for bad in ("-1", "four", "17"):
        monkeypatch.setenv(SPLITS_ENV, bad)
        with pytest.warns(UserWarning, match=SPLITS_ENV):
            assert attention_splits() == 0
