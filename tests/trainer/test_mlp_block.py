"""trainer/mlp_block.py in Triton's interpreter (CPU), its phases as three launches: the MLP half of a
layer (gate/up, SiLU x up, down, residual + RMSNorm) equals fused_decode's kernels on the summed
product to float32 rounding, through pointers and tensor descriptors (gate and up apart, or stacked
as one box and one product), with uneven column shares, a remainder tile, several K slices of the
down product and fewer rows than the tile; shapes that do not tile are refused; the fused decode
step with the block equals the plain step on a tiny random Qwen2; the phases given a layer's first
row in weights stacked by layer compute that layer. Skipped where Triton is not installed. A child
process: TRITON_INTERPRET is set before import."""

from __future__ import annotations

import pytest

from tests.trainer.test_triton_kernels import RANDOM_QWEN2, _interpreted

pytest.importorskip("triton")

CHILD = r"""
import json, torch, torch.nn.functional as F
from trainer import mlp_block as mb
from trainer.fused_decode import check_error, check_passes, element_fns
from trainer.qwen2_decode import Attention, DecodeWeights
from trainer.triton_products import DecodeProducts
torch.manual_seed(0)
found = {}
H, I = 64, 160
norm, add_norm, silu_mul = element_fns(type("D", (), {"eps": 1e-6})(), compiled=False)
gu, down, w = torch.randn(2 * I, H) * 0.1, torch.randn(H, I) * 0.1, 1 + 0.3 * torch.randn(H)
shapes = {"ptr": mb.BlockShape(programs=4, block_k=16, down_n=16, tma=False),
          "tma_rest": mb.BlockShape(programs=3, block_k=32, down_n=32, stacked=False),
          "tma_splits": mb.BlockShape(programs=7, block_k=16, down_n=32, stacked=False),
          "stacked_rest": mb.BlockShape(programs=3, block_k=32, down_n=32, stacked=True),
          "stacked_splits": mb.BlockShape(programs=7, block_k=16, down_n=32, stacked=True),
          "stacked_8": mb.BlockShape(programs=4, block_k=16, down_n=16, stacked=True),
          "stacked_unaligned": mb.BlockShape(programs=3, block_k=32, down_n=32, stacked=True, aligned=False),
          "tma_unaligned": mb.BlockShape(programs=7, block_k=16, down_n=32, stacked=False, aligned=False)}
found["plans"] = {name: s.plan(H, I) for name, s in shapes.items()}
found["errs"] = {}
for rows in (5, 16):
    x, h = torch.randn(rows, H), torch.randn(rows, H)
    want_x, want_h = add_norm(x, F.linear(silu_mul(F.linear(h, gu)), down), w)
    for name, shape in shapes.items():
        got_x, got_h = mb.mlp_block(x, h, gu, down, w, 1e-6, shape)
        found["errs"][f"{name} {rows}"] = max(float((got_x - want_x).abs().max()), float((got_h - want_h).abs().max()))
refused = []
for bad, inter in ((mb.BlockShape(programs=11), I), (mb.BlockShape(programs=4, block_k=48), I),
                   (mb.BlockShape(programs=2, down_n=16), I), (mb.BlockShape(programs=2, block_k=16), 288)):
    try:
        bad.plan(H, inter)
    except ValueError as exc:
        refused.append(str(exc)[:80])
found["refused"] = refused
try:
    mb.mlp_block(torch.randn(129, H), torch.randn(129, H), gu, down, w, 1e-6, shapes["ptr"])
    found["rows_refused"] = False
except ValueError:
    found["rows_refused"] = True
found["failed"] = mb.failed(torch.device("cpu"))
""" + RANDOM_QWEN2 + r"""
weights = DecodeWeights.allocate(random_model(torch.float32))
for name, block in (("step", mb.BlockShape(programs=4, block_k=16, down_n=32)),
                    ("step_ptr", mb.BlockShape(programs=3, block_k=32, down_n=32, tma=False))):
    result = check_error(weights, Attention.SDPA, products=DecodeProducts(mlp=block))
    result["passes"] = check_passes(result)
    found[name] = result
print(json.dumps(found))
"""


