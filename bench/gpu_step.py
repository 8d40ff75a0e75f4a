"""One GRPO step at GPU speed: ours against TRL's GRPOTrainer, same card, same workload.

Usage (on the GPU machine; TRL travels as a wheel):
    pip install --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python bench/gpu_step.py [--sides prepare,check,ours,trl,ours16]
        [--steps 4] [--trl-steps 3] [--budget-s 480]
    python bench/gpu_step.py --tiny          # CPU dry run of the whole plumbing, tiny shapes

Workload (issue 8): a model of Qwen2.5-1.5B's dimensions, random bf16 weights, LoRA r=16 on all
linear layers, 16 prompts of ~128 tokens x 8 generations, 256 completion tokens forced (EOS
suppressed on both sides), beta 0.04, one optimizer step per rollout. Each side runs in its own
process (a failing side cannot take the other's numbers with it, and peak memory is per side):
  prepare  build the model folder once, measure device-to-device copy bandwidth
  check    the fast path against transformers on this model in bf16 (bench/gpu_check.py)
  ours     our step (bench/gpu_ours.py), then a decode profile and a training profile
  trl      TRL's step (bench/gpu_trl.py)
  ours16   our step with 16 generations per prompt (256 sequences): the memory check
  ours_mb  optional: our step with --alt-micro-batch sequences per training micro-batch (default 48)
  decode_modes  optional: the plain decode step vs the fused one (trainer/fused_decode.py), side by side
                (bench/gpu_probe.py)
  autotune      optional: inductor max-autotune for the decode layers vs the default compile
  decode_variants  optional: the fused and chained decode steps' graph replays through the rollout's
                slots, their kernels and checks, side by side (bench/gpu_decode_variants.py)
  restart  optional, after ours: our side again in a new process, 2 steps, no profile, with the
                compile caches ours left on disk (Triton's, inductor's): the warm-up a resume pays
The first step of each side is a warm-up; the median of the rest is reported. A table is printed
last; everything is written to $OUT/gpu_step.json (or --out). The decode variants are chosen
with RLTUI_DECODE_ATTENTION (bmm|sdpa), RLTUI_COMPILE_DECODE (0|1|max-autotune) and
RLTUI_DECODE_BUCKET (cache slots per attention-length bucket).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_common import (  # noqa: E402
    TINY_SHAPE, ModelShape, Workload, asdict_workload, build_model_folder, copy_bandwidth, environment,
    write_json,
)

SIDES = ("prepare", "check", "ours", "trl", "ours16", "ours_mb", "decode_modes", "autotune", "decode_variants",
         "restart")
DEFAULT_SIDES = ("prepare", "check", "ours", "trl", "ours16")
SIDE_LIMIT_S = {"prepare": 150, "check": 120, "ours": 420, "ours16": 150, "trl": 330, "ours_mb": 150, "decode_modes": 150, "decode_variants": 460,
                "autotune": 240, "restart": 240}
DECODE_MODES = {"decode_modes": [("triton", "1", "64", "1", "0"), ("triton", "1", "64", "1", "1")],
                "autotune": [("sdpa", "1", "64", "0"), ("sdpa", "max-autotune", "64", "0")]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sides", default=",".join(DEFAULT_SIDES), help="comma-separated, from " + ",".join(SIDES))
    p.add_argument("--steps", type=int, default=4, help="our steps (first is warm-up)")
    p.add_argument("--trl-steps", type=int, default=3, help="TRL steps (first is warm-up)")
    p.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget for all sides (s)")
    p.add_argument("--folder", type=Path, default=None, help="model folder (built if missing)")
    p.add_argument("--out", type=Path, default=None, help="JSON result path (default $OUT/gpu_step.json)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (CPU dry run)")
    p.add_argument("--alt-micro-batch", type=int, default=48, help="sequences per micro-batch of the ours_mb side")
    p.add_argument("--plain-generation", action="store_true", help="ours with trainer.generation.generate")
    p.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def setup(args: argparse.Namespace) -> tuple[ModelShape, Workload, Path, str]:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.tiny:
        work = Workload(prompts=2, generations=2, prompt_tokens=24, completion_tokens=12, micro_batch=2)
        shape = TINY_SHAPE
    else:
        work, shape = Workload(), ModelShape()
    folder = args.folder or Path(tempfile.gettempdir()) / ("rltui_bench_tiny" if args.tiny else "rltui_bench_qwen2_1_5b")
    return shape, work, folder, device


def child(args: argparse.Namespace) -> int:
    """Run one side in this process and write its JSON (an error is a result too)."""
    shape, work, folder, device = setup(args)
    started = time.perf_counter()
    try:
        if args.child == "prepare":
            build_model_folder(folder, shape, device)
            result: dict[str, Any] = {"environment": environment(), "folder": str(folder)}
            if device == "cuda":
                result["copy_bandwidth_bytes_per_s"] = copy_bandwidth()
        elif args.child == "check":
            from gpu_check import run_check

            result = run_check(folder, work, device, new_tokens=min(32, work.completion_tokens))
        elif args.child in ("ours", "ours16", "ours_mb", "restart"):
            from gpu_ours import run_ours

            if args.child == "ours16":
                work = replace(work, generations=2 * work.generations)
            if args.child == "ours_mb":
                work = replace(work, micro_batch=args.alt_micro_batch)
            steps = {"ours": args.steps, "restart": 2}.get(args.child, min(args.steps, 3))
            result = run_ours(folder, work, steps, device, profile=args.child == "ours",
                              plain_generation=args.plain_generation)
        elif args.child == "decode_variants":
            from gpu_decode_variants import run_decode_variants

            result = run_decode_variants(folder, work, device)
        elif args.child in DECODE_MODES:
            from gpu_probe import run_decode_modes

            result = run_decode_modes(folder, work, device, DECODE_MODES[args.child])
        else:
            from gpu_trl import run_trl

            result = run_trl(folder, work, args.trl_steps, device)
        result["workload"] = asdict_workload(work)
    except BaseException as exc:  # noqa: BLE001 - report the failure, keep the other sides' numbers
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    result["wall_s"] = time.perf_counter() - started
    write_json(args.result, result)
    return 0 if "error" not in result else 1


def run_side(side: str, args: argparse.Namespace, limit: float, scratch: Path) -> dict[str, Any]:
    result_path = scratch / f"{side}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--result", str(result_path),
           "--steps", str(args.steps), "--trl-steps", str(args.trl_steps),
           "--alt-micro-batch", str(args.alt_micro_batch)]
    cmd += ["--tiny"] if args.tiny else []
    cmd += ["--plain-generation"] if args.plain_generation else []
    cmd += ["--folder", str(args.folder)] if args.folder else []
    print(f"=== {side} (limit {limit:.0f} s) ===", flush=True)
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return {"error": f"timed out after {limit:.0f} s"}
    if not result_path.is_file():
        return {"error": f"exited {proc.returncode} without a result"}
    return json.loads(result_path.read_text())


def _fmt(key: str, value: Any) -> str:
    if isinstance(value, dict):
        return f"{key} (" + ", ".join(_fmt(k, v) for k, v in value.items()) + ")"
    return f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"


def summarise(results: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    env = results.get("prepare", {}).get("environment", {})
    lines.append("environment: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    header = f"{'side':8} {'step s':>7} {'gen s':>7} {'ref s':>7} {'train s':>8} {'score s':>8} " \
             f"{'gen tok/s':>10} {'step tok/s':>10} {'peak GiB':>9}"
    check = results.get("check")
    if check is not None:
        lines.append("check: " + ", ".join(_fmt(k, v) for k, v in check.items() if k not in ("workload", "wall_s")))
    lines.append(header)
    for side in ("ours", "ours_mb", "ours16", "trl"):
        r = results.get(side)
        if r is None:
            continue
        if "error" in r:
            lines.append(f"{side:8} FAILED: {r['error'][:300]}")
            continue
        s = r["split_s"]
        lines.append(f"{side:9} {r['step_s']:7.2f} {s.get('generation', 0):7.2f} "
                     f"{s.get('reference_logprobs', 0):7.2f} {s.get('training', 0):8.2f} "
                     f"{s.get('scoring', 0):8.3f} {r['generation_tokens_per_s']:10.0f} "
                     f"{r['step_tokens_per_s']:10.0f} {r['peak_gib']:9.1f}")
    ours, trl = results.get("ours", {}), results.get("trl", {})
    if "step_s" in ours and "step_s" in trl:
        lines.append(f"step throughput ratio ours/TRL: {trl['step_s'] / ours['step_s']:.2f}x "
                     f"(generation {trl['split_s']['generation'] / ours['split_s']['generation']:.1f}x)")
    reserved = {side: r["peak_reserved_gib"] for side, r in results.items()
                if isinstance(r, dict) and isinstance(r.get("peak_reserved_gib"), float)}
    if reserved:
        lines.append("peak memory reserved by the allocator (GiB): "
                     + ", ".join(f"{side} {gib:.1f}" for side, gib in reserved.items()))
    bandwidth = results.get("prepare", {}).get("copy_bandwidth_bytes_per_s")
    decode = ours.get("decode")
    if bandwidth:
        lines.append(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s")
    if bandwidth and decode:
        floor_ms = decode["weights_bytes"] / bandwidth * 1e3
        lines.append(
            f"decode floor: {decode['weights_bytes'] / 1e9:.2f} GB of weights / bandwidth = {floor_ms:.3f} ms; "
            f"graph replay {decode['graph_replay_ms_mean']:.3f} ms ({100 * floor_ms / decode['graph_replay_ms_mean']:.0f}% "
            f"of floor), per token in generation incl. sampling and prefill "
            f"{decode['per_token_in_generation_ms']:.3f} ms ({100 * floor_ms / decode['per_token_in_generation_ms']:.0f}%)")
        full_ms = (decode["weights_bytes"] + decode["kv_bytes_read_per_step_mean"]) / bandwidth * 1e3
        lines.append(f"with the KV cache the bytes per step are {(decode['weights_bytes'] + decode['kv_bytes_read_per_step_mean']) / 1e9:.2f} GB: "
                     f"{full_ms:.3f} ms at full bandwidth, so at most {100 * floor_ms / full_ms:.0f}% of the weights-only floor at this batch")
        lines.append(
            f"decode detail (batch {decode['batch']}, kv {decode['probe_kv_len']}): compiled graph "
            f"{decode['compiled_graph_ms_at_probe']:.3f} ms, uncompiled graph {decode['uncompiled_graph_ms_at_probe']:.3f} ms, "
            f"eager {decode['eager_step_ms_at_probe']:.3f} ms, sampling {decode['sampling_ms']:.3f} ms, "
            f"KV read {decode['kv_bytes_read_per_step_mean'] / 1e9:.2f} GB/step; compiled={decode['compiled']}")
        lines.append(f"decode step: fused={decode.get('fused_step')} (choice timing {decode.get('fused_choice_timing')}); "
                     f"attention configs {decode.get('attention_configs')}; products used {decode.get('products')}, "
                     f"tuned {decode.get('products_tuned')}")
        for kind, timing in (decode.get("products_timing_ms") or {}).items():
            best = sorted(timing.items(), key=lambda item: item[1])[:3]
            lines.append(f"products {kind}: cublas {timing.get('cublas', float('nan')):.4f} ms for all layers; best "
                         + ", ".join(f"{name} {ms:.4f}" for name, ms in best))
        for name, k in decode.get("kernels_at_probe", {}).items():
            if "error" in k:
                lines.append(f"kernels ({name}): profile failed: {k['error'][:200]}")
                continue
            lines.append(f"kernels ({name}): {k['kernels']} kernels, {k['kernel_ms_total']:.3f} ms busy "
                         f"(matmul {k['matmul_ms']:.3f}, other {k['other_ms']:.3f}); top: "
                         + "; ".join(f"{t['kernel'][:40]} {t['ms']:.3f}ms x{t['count']}" for t in k["top"][:6]))
    elif "decode_error" in ours:
        lines.append(f"decode profile failed: {ours['decode_error'][:300]}")
    lines += _probe_lines(ours, results)
    lines += _warm_up_lines(results)
    return lines


def _warm_up_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    """The first step of each side (its warm-up), ours by phase and by the decode engine's parts;
    `restart`'s is the warm-up of a second process with the compile caches the first left."""
    lines = []
    for side in ("ours", "restart", "trl"):
        r = results.get(side, {})
        if not r.get("step_times_s"):
            continue
        warm = r.get("warm_up") or {}
        split = {k: round(v, 1) for k, v in (warm.get("split_s") or {}).items()}
        engine = {k: round(v, 1) for k, v in (warm.get("engine_s") or {}).items()}
        lines.append(f"warm-up {side}: first step {r['step_times_s'][0]:.1f} s"
                     + (f" {split}" if split else "") + (f"; decode engine {engine}" if engine else ""))
    return lines


