"""Sampling one token per row, side by side in one process: the torch race, race_sample, cdf_sample.

    python bench/gpu_sampling.py                             # H200: 128 x 151,936 bf16, under a minute
    TRITON_INTERPRET=1 python bench/gpu_sampling.py --tiny   # CPU dry run of the same code

Timing: each method (and cdf_sample at a few slice sizes) is warmed up, then called `--calls`
times behind a GPU sleep (so the host has queued them and the events time the device, not the
launches); CUDA events around every call give the median and mean per call, one pair around all
calls back to back the throughput; then the host's wall clock per call with nothing queued ahead. "torch" is fast_generation.sample_tokens with
RLTUI_TRITON_SAMPLING=0 (the exponential noise as a float32 tensor, then the compiled race).
Ratios are against cdf_sample at the module's default slice size.

Distribution: per method, many draws of a small vocabulary (banned and -inf columns included)
and their total-variation distance from softmax(l / T), beside torch.multinomial's with as many
draws (what exact sampling gives); then a full-width row whose mass sits in a few columns spread
over the slices, to exercise the walk across slices at V = 151,936; then sample_tokens with each
RLTUI_TRITON_SAMPLING value (the wiring, and whether it fell back to torch). Draws of a banned or
-inf column are counted; any is a failure. Results are printed and written to
$OUT/gpu_sampling.json (or --out).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_common import environment, write_json

SLEEP_CYCLES = 200_000_000  # ~0.1 s of GPU clock: time for the host to queue the timed calls
# (columns per slice, block, warps of the first kernel) for cdf_sample; the first is the default.
CDF_CONFIGS = [(4096, 1024, 4), (2048, 1024, 4), (8192, 1024, 8), (4096, 2048, 8), (4096, 4096, 8), (2048, 2048, 4),
               (1024, 1024, 4)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=128)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--calls", type=int, default=500, help="timed calls per method")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--draws", type=int, default=200_000, help="draws per method for the distribution check")
    p.add_argument("--wide-rows", type=int, default=8192, help="rows per call of the full-width check (4 calls)")
    p.add_argument("--temperature", type=float, default=0.9)
    p.add_argument("--tiny", action="store_true", help="tiny shapes (CPU dry run under TRITON_INTERPRET=1)")
    p.add_argument("--out", type=Path, default=None, help="JSON result path (default $OUT/gpu_sampling.json)")
    args = p.parse_args(argv)
    if args.tiny:
        args.rows, args.vocab, args.calls, args.warmup, args.draws, args.wide_rows = 4, 3000, 3, 1, 120, 8
    return args


@contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


class Methods:
    """The samplers by name, each (logits, inv_temperature, generator, banned) -> tokens."""

    def __init__(self, device: Any) -> None:
        from trainer import fast_generation, triton_sampling

        self.ts, self.fg, self.device = triton_sampling, fast_generation, device
        self.default_cdf = (triton_sampling.CDF_COLUMNS_PER_PROGRAM, triton_sampling.CDF_BLOCK, triton_sampling.CDF_WARPS)

    def torch(self, logits, inv_t, generator, banned):
        with _env(self.ts.ENV, "0"):
            return self.fg.sample_tokens(logits, do_sample=True, temperature=1 / inv_t, top_p=1.0,
                                         generator=generator, banned=banned)

    def race(self, logits, inv_t, generator, banned):
        return self.ts.race_sample(logits, inv_t, generator, banned)

    def cdf(self, logits, inv_t, generator, banned, config: tuple[int, int, int] | None = None):
        ts = self.ts
        ts.CDF_COLUMNS_PER_PROGRAM, ts.CDF_BLOCK, ts.CDF_WARPS = config or self.default_cdf
        try:
            return ts.cdf_sample(logits, inv_t, generator, banned)
        finally:
            ts.CDF_COLUMNS_PER_PROGRAM, ts.CDF_BLOCK, ts.CDF_WARPS = self.default_cdf


def _time(fn: Callable[[], Any], calls: int, warmup: int, cuda: bool) -> dict[str, float]:
    """Microseconds per call. median/mean: CUDA events around every call; back_to_back: one pair
    around all calls. Both behind a GPU sleep that lets the host queue the calls first, so they
    are device time, not launch latency, as long as the host queues faster than the device runs
    (the queue holds a few hundred calls; past it a host-bound method shows its launch gaps, and
    min is the cleanest device time). wall: the host's clock per call, to the last sync, with
    nothing queued ahead (what an eager loop doing only this would see)."""
    import torch

    for _ in range(warmup):
        fn()
    if not cuda:
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e6)
        return {"median_us": statistics.median(times), "mean_us": statistics.mean(times), "min_us": min(times),
                "back_to_back_us": statistics.mean(times), "wall_us": statistics.mean(times)}
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(calls)]
    torch.cuda.synchronize()
    torch.cuda._sleep(SLEEP_CYCLES)
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    times = [start.elapsed_time(end) * 1e3 for start, end in events]
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(SLEEP_CYCLES)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    torch.cuda.synchronize()
    back_to_back = start.elapsed_time(end) * 1e3 / calls
    began = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return {"median_us": statistics.median(times), "mean_us": statistics.mean(times), "min_us": min(times),
            "back_to_back_us": back_to_back, "wall_us": (time.perf_counter() - began) * 1e6 / calls}


def timing(methods: Methods, args: argparse.Namespace, cuda: bool) -> dict[str, Any]:
    import torch

    gen = torch.Generator(device=methods.device).manual_seed(0)
    logits = (torch.randn(args.rows, args.vocab, device=methods.device, generator=gen) * 3).bfloat16()
    banned = torch.tensor([args.vocab - 293], device=methods.device)  # EOS before min_new_tokens
    inv_t = 1 / args.temperature
    found: dict[str, Any] = {}
    for name in ("torch", "race"):
        fn = getattr(methods, name)
        found[name] = _guarded(lambda fn=fn: _time(lambda: fn(logits, inv_t, gen, banned), args.calls, args.warmup,
                                                   cuda))
    for config in CDF_CONFIGS:
        key = "cdf" if config == methods.default_cdf else "cdf_{}x{}_w{}".format(*config)
        found[key] = _guarded(lambda config=config: _time(lambda: methods.cdf(logits, inv_t, gen, banned, config),
                                                          args.calls, args.warmup, cuda))
    base = found["cdf"].get("median_us")
    for row in found.values():
        if base and "median_us" in row:
            row["ratio_to_cdf_median"] = row["median_us"] / base
    return found


def _guarded(measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One method's numbers, or the error that stopped it (the other methods still run)."""
    try:
        return measure()
    except Exception as exc:  # noqa: BLE001 - reported in the result
        return {"error": f"{exc!r:.500}"}


