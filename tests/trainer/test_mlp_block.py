"""trainer/mlp_block.py in Triton's interpreter (CPU), its phases as three launches: the MLP half of a
layer (gate/up, SiLU x up, down, residual + RMSNorm) equals fused_decode's kernels on the summed
product to float32 rounding, through pointers and tensor descriptors (gate and up apart, or stacked
as one box and one product), with uneven column shares, a remainder tile, several K slices of the
down product and fewer rows than the tile; shapes that do not tile are refused; the fused decode
step with the block equals the plain step on a tiny random Qwen2; the phases given a layer's first
row in weights stacked by layer compute that layer; the block reading tiled copies of the weights
gives the same bits, the copies hold each box where the kernel reads it, and the engine offers it
only when asked and keeps its copies current. Skipped where Triton is not installed. A child
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
          "stacked_8": mb.BlockShape(programs=4, block_k=16, down_n=16, stacked=True)}
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
    # 160 columns on 3 programs: 53 or 54 each, a 32-wide tile and a 32-wide remainder; on 7: 22
    # or 23, 16 + 16; the down product in 2 tiles of 32 x 3 slices of K on 7 programs.
    assert found["plans"]["tma_rest"] == {"BLOCK_N": 32, "BLOCK_R": 32, "SPLITS": 1, "TILES_N": 2}
    assert found["plans"]["tma_splits"] == {"BLOCK_N": 16, "BLOCK_R": 16, "SPLITS": 3, "TILES_N": 2}
    assert found["plans"]["ptr"]["TILES_N"] == 4
    # stacked: gate | up as one box and product, the remainder as one [2, 8 or more, K] box whose
    # rows past a share are the next program's, and past the last column zeros (7 programs: the
    # last one's 8 remainder rows start 2 before the end)
    assert len(found["errs"]) == 12 and max(found["errs"].values()) < 1e-5, found["errs"]
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


TILED = r"""
import json, torch, torch.nn.functional as F
from trainer import mlp_block as mb
from trainer.fused_decode import element_fns
torch.manual_seed(0)
norm, add_norm, silu_mul = element_fns(type("D", (), {"eps": 1e-6})(), compiled=False)
found = {"equal": {}, "errs": {}}
# (hidden, intermediate, programs, K step, down tile): remainders of 32 rows (its own box), 8 (box
# of 16: no spill), 4 (box of 16, its second half the next chunk's rows) and 0 (4 rows of zeros)
for H, I, P, bk, dn in ((64, 160, 3, 32, 32), (64, 160, 7, 16, 32), (64, 144, 4, 16, 16), (64, 160, 5, 16, 16)):
    gu, down, w = torch.randn(2 * I, H) * 0.1, torch.randn(H, I) * 0.1, 1 + 0.3 * torch.randn(H)
    rows_major = mb.BlockShape(programs=P, block_k=bk, down_n=dn)
    shape = mb.BlockShape(programs=P, block_k=bk, down_n=dn, tiled=True)
    tiles = mb.TiledWeights.of(gu, down, shape)
    for rows in (5, 16):
        x, h = torch.randn(rows, H), torch.randn(rows, H)
        splits = shape.plan(H, I)["SPLITS"]
        want = mb.mlp_block(x, h, gu, down, w, 1e-6, rows_major)
        want_act = mb.workspace(h.device, rows, H, I, splits, h.dtype)[0].clone()
        got = mb.mlp_block(x, h, gu, down, w, 1e-6, shape, tiled=tiles)
        got_act = mb.workspace(h.device, rows, H, I, splits, h.dtype)[0].clone()
        torch_x, torch_h = add_norm(x, F.linear(silu_mul(F.linear(h, gu)), down), w)
        key = f"{H}x{I} on {P}, rest {shape.tiled_rest(H, I)}, {rows} rows"
        found["equal"][key] = [torch.equal(a, b) for a, b in zip((got_act, *got), (want_act, *want))]
        found["errs"][key] = max(float((got[0] - torch_x).abs().max()), float((got[1] - torch_h).abs().max()))
refused = []
for call in (lambda: mb.BlockShape(programs=4, tiled=True, tma=False).plan(64, 160),
             lambda: mb.BlockShape(programs=4, tiled=True, stacked=False).plan(64, 160),
             lambda: mb.TiledWeights.of(gu, down, rows_major),
             lambda: mb.mlp_block(x, h, gu, down, w, 1e-6, shape),
             lambda: mb.mlp_block(x, h, gu, down, w, 1e-6, shape, tiled=mb.TiledWeights.of(
                 gu, down, mb.BlockShape(programs=P, block_k=bk, down_n=dn, stages=3, tiled=True)))):
    try:
        call()
    except ValueError as exc:
        refused.append(str(exc)[:100])
