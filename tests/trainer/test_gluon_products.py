"""trainer/gluon_products.py without a GPU: Triton's interpreter does not run Gluon, so the kernel is
compiled for sm_90a with Triton's own ptxas and its machine code checked (whole weight tile and x in
shared memory within the limit, no spills, the wgmma count of its K steps, the grid-dependency
instructions only when launched with PDL); the shapes it takes and refuses; and the decode engine's
offer of it (`decode_graphs.prefetched_o`) is empty where it cannot run. The GPU path (its partials
against float32, the step's check and replay) is run by bench/gpu_gluon_products.py and
bench/gpu_step.py on the GPU machine. Skipped without Gluon."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton.experimental.gluon")

from trainer import gluon_products as gp


@pytest.mark.parametrize(("n", "block_n", "splits", "pdl"), [
    (1536, 64, 4, True),    # o as the engine kept it on an H200: 147 KB of shared memory
    (1536, 64, 3, True),    # the fastest alone: 197 KB
    (2048, 128, 8, False),  # q/k/v's shape, a plain launch: no grid-dependency instruction
])
def test_kernel_compiles_for_hopper_with_its_tiles_in_shared_memory(n, block_n, splits, pdl):
    k = 1536
    report = gp.compile_report(n, k, 128, block_n, splits, pdl=pdl)
    steps = k // splits // gp.BLOCK_K
    tiles = steps * (gp.BLOCK_M + block_n) * gp.BLOCK_K * 2
    assert tiles <= report["shared"] <= gp.MAX_SHARED
    assert report["spill_bytes"] == 0
    # a [128, 64] x [64, block_n] step is two warp groups' 64 rows x four 16-deep wgmma each
    assert report["wgmma"] == steps * 2 * 4
    assert report["griddepcontrol"] == (2 if pdl else 0)


def test_fits_takes_power_of_two_tiles_within_shared_memory_and_128_rows():
    assert gp.fits(2048, 1536, 128, 64, 4)
    assert gp.fits(1536, 1536, 16, 128, 8)
    assert not gp.fits(1536, 1536, 129, 64, 4)      # rows past one tile
    assert not gp.fits(1536, 1536, 128, 96, 8)      # not a power of two (TMA box)
    assert not gp.fits(1536, 1536, 128, 64, 5)      # K not split into whole 64-wide steps
    assert not gp.fits(1536, 1536, 128, 128, 2)     # 6 steps of x and weight: 288 KB
    assert not gp.fits(1000, 1536, 128, 64, 4)      # columns not whole tiles


def test_product_refuses_what_it_cannot_tile_naming_the_shapes():
    x = torch.zeros(128, 1536, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"96 columns x 8 K slices .*\(1536, 1536\)"):
        gp.product(x, torch.zeros(1536, 1536, dtype=torch.bfloat16), block_n=96, splits=8, pdl=False)
    with pytest.raises(ValueError, match="torch.float32"):
        gp.product(x.float(), torch.zeros(1536, 1536), block_n=64, splits=4, pdl=False)


def test_not_offered_on_a_cpu_or_when_switched_off(monkeypatch):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from trainer.decode_graphs import prefetched_o
    from trainer.qwen2_decode import DecodeWeights
    from trainer.triton_products import DecodeProducts

    config = Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    weights = DecodeWeights.allocate(Qwen2ForCausalLM(config).eval())
    assert not gp.supported(torch.device("cpu"))
    assert prefetched_o(weights, DecodeProducts(), 8) == {}
    with pytest.raises(RuntimeError, match="Hopper"):
        DecodeProducts.prefetched(weights, 8)
    monkeypatch.setenv(gp.ENV, "0")
    assert not gp.supported(torch.device("cpu"))