def _probe_lines(ours: dict[str, Any], results: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    train = ours.get("training_profile")
    if train:
        if isinstance(train.get("policy_update_ms"), float):
            lines.append(f"training phase (policy_update, {train['sequences_per_micro_batch']} per micro-batch): "
                         f"{train['policy_update_ms']:.0f} ms wall, {train.get('policy_update_gpu_busy_ms', 0):.0f} ms "
                         f"GPU busy, {train.get('policy_update_kernels', 0)} kernels; every micro-batch eager: "
                         f"{train.get('policy_update_ms_eager', float('nan')):.0f} ms wall, "
                         f"{train.get('policy_update_gpu_busy_ms_eager', float('nan')):.0f} ms GPU busy")
        if train.get("graph_vs_eager"):
            lines.append(f"training micro-batches as CUDA graphs vs eager: {train['graph_vs_eager']}")
        lines.append("training micro-batch: " + "; ".join(
            f"{k} {v['ms']:.0f} ms ({v['ms_per_sequence']:.1f}/seq)" if "ms" in v else f"{k} {v.get('error', '')[:80]}"
            for k, v in train.items() if isinstance(v, dict) and k.startswith("fwd")))
        k = train.get("kernels_fwd_bwd", {})
        if "top" in k:
            lines.append(f"training kernels (one micro-batch fwd+bwd): {k['kernels']} kernels, "
                         f"{k['kernel_ms_total']:.1f} ms busy (matmul {k['matmul_ms']:.1f}, other {k['other_ms']:.1f}); top: "
                         + "; ".join(f"{t['kernel'][:50]} {t['ms']:.1f}ms x{t['count']}" for t in k["top"][:12]))
    compare = train.get("fast_vs_model_forward") if train else None
    if compare:
        lines.append("fast training path vs the model's own forward (bf16): " + ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in compare.items()))
    k = (train or {}).get("kernels_fwd_only", {})
    if "top" in k:
        lines.append(f"reference kernels (one micro-batch fwd): {k['kernels']} kernels, {k['kernel_ms_total']:.1f} ms busy "
                     f"(matmul {k['matmul_ms']:.1f}, other {k['other_ms']:.1f}); top: "
                     + "; ".join(f"{t['kernel'][:50]} {t['ms']:.1f}ms x{t['count']}" for t in k["top"][:8]))
    gen = ours.get("generation_profile")
    if gen:
        lines.append("generation: " + ", ".join(f"{k} {v:.1f}" for k, v in gen.items() if isinstance(v, float)))
        k = gen.get("rollout_kernels", {})
        if "top" in k:
            lines.append("rollout kernels: " + "; ".join(f"{t['kernel'][:50]} {t['ms']:.1f}ms x{t['count']}"
                                                         for t in k["top"][:10]))
    elif "generation_profile_error" in ours:
        lines.append(f"generation profile failed: {ours['generation_profile_error'][:300]}")
    gaps = ours.get("step_gaps")
    if gaps:
        lines.append(f"one step under the profiler: {gaps['wall_ms']:.0f} ms wall, GPU busy {gaps['gpu_busy_ms']:.0f} ms, "
                     f"idle {gaps['gpu_idle_ms']:.0f} ms ({gaps['idle_in_gaps_over_min_ms']:.0f} ms in stretches of "
                     f">= {gaps['min_gap_ms']} ms); idle by what the host was doing: "
                     + "; ".join(f"{g['ms']:.1f} ms x{g['gaps']} {g['site']}" for g in gaps["sites"][:15]))
    elif "step_gaps_error" in ours:
        lines.append(f"step gap profile failed: {ours['step_gaps_error'][:300]}")
    table = ours.get("matmul_table")
    if table:
        lines.append("decode projections alone (F.linear, ms / GB/s of weights): " + "; ".join(
            f"{k} {v['ms']:.4f}/{v['weight_gb_per_s']:.0f}" for k, v in table.items()))
    for side in ("decode_modes", "autotune"):
        for name, entry in results.get(side, {}).get("modes", {}).items():
            replay = entry.get("graph_replay_ms_by_bucket", {})
            lines.append(f"{side} {name}: " + (f"FAILED {entry['error'][:200]}" if "error" in entry else
                         f"generation {entry['generation_s']:.3f} s (first {entry['first_generation_s']:.1f} s), replay ms "
                         + ", ".join(f"{kv}:{ms:.3f}" for kv, ms in replay.items())
                         + f"; forced logits vs eager bmm rel error {entry['forced_logits_rel_error_vs_eager_bmm']:.4f}, "
                         f"argmax agreement {entry['forced_argmax_agreement_vs_eager_bmm']:.4f}"))
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    sides = [s for s in args.sides.split(",") if s]
    unknown = [s for s in sides if s not in SIDES]
    if unknown:
        print(f"unknown side(s): {', '.join(unknown)} (choose from {', '.join(SIDES)})", file=sys.stderr)
        return 2
    deadline = time.monotonic() + args.budget_s
    results: dict[str, dict[str, Any]] = {}
    out = args.out or (Path(os.environ["OUT"]) / "gpu_step.json" if os.environ.get("OUT") else None)
    with tempfile.TemporaryDirectory(prefix="gpu_step_") as scratch:
        for side in sides:
            left = deadline - time.monotonic()
            if left < 30:
                results[side] = {"error": "skipped: budget spent"}
                continue
            results[side] = run_side(side, args, min(SIDE_LIMIT_S[side], left), Path(scratch))
            if out:
                write_json(out, results)
    lines = summarise(results)
    results["summary"] = lines
    if out:
        write_json(out, results)
    print("\n".join(lines), flush=True)
    failed = [k for k, r in results.items() if k != "summary" and "error" in r]
    return 1 if failed or not results.get("check", {"ok": True}).get("ok", False) else 0


if __name__ == "__main__":
    sys.exit(main())