def _tv(tokens, p, bad) -> dict[str, float]:
    import torch

    freq = torch.bincount(tokens.flatten(), minlength=p.numel()).double() / tokens.numel()
    return {"tv": float(0.5 * (freq - p).abs().sum()), "bad_draws": int(torch.isin(tokens, bad).sum())}


def distribution(methods: Methods, args: argparse.Namespace, cuda: bool) -> dict[str, Any]:
    import torch

    dev = methods.device
    gen = torch.Generator(device=dev).manual_seed(1)
    inv_t = 1 / args.temperature
    vocab = 50
    base = (torch.randn(vocab, device=dev, generator=gen) * 2).bfloat16()
    base[[5, 20]] = float("-inf")
    banned = torch.tensor([3, 17, vocab - 1], device=dev)
    bad = torch.tensor([3, 5, 17, 20, vocab - 1], device=dev)
    p = (base.double() * inv_t).index_fill(0, banned, float("-inf")).softmax(-1)
    logits = base[None].repeat(args.draws, 1)
    found: dict[str, Any] = {"small_vocab": vocab, "draws": args.draws}
    found["multinomial_reference"] = _tv(torch.multinomial(p.float(), args.draws, replacement=True, generator=gen),
                                         p, bad)
    for name in ("torch", "race", "cdf"):
        found[name] = _guarded(lambda name=name: _tv(getattr(methods, name)(logits, inv_t, gen, banned), p, bad))

    # Full width: 24 hot columns spread over the slices (one banned, one -inf), the rest cold.
    hot = torch.linspace(7, args.vocab - 1, 24, device=dev).long()
    wide = torch.full((args.vocab,), -12.0, device=dev)
    wide[hot] = torch.linspace(0.0, 3.0, 24, device=dev)
    wide = wide.bfloat16()
    wide[hot[5]] = float("-inf")
    wide_banned = hot[[11]]
    scaled = (wide.double() * inv_t).index_fill(0, wide_banned, float("-inf"))
    p_wide = scaled.softmax(-1)
    # Categories: each hot column, then "a cold one" pooled.
    p_cat = torch.cat([p_wide[hot], (1 - p_wide[hot].sum()).reshape(1)])
    rows = args.wide_rows
    logits = wide[None].repeat(rows, 1)
    def wide_check(name: str) -> dict[str, Any]:
        drawn = torch.cat([getattr(methods, name)(logits, inv_t, gen, wide_banned) for _ in range(4)])
        where = (drawn[:, None] == hot[None]).float()
        cat = torch.where(where.any(1), where.argmax(1), torch.full_like(drawn, 24))
        return _tv(cat, p_cat, torch.tensor([5, 11], device=dev))

    for name in ("torch", "race", "cdf"):
        found[f"wide_{name}"] = _guarded(lambda name=name: wide_check(name))
    found["wide_draws"] = 4 * rows
    found["wide_multinomial_reference"] = _tv(torch.multinomial(p_cat.float(), 4 * rows, replacement=True,
                                                                generator=gen), p_cat, torch.tensor([5, 11], device=dev))

    if cuda:  # the wiring: sample_tokens under each RLTUI_TRITON_SAMPLING value
        logits = base[None].repeat(args.draws, 1)
        for value in ("0", "race", "cdf"):
            methods.fg._TRITON_FAILED.clear()
            with _env(methods.ts.ENV, value):
                tokens = methods.fg.sample_tokens(logits, do_sample=True, temperature=args.temperature, top_p=1.0,
                                                  generator=gen, banned=banned)
            found[f"sample_tokens_{value}"] = _tv(tokens, p, bad) | {"fell_back": bool(methods.fg._TRITON_FAILED)}
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    cuda = torch.cuda.is_available() and not args.tiny
    if not cuda and os.environ.get("TRITON_INTERPRET") != "1":
        print("gpu_sampling: no CUDA; run the CPU dry run as TRITON_INTERPRET=1 ... --tiny", file=sys.stderr)
        return 2
    methods = Methods(torch.device("cuda" if cuda else "cpu"))
    started = time.perf_counter()
    result: dict[str, Any] = {"shape": [args.rows, args.vocab], "dtype": "bfloat16", "calls": args.calls,
                              "temperature": args.temperature, "default_cdf_config": list(methods.default_cdf)}
    result["timing"] = timing(methods, args, cuda)
    result["distribution"] = distribution(methods, args, cuda)
    result["wall_s"] = time.perf_counter() - started
    result["environment"] = environment()
    for name, row in result["timing"].items():
        if "error" in row:
            print(f"{name:>20}: FAILED {row['error']}")
        else:
            print(f"{name:>20}: median {row['median_us']:8.1f} us  mean {row['mean_us']:8.1f} us  min "
                  f"{row['min_us']:8.1f} us  back-to-back {row['back_to_back_us']:8.1f} us  wall {row['wall_us']:8.1f} us"
                  + (f"  {row['ratio_to_cdf_median']:.2f}x cdf's median" if "ratio_to_cdf_median" in row else ""))
    for name, row in result["distribution"].items():
        if isinstance(row, dict) and "error" in row:
            print(f"{name:>28}: FAILED {row['error']}")
        elif isinstance(row, dict):
            print(f"{name:>28}: TV {row['tv']:.4f}  bad draws {row['bad_draws']}"
                  + (f"  fell back {row['fell_back']}" if "fell_back" in row else ""))
    out = args.out or (Path(os.environ["OUT"]) / "gpu_sampling.json" if os.environ.get("OUT") else None)
    if out is not None:
        write_json(out, result)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