def test_mlp_block_equals_the_fused_steps_kernels_and_the_plain_step():
    found = _interpreted(CHILD)
    # 160 columns on 3 programs: 48 or 56 each (whole groups of 8; 53 or 54 unaligned), a 32-wide
    # tile and a 32-wide remainder; on 7: 16 or 24 (22 or 23), 16 + 16; the down product in 2
    # tiles of 32 x 3 slices of K on 7 programs.
    assert found["plans"]["tma_rest"] == {"BLOCK_N": 32, "BLOCK_R": 32, "SPLITS": 1, "TILES_N": 2}
    assert found["plans"]["tma_splits"] == {"BLOCK_N": 16, "BLOCK_R": 16, "SPLITS": 3, "TILES_N": 2}
    assert found["plans"]["ptr"]["TILES_N"] == 4
    # stacked: gate | up as one box and product, the remainder as one [2, 8 or more, K] box whose
    # rows past a share are the next program's, and past the last column zeros (7 programs: the
    # last one's 8 remainder rows start 2 before the end)
    assert len(found["errs"]) == 16 and max(found["errs"].values()) < 1e-5, found["errs"]
    # shares of whole 8-column groups (the default: 16-byte stores) or not: the same plans here
    assert found["plans"]["stacked_unaligned"] == found["plans"]["stacked_rest"]
    assert found["plans"]["tma_unaligned"] == found["plans"]["tma_splits"]
    # too few columns, K step, too few programs, a remainder (80 columns) wider than the tile (64)
    assert len(found["refused"]) == 4, found["refused"]
    assert found["rows_refused"] is True
    assert found["failed"] is False
    for name in ("step", "step_ptr"):
        result = found[name]
        assert result["passes"], result
        assert result["logits_rel_error"] < 1e-5 and result["attention_rel_error"] < 1e-5, result


def test_the_block_needs_a_gpu_and_can_be_switched_off(monkeypatch):
    import torch

    from trainer.mlp_block import ENV, available, requested

    cpu = torch.device("cpu")
    monkeypatch.delenv(ENV, raising=False)
    assert requested(cpu, 128, 1536, 8960) is None  # no CUDA GPU here: never offered
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert available(cpu)  # the interpreter may run it (the tests above)...
    assert requested(cpu, 128, 1536, 8960) is None  # ...but the engine never offers it there
    monkeypatch.setenv(ENV, "0")
    assert not available(cpu)


STACKED = r"""
import json, torch
from trainer import mlp_block as mb
from trainer.triton_base import tl, triton

@triton.jit
def layer_phases(h_ptr, h_desc, gu_ptr, gu_desc, act_ptr, act_desc, down_ptr, down_desc, part_ptr, rows, layer,
                 H: tl.constexpr, I: tl.constexpr, P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, DOWN_N: tl.constexpr, SPLITS: tl.constexpr,
                 TILES_N: tl.constexpr, TMA: tl.constexpr, PHASE: tl.constexpr):
    p = tl.program_id(0)
    if PHASE == 1:
        mb._gate_up_phase(h_ptr, h_desc, gu_ptr, gu_desc, act_ptr, p, rows, H, I, P, BLOCK_M, BLOCK_K, BLOCK_N,
                          BLOCK_R, TMA, True, row0=layer * 2 * I)
    else:
        mb._down_phase(act_ptr, act_desc, down_ptr, down_desc, part_ptr, p, rows, H, I, BLOCK_M, BLOCK_K, DOWN_N,
                       SPLITS, TILES_N, TMA, True, row0=layer * H)

from triton.tools.tensor_descriptor import TensorDescriptor
torch.manual_seed(0)
H, I, L, rows = 64, 160, 3, 5
gu, down = torch.randn(L * 2 * I, H) * 0.1, torch.randn(L * H, I) * 0.1
h, w = torch.randn(rows, H), torch.ones(H)
found = {}
for tma in (False, True):
    shape = mb.BlockShape(programs=4, block_k=16, down_n=16, tma=tma)
    plan = shape.plan(H, I)
    act, part, _ = mb.workspace(h.device, rows, H, I, plan["SPLITS"], h.dtype)
    mine_act, mine_part = torch.empty_like(act), torch.empty_like(part)
    d = (lambda t, b: TensorDescriptor.from_tensor(t, b)) if tma else (lambda t, b: t)
    for layer in range(L):
        # the layer alone, through mlp_block's own launches of the two phases
        mb.mlp_block(h, h, gu[layer * 2 * I:(layer + 1) * 2 * I], down[layer * H:(layer + 1) * H], w, 1e-6, shape,
                     phases=(1, 2))
        for phase in (1, 2):
            layer_phases[(4,)](h, d(h, [16, 16]), gu, d(gu, [plan["BLOCK_N"], 16]), mine_act, d(mine_act, [16, 16]),
                               down, d(down, [16, 16]), mine_part, rows, layer, H=H, I=I, P=4, BLOCK_M=16,
                               BLOCK_K=16, DOWN_N=16, TMA=tma, PHASE=phase, **plan)
        found[f"tma={tma} layer {layer}"] = [float((mine_act - act).abs().max() / act.abs().max()),
                                             float((mine_part - part).abs().max() / part.abs().max())]
print(json.dumps(found))
"""


