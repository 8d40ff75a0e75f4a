"""trainer/gluon_mlp.py without a GPU: Triton's interpreter does not run Gluon, so the block is
compiled for sm_90a with Triton's own ptxas and its machine code checked (its ring within the
multiprocessor's shared memory, no spills, no wgmma serialized, the wgmma of its two loops, the
grid-dependency wait only when launched with PDL); the widths it takes and refuses; and the
decode engine's offer of it (`decode_graphs.gluon_block`) is None where it cannot run. Its outputs
against the Triton block's and its timing are bench/gpu_gluon_mlp.py's, on the GPU machine.
Skipped without Gluon."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton.experimental.gluon")

from trainer import gluon_mlp
from trainer.mlp_block import BlockShape

H200 = 132  # multiprocessors: Qwen2.5-1.5B's 8,960 columns in shares of 67-68
HOPPER_SHARED = 227 * 1024


@pytest.mark.parametrize(("options", "ring"), [
    ({"stages": 6, "pdl": True}, 6),
    ({"stages": 5, "pdl": False, "cross": False}, 5),
])
def test_block_compiles_for_hopper_within_shared_memory(options, ring):
    report = gluon_mlp.compile_report(128, 1536, 8960, BlockShape(programs=H200, gluon=True, **options))
    # a ring stage: x [128, 64], gate and up [64, 64], their remainders [8, 64], bf16
    stage = (128 + 64 + 64 + 8 + 8) * 64 * 2
    assert ring * stage <= report["shared"] <= HOPPER_SHARED
    assert report["spill_bytes"] == 0 and report["serialized"] == 0
    # per K step (128 rows: two 64-row halves x four 16-deep wgmma a product): gate, up and their
    # remainders in the first loop, down in the second
    assert report["wgmma"] == (4 + 1) * 2 * 4
    assert report["griddepcontrol"] == (1 if options["pdl"] else 0)


def test_fits_names_what_it_does_not_take():
    shape = BlockShape(programs=H200, gluon=True)
    assert gluon_mlp.fits(128, 1536, 8960, shape) is None
    assert "rows 129" in gluon_mlp.fits(129, 1536, 8960, shape)
    # 8,960 columns on 100 programs: shares of 89-90, past a 64-column tile + 8
    assert "shares of 8960 columns (89-90)" in gluon_mlp.fits(128, 1536, 8960, BlockShape(programs=100, gluon=True))
    assert "ahead 7" in gluon_mlp.fits(128, 1536, 8960, BlockShape(programs=H200, gluon=True, ahead=7))
    assert "down tile 128" in gluon_mlp.fits(128, 1536, 8960, BlockShape(programs=H200, gluon=True, down_n=128))
    assert "remainder rows 12" in gluon_mlp.fits(128, 1536, 8960, BlockShape(programs=H200, gluon=True, rest=12))
    # K loops shorter than the ring (its first STAGES tiles are asked for before they are needed):
    # 128 wide, 66 shares of 64 in 33 down slices of 2 steps
    assert "2 gate/up and 2 down K steps" in gluon_mlp.fits(128, 128, 4224, BlockShape(programs=66, gluon=True))


def test_block_refuses_a_cpu_tensor_naming_it():
    shape = BlockShape(programs=H200, gluon=True)
    h = torch.zeros(128, 1536, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"Gluon MLP block does not take h \(128, 1536\) torch.bfloat16 on cpu"):
        gluon_mlp.block(h, h, torch.zeros(2 * 8960, 1536, dtype=torch.bfloat16),
                        torch.zeros(1536, 8960, dtype=torch.bfloat16), torch.ones(1536), 1e-6, shape,
                        (torch.empty(128, 8960), torch.empty(5, 128, 1536), torch.zeros(4, dtype=torch.int32)))


def test_not_offered_on_a_cpu_or_unless_asked_for(monkeypatch):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from trainer.decode_graphs import GLUON_MLP_ENV, gluon_block
    from trainer.qwen2_decode import DecodeWeights
    from trainer.triton_products import DecodeProducts

    config = Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    weights = DecodeWeights.allocate(Qwen2ForCausalLM(config).eval())
    block = DecodeProducts(mlp=BlockShape(programs=2))
    monkeypatch.delenv(GLUON_MLP_ENV, raising=False)
    assert gluon_block(weights, block, 8) is None  # opt-in
    monkeypatch.setenv(GLUON_MLP_ENV, "1")
    assert gluon_block(weights, block, 8) is None  # no Gluon on a CPU
    assert gluon_block(weights, DecodeProducts(), 8) is None