found["refused"] = refused
print(json.dumps(found))
"""

TILED_ENGINE = r"""
import json, os, torch
from trainer import mlp_block as mb
from trainer.decode_graphs import TILED_ENV, tiled_block
from trainer.fused_decode import check_error, check_passes
from trainer.qwen2_decode import Attention, DecodeWeights
from trainer.triton_products import DecodeProducts
torch.manual_seed(0)
found = {}
""" + RANDOM_QWEN2 + r"""
model = random_model(torch.float32)
weights = DecodeWeights.allocate(model)
block = mb.BlockShape(programs=4, block_k=16, down_n=32)
products = DecodeProducts(mlp=block)
os.environ.pop(TILED_ENV, None)
found["offered without the switch"] = tiled_block(weights, products) is not None
os.environ[TILED_ENV] = "1"
tiled = tiled_block(weights, products)
found["offered"] = tiled is not None and tiled.mlp.tiled and all(layer.tiled is not None for layer in weights.layers)
result = check_error(weights, Attention.SDPA, products=tiled)
found["step"] = result | {"passes": check_passes(result)}
# a training update: refresh rewrites the tiled copies in place, from the new weights
before = [layer.tiled.gate_up.data_ptr() for layer in weights.layers]
with torch.no_grad():
    for param in model.parameters():
        param.add_(0.05 * torch.randn_like(param))
weights.refresh(model)
fresh = [mb.TiledWeights.of(layer.gate_up, layer.down, tiled.mlp) for layer in weights.layers]
found["refreshed in place"] = [layer.tiled.gate_up.data_ptr() for layer in weights.layers] == before and all(
    torch.equal(layer.tiled.gate_up, f.gate_up) and torch.equal(layer.tiled.down, f.down)
    for layer, f in zip(weights.layers, fresh))
result = check_error(weights, Attention.SDPA, products=tiled)
found["step after refresh"] = result | {"passes": check_passes(result)}
weights.tile_mlp(None)
found["dropped"] = all(layer.tiled is None for layer in weights.layers)
print(json.dumps(found))
"""


def test_the_tiled_block_reads_the_same_weights_and_computes_the_same_bits():
    # The block reading copies laid out box by box (TiledWeights) gives the row-major block's
    # activation and outputs bit for bit (the same products of the same shapes in the same order),
    # at each kind of remainder; and the plain products to float32 rounding.
    found = _interpreted(TILED)
    assert len(found["equal"]) == 8 and all(all(v) for v in found["equal"].values()), found["equal"]
    assert max(found["errs"].values()) < 1e-5, found["errs"]
    # without the stacked descriptors, untiled shape, no TiledWeights, TiledWeights of another shape
    assert len(found["refused"]) == 5, found["refused"]


def test_the_engine_offers_the_tiled_block_only_when_asked_and_keeps_its_copies_current():
    # RLTUI_DECODE_TILED=1: the fused step with it equals the plain step, and again after the
    # weights change (refresh rewrote the copies in place, where captured graphs read them)
    found = _interpreted(TILED_ENGINE)
    assert found["offered without the switch"] is False and found["offered"] is True
    for name in ("step", "step after refresh"):
        assert found[name]["passes"] and found[name]["logits_rel_error"] < 1e-5, found[name]
    assert found["refreshed in place"] is True and found["dropped"] is True


def test_the_tiled_layout_puts_each_box_where_the_kernel_reads_it():
    # At Qwen2.5-1.5B's widths on an H200's 132 programs (torch only): program p's K step k is one
    # chunk of 136 rows of 64: gate's 64 tile rows, up's, then 4 remainder rows of each (zeros
    # past a 67-column share); down's (tile, k) box is DOWN_N rows at tile x 140 + k.
    import torch

    from trainer import mlp_block as mb

    hidden, inter, programs = 1536, 8960, 132
    gate_up = torch.arange(2 * inter * hidden, dtype=torch.int32).view(2 * inter, hidden)
    down = torch.arange(hidden * inter, dtype=torch.int32).view(hidden, inter)
    shape = mb.BlockShape(programs=programs, tiled=True)
    assert shape.tiled_rest(hidden, inter) == (4, 16)
    tiles = mb.TiledWeights.of(gate_up, down, shape)
    steps, chunk = hidden // 64, 2 * 64 + 2 * 4
    assert tiles.gate_up.shape == (programs * steps * chunk, 64)
    assert tiles.down.shape == (hidden // 64 * (inter // 64) * 64, 64)
    for p, k in ((0, 0), (1, 5), (77, 23), (131, 11)):
        lo, hi = p * inter // programs, (p + 1) * inter // programs
        got = tiles.gate_up[(p * steps + k) * chunk:(p * steps + k + 1) * chunk]
        cols = slice(k * 64, (k + 1) * 64)
        assert torch.equal(got[:64], gate_up[lo:lo + 64, cols]) and torch.equal(got[64:128], gate_up[inter + lo:inter + lo + 64, cols])
        own = hi - lo - 64
        assert torch.equal(got[128:128 + own], gate_up[lo + 64:hi, cols])
        assert torch.equal(got[132:132 + own], gate_up[inter + lo + 64:inter + hi, cols])
        assert not got[128 + own:132].any() and not got[132 + own:136].any()
    for tile, k in ((0, 0), (3, 139), (23, 70)):
        at = (tile * (inter // 64) + k) * 64
        assert torch.equal(tiles.down[at:at + 64], down[tile * 64:(tile + 1) * 64, k * 64:(k + 1) * 64])