def test_the_phases_read_one_layer_of_stacked_weights_at_its_first_row():
    # row0 (bench/gpu_mlp_stream.py's 28 layers in one launch): layer l of weights stacked by layer
    # gives what the block gives that layer's weights alone, to float32 rounding (a row or layer off
    # would be off by the values themselves). Not bitwise: with descriptors the interpreter's numpy
    # products may sum in another order depending on the CPU (up to 1.8e-7 of the largest value on an AMD
    # EPYC, bitwise on the machine before it).
    found = _interpreted(STACKED)
    assert set(found) == {f"tma={tma} layer {layer}" for tma in (False, True) for layer in range(3)}
    for key, errors in found.items():
        assert max(errors) < 1e-6, (key, errors)


def test_shares_of_whole_8_column_groups_make_the_activation_stores_16_bytes_wide():
    # The block's gate/up phase compiled for sm_90a (no GPU needed) at Qwen2.5-1.5B's widths on 132
    # programs: shares starting at p I / P store SiLU x up an element at a time (2 bytes), shares of
    # whole 8-column groups (BlockShape.aligned, the default) in 16-byte vectors (docs/benchmarks.md,
    # issue 18, calls 92-99).
    import re
    from collections import Counter

    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from trainer import mlp_block as mb

    pointers = {"h_ptr": "*bf16", "gu_ptr": "*bf16", "act_ptr": "*bf16", "down_ptr": "*bf16", "part_ptr": "*fp32",
                "x_ptr": "*bf16", "norm_ptr": "*bf16", "x_out_ptr": "*bf16", "h_out_ptr": "*bf16", "sync_ptr": "*i32"}
    descs = {"h_desc": "tensordesc<bf16[128,64]>", "gu_desc": "tensordesc<bf16[2,64,64]>",
             "rest_desc": "tensordesc<bf16[2,8,64]>", "act_desc": "tensordesc<bf16[128,64]>",
             "down_desc": "tensordesc<bf16[64,64]>"}
    order = ("h_ptr", "h_desc", "gu_ptr", "gu_desc", "rest_desc", "act_ptr", "act_desc", "down_ptr", "down_desc",
             "part_ptr", "x_ptr", "norm_ptr", "x_out_ptr", "h_out_ptr", "sync_ptr")
    stores = {}
    for aligned in (False, True):
        shape = mb.BlockShape(programs=132, aligned=aligned)
        consts = {"H": 1536, "I": 8960, "P": 132, "BLOCK_M": 128, "BLOCK_K": 64, "DOWN_N": 64, "NORM_BLOCK": 2048,
                  "TMA": True, "F32_DOT": False, "PHASE": 1, "STACKED": True, "BLOCK_S": 8,
                  "GROUP": shape.group(8960), **shape.plan(1536, 8960)}
        signature = {name: pointers.get(name) or descs[name] for name in order} | {"rows": "i32", "eps": "fp32"}
        signature |= {name: "constexpr" for name in consts}
        attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(order) if name in pointers}
        compiled = triton.compile(ASTSource(mb._mlp_kernel, signature=signature, constexprs=consts, attrs=attrs),
                                  target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_stages": 6})
        stores[aligned] = Counter(re.findall(r"\bst\.global[.\w]*", compiled.asm["ptx"]))
    assert stores[False] == {"st.global.b16": 72}, stores
    assert stores[True] == {"st.global.v4.b32": 9}, stores
