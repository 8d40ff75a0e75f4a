"""trainer/triton_sampling.py's inverse-CDF sampler (cdf_sample) in Triton's interpreter (CPU).

The walk is checked exactly: for given uniforms u, every row's token must be the one where the
float64 cumulative softmax(l / T) (banned ids and -inf excluded) first exceeds u, at two
temperatures, over slices of 16 columns in blocks of 8 (V = 50: four slices, the last partial).
Then cdf_sample end to end: draws from the softmax (chi-square), reproducible per seed.
Skipped where Triton is not installed. One child process (TRITON_INTERPRET must be set before
Triton is first imported) computes everything; the tests read its answers.
"""

from __future__ import annotations

import math

import pytest

from tests.trainer.test_triton_kernels import _interpreted

pytest.importorskip("triton")

CHILD = r"""
import json, torch
from trainer import triton_sampling as ts
ts.CDF_COLUMNS_PER_PROGRAM, ts.CDF_BLOCK = 16, 8
vocab, rows = 50, 24
gen = torch.Generator().manual_seed(0)
banned = torch.tensor([3, 17, 49])
logits = (torch.randn(rows, vocab, generator=gen) * 2).bfloat16()
logits[:, [5, 20, 33]] = float("-inf")
logits[0] = float("-inf"); logits[0, 47] = 1.0           # the whole mass in one column, last slice
logits[1] = float("-inf"); logits[1, 21] = -3.0          # ... in a middle slice
logits[2] = -20.0; logits[2, 40] = 30.0                  # nearly all of it in one column
logits[3] = float("-inf"); logits[3, 3] = 5.0            # only a banned column is finite
logits[4] = float("-inf")                                # nothing finite
uniforms = torch.rand(rows, generator=gen)
uniforms[5], uniforms[6], uniforms[7] = 0.0, 1.0, 1.0 - 2**-24  # 1.0: rounding past the end
def exact(l, inv_t, u):
    s = (l.double() * inv_t).index_fill(1, banned, float("-inf"))
    cum = s.softmax(-1).cumsum(-1)
    out = torch.searchsorted(cum, u.double()[:, None], right=True)[:, 0].clamp(max=vocab - 1)
    positive = s > float("-inf")
    last = torch.where(positive, torch.arange(vocab), -1).max(-1).values
    out = torch.where(positive.gather(1, out[:, None])[:, 0], out, last)  # u = 1: the last positive
    near = (cum - u.double()[:, None]).abs().min(-1).values < 1e-5  # float32 may round either way
    return out, near, positive.any(-1)
found = {}
for inv_t in (1 / 0.5, 1 / 1.7):
    got = ts.inverse_cdf(logits, inv_t, uniforms, banned)
    want, near, any_finite = exact(logits, inv_t, uniforms)
    found[f"walk_{inv_t:.3f}"] = {
        "dtype": str(got.dtype), "shape": list(got.shape),
        "mismatch": [i for i in range(rows) if any_finite[i] and got[i] != want[i] and not near[i]],
        "zero_weight": [i for i in range(rows) if any_finite[i] and not (logits[i, got[i]] > float("-inf")
                                                                          and got[i] not in banned)],
        "one_column": [int(t) for t in got[:3]], "only_banned_finite": int(got[3]), "empty": int(got[4]),
        "u0": [int(got[5]), int(want[5])], "u1": [int(got[6]), int(got[7]), int(want[6])]}
found["race_empty"] = int(ts.race_sample(logits[4:5], 1.0, torch.Generator().manual_seed(0), banned)[0])

ts.CDF_COLUMNS_PER_PROGRAM, ts.CDF_BLOCK = 8, 8  # V = 20: three slices, the last partial
draws, vocab, temperature = 360, 20, 0.7
base = (torch.randn(vocab, generator=gen) * 1.5).bfloat16()
base[9] = float("-inf")
small_banned = torch.tensor([2, 19])
tokens = ts.cdf_sample(base[None].repeat(draws, 1), 1 / temperature, torch.Generator().manual_seed(1), small_banned)
counts = torch.bincount(tokens, minlength=vocab)
def softmax(inv_t):
    return (base.double() * inv_t).index_fill(0, small_banned, float("-inf")).softmax(-1)
found["counts"] = counts.tolist()
found["p"] = softmax(1 / temperature).tolist()
found["p_wrong_temperature"] = softmax(1.0).tolist()
found["p_shifted"] = softmax(1 / temperature).roll(1).tolist()
few = base[None].repeat(8, 1)
found["same_seed"] = [ts.cdf_sample(few, 1.0, torch.Generator().manual_seed(s), None).tolist() for s in (5, 5, 6)]
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def found() -> dict:
    return _interpreted(CHILD)


def _chi_square(counts: list[int], p: list[float]) -> tuple[float, float]:
    """Pearson's statistic (cells expected below 5 pooled; a draw where p = 0 makes it infinite)
    and its 1e-6 upper quantile (Wilson-Hilferty)."""
    n = sum(counts)
    if any(c > 0 and q == 0 for c, q in zip(counts, p)):
        return math.inf, 0.0
    cells, pooled = [], [0, 0.0]
    for c, q in zip(counts, p):
        if n * q >= 5:
            cells.append((c, n * q))
        elif q > 0:
            pooled = [pooled[0] + c, pooled[1] + n * q]
    if pooled[1] > 0:
        cells.append(tuple(pooled))
    df = len(cells) - 1
    statistic = sum((c - e) ** 2 / e for c, e in cells)
    return statistic, df * (1 - 2 / (9 * df) + 4.75 * math.sqrt(2 / (9 * df))) ** 3


def test_the_walk_takes_the_exact_inverse_cdf_at_each_temperature(found):
    for key in ("walk_2.000", "walk_0.588"):
        walk = found[key]
        assert walk["dtype"] == "torch.int64" and walk["shape"] == [24]
        assert walk["mismatch"] == [] and walk["zero_weight"] == []


def test_a_row_with_its_mass_in_one_column_always_draws_it(found):
    for key in ("walk_2.000", "walk_0.588"):
        assert found[key]["one_column"] == [47, 21, 40]


def test_rounding_past_the_end_takes_the_last_positive_column_and_an_empty_row_gives_0(found):
    for key in ("walk_2.000", "walk_0.588"):
        walk = found[key]
        assert walk["u0"][0] == walk["u0"][1]
        assert walk["u1"][0] == walk["u1"][2] and walk["u1"][1] == walk["u1"][2]  # u = 1.0, 1 - 2^-24
        assert walk["only_banned_finite"] == 0 and walk["empty"] == 0 == found["race_empty"]  # as race_sample


def test_cdf_sample_draws_from_the_softmax_and_never_a_banned_or_infinite_id(found):
    counts = found["counts"]
    assert counts[2] == counts[19] == counts[9] == 0
    statistic, bound = _chi_square(counts, found["p"])
    assert statistic < bound
    # The same draws fail against the softmax at the wrong temperature or one column off.
    for wrong in ("p_wrong_temperature", "p_shifted"):
        statistic, bound = _chi_square(counts, found[wrong])
        assert statistic > bound, wrong


def test_cdf_sample_is_reproducible_for_a_generator_seed(found):
    first, again, other = found["same_seed"]
    assert first == again and first != other


@pytest.mark.parametrize(("value", "kernel"), [("cdf", "cdf_sample"), ("race", "race_sample"), ("1", "cdf_sample"),
                                               (None, "cdf_sample")])
def test_rltui_triton_sampling_picks_the_kernel(monkeypatch, value, kernel):
    from trainer import triton_sampling

    if value is None:
        monkeypatch.delenv(triton_sampling.ENV, raising=False)
    else:
        monkeypatch.setenv(triton_sampling.ENV, value)
    assert triton_sampling.sampler() is getattr(triton_sampling, kernel)
