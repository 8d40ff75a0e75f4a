"""Where the time goes, beyond the step split: training micro-batches and decode variants.

Used by bench/gpu_step.py (not a command of its own):
  training_profile(model, batch, work)  after our timed steps: one micro-batch forward+backward
      timed for a few settings (micro-batch size, rows per log-softmax slice, the plain
      token_logps) and its kernel breakdown; gradients are cleared afterwards.
  run_decode_modes(folder, work, device, modes)  the `decode_modes` / `autotune` sides: the same
      rollout-shaped generation with each decode variant (attention kernel, compile mode), its
      graph replay time per attention bucket, and its teacher-forced logits against the eager
      engine's, side by side in one process.
"""

from __future__ import annotations

import bisect
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from gpu_common import Workload, load_tokenizer, make_prompts, sync


def _wall_ms(fn: Callable[[], Any], reps: int) -> float:
    fn()  # warm-up: allocator, autotuning, lazy init
    times = []
    for _ in range(reps):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def training_profile(model, batch, work: Workload, reps: int = 3) -> dict[str, Any]:
    import torch

    from trainer import grpo
    from trainer.logprobs import completion_logprobs

    from gpu_ours import kernel_breakdown

    n_tokens = int(batch.completion_mask.sum())
    model.train()

    def micro(size: int, logps_fn: Callable, backward: bool = True) -> Callable[[], None]:
        chunk = batch.slice(0, size)

        def run() -> None:
            with torch.enable_grad() if backward else torch.no_grad():
                logps = logps_fn(model, chunk.input_ids, chunk.attention_mask, chunk.prompt_length,
                                 work.temperature)
                if not backward:
                    return
                loss, _ = grpo.grpo_loss(
                    logps, logps.detach(), chunk.ref_logps, chunk.advantages, chunk.completion_mask,
                    loss_type=work.loss_type, epsilon=work.epsilon, epsilon_high=work.epsilon, beta=work.beta,
                    max_completion_length=work.completion_tokens, n_sequences=batch.size, n_tokens=n_tokens)
                loss.backward()
        return run

    def rows(n: int) -> Callable:
        return lambda *a: completion_logprobs(*a, rows=n)

    from trainer.qwen2_train import prefix_shared_logprobs

    found: dict[str, Any] = {"sequences_per_micro_batch": work.micro_batch}
    m = work.micro_batch
    variants = {
        f"fwd_bwd_micro{m}_fast": micro(m, prefix_shared_logprobs),
        f"fwd_bwd_micro{m}_model_forward": micro(m, rows(1)),
        f"fwd_bwd_micro{2 * m}_fast": micro(2 * m, prefix_shared_logprobs),
        f"fwd_only_micro{m}_fast": micro(m, prefix_shared_logprobs, backward=False),
        f"fwd_only_micro{m}_model_forward": micro(m, rows(1), backward=False),
        f"fwd_only_micro{4 * m}_fast": micro(4 * m, prefix_shared_logprobs, backward=False),
    }
    for name, fn in variants.items():
        try:
            size = int(name.split("micro")[1].split("_")[0])
            ms = _wall_ms(fn, reps)
            found[name] = {"ms": ms, "ms_per_sequence": ms / size}
        except Exception as exc:  # noqa: BLE001 - one variant running out of memory is a finding
            found[name] = {"error": repr(exc)[:300]}
        model.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    try:
        found["fast_vs_model_forward"] = compare_paths(model, batch.slice(0, m), work)
    except Exception as exc:  # noqa: BLE001
        found["fast_vs_model_forward"] = {"error": repr(exc)[:300]}
    try:  # the whole training phase: m-sequence micro-batches, clipping, the optimizer step
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-12, weight_decay=0.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)

        def update() -> None:
            grpo.policy_update(model, optimizer, scheduler, [batch], loss_type=work.loss_type, epsilon=work.epsilon,
                               epsilon_high=work.epsilon, beta=work.beta, temperature=work.temperature,
                               max_completion_length=work.completion_tokens, forward_batch_size=m,
                               max_grad_norm=work.max_grad_norm)
        found["policy_update_ms"] = _wall_ms(update, 2)
        if batch.input_ids.device.type == "cuda":  # the graphs captured above are replayed
            k = kernel_breakdown(update, lambda: None, top=8)
            found["policy_update_gpu_busy_ms"] = k["kernel_ms_total"]
            found["policy_update_kernels"] = k["kernels"]
        previous = os.environ.get("RLTUI_TRAIN_GRAPHS")
        os.environ["RLTUI_TRAIN_GRAPHS"] = "0"  # the same update, every micro-batch eager
        found["policy_update_ms_eager"] = _wall_ms(update, 2)
        if batch.input_ids.device.type == "cuda":
            k = kernel_breakdown(update, lambda: None, top=8)
            found["policy_update_gpu_busy_ms_eager"] = k["kernel_ms_total"]
        os.environ["RLTUI_TRAIN_GRAPHS"] = previous or "1"
        del optimizer, scheduler
    except Exception as exc:  # noqa: BLE001
        found["policy_update_ms"] = {"error": repr(exc)[:300]}
    model.zero_grad(set_to_none=True)
    try:
        found["graph_vs_eager"] = compare_update_graphs(model, batch, work)
    except Exception as exc:  # noqa: BLE001
        found["graph_vs_eager"] = {"error": repr(exc)[:300]}
    model.zero_grad(set_to_none=True)
    try:
        if batch.input_ids.device.type == "cuda":
            found["kernels_fwd_bwd"] = kernel_breakdown(variants[f"fwd_bwd_micro{m}_fast"], lambda: None, top=25)
            found["kernels_fwd_only"] = kernel_breakdown(variants[f"fwd_only_micro{m}_fast"], lambda: None, top=12)
    except Exception as exc:  # noqa: BLE001
        found["kernels_fwd_bwd"] = {"error": repr(exc)[:300]}
    model.zero_grad(set_to_none=True)
    model.eval()
    return found


def compare_update_graphs(model, batch, work: Workload) -> dict[str, Any]:
    """policy_update with its micro-batches replayed from CUDA graphs (trainer/train_graph.py)
    against the same update run eagerly, from the same weights (an SGD step of size 0 leaves
    them unchanged): the accumulated LoRA gradients, the loss, the gradient norm; and a second
    replayed update against the first (replays repeat bitwise)."""
    import torch

    from trainer import grpo, train_graph

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    results, grads = {}, {}
    model.train()
    for name, graphs in (("eager", "0"), ("graph", "1"), ("graph_again", "1")):
        os.environ["RLTUI_TRAIN_GRAPHS"] = graphs
        stats = grpo.policy_update(model, optimizer, scheduler, [batch], loss_type=work.loss_type, epsilon=work.epsilon,
                                   epsilon_high=work.epsilon, beta=work.beta, temperature=work.temperature,
                                   max_completion_length=work.completion_tokens, forward_batch_size=work.micro_batch,
                                   max_grad_norm=work.max_grad_norm)
        results[name] = {"loss": stats.loss, "grad_norm": stats.grad_norm, "kl": stats.kl}
        grads[name] = torch.cat([p.grad.flatten().float() for p in params])
    os.environ["RLTUI_TRAIN_GRAPHS"] = "1"
    eager, graph = grads["eager"], grads["graph"]
    return results | {
        "grad_rel_diff": float((graph - eager).norm() / eager.norm()),
        "grad_cosine": float(torch.nn.functional.cosine_similarity(graph, eager, dim=0)),
        "replays_bitwise_equal": bool(torch.equal(grads["graph"], grads["graph_again"])),
        "graphs_captured": len(getattr(train_graph.MicroBatchGraphs.of(model), "graphs", {})),
        "graphs_failed": train_graph.MicroBatchGraphs.of(model).failed,
        "graphs_error": train_graph.MicroBatchGraphs.of(model).error,
    }


def compare_paths(model, chunk, work: Workload) -> dict[str, Any]:
    """The fast training path against the model's own forward (completion_logprobs), both bf16:
    log-prob differences on completion tokens and the LoRA gradients' relative difference."""
    import torch

    from trainer.logprobs import completion_logprobs
    from trainer.qwen2_train import prefix_shared_logprobs

    mask = chunk.completion_mask.bool()
    weights = torch.randn(mask.shape, device=mask.device, generator=torch.Generator(mask.device).manual_seed(0))
    found: dict[str, Any] = {}
    grads = {}
    logps = {}
    for name, fn in (("fast", prefix_shared_logprobs), ("model", completion_logprobs)):
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            out = fn(model, chunk.input_ids, chunk.attention_mask, chunk.prompt_length, work.temperature)
            (out * weights * mask).sum().backward()
        logps[name] = out.detach()
        grads[name] = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    diff = (logps["fast"] - logps["model"])[mask]
    found["logp_max_abs_diff"] = float(diff.abs().max())
    found["logp_mean_abs_diff"] = float(diff.abs().mean())
    found["logp_mean_abs"] = float(logps["model"][mask].abs().mean())
    found["grad_rel_diff"] = float((grads["fast"] - grads["model"]).norm() / grads["model"].norm())
    found["grad_cosine"] = float(torch.nn.functional.cosine_similarity(grads["fast"], grads["model"], dim=0))
    with torch.no_grad(), model.disable_adapter():
        ref_fast = prefix_shared_logprobs(model, chunk.input_ids, chunk.attention_mask, chunk.prompt_length,
                                          work.temperature)
        ref_model = completion_logprobs(model, chunk.input_ids, chunk.attention_mask, chunk.prompt_length,
                                        work.temperature)
    found["reference_logp_max_abs_diff"] = float((ref_fast - ref_model)[mask].abs().max())
    # grpo.frozen_logps skips the adapters inside the fast path (qwen2_train.adapters_off), not
    # through peft: the same reference log-probs, bitwise.
    from trainer.grpo import frozen_logps

    found["frozen_reference_bitwise_peft_disabled"] = bool(torch.equal(
        frozen_logps(model, chunk, work.temperature, chunk.size, reference=True), ref_fast))
    return found


def run_decode_modes(folder: Path, work: Workload, device: str,
                     modes: list[tuple[str, ...]]) -> dict[str, Any]:
    """`modes`: (attention, compile, bucket, fused[, products]) tuples, e.g. ("sdpa", "1", "64", "0"),
    ("triton", "1", "64", "1", "0") (fused: RLTUI_DECODE_FUSED, the fused decode step or the plain;
    products: RLTUI_DECODE_PRODUCTS, split-K Triton projections where they time faster, default 1)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from trainer import fast_generation
    from trainer.modeling import load_model_and_tokenizer

    from gpu_ours import _event_ms

    model, _ = load_model_and_tokenizer(folder, device, "bf16" if device == "cuda" else "fp32")
    tokenizer = load_tokenizer(folder)
    model = get_peft_model(model, LoraConfig(r=work.lora_r, lora_alpha=work.lora_alpha, lora_dropout=0.0,
                                             target_modules="all-linear", task_type="CAUSAL_LM")).eval()
    prompts = [p for p in make_prompts(work, model.config.vocab_size) for _ in range(work.generations)]
    found: dict[str, Any] = {}
    fixed = reference = None  # one token sequence, teacher-forced through every variant
    for attention, compile_mode, bucket, fused, products in (tuple(m) + ("1",) * (5 - len(m)) for m in modes):
        name = f"{attention}/{compile_mode}/bucket{bucket}/fused{fused}/products{products}"
        os.environ["RLTUI_DECODE_PRODUCTS"] = products
        os.environ[fast_generation.FUSED_ENV] = fused
        os.environ[fast_generation.ATTENTION_ENV] = attention
        os.environ[fast_generation.COMPILE_ENV] = compile_mode
        os.environ[fast_generation.ATTENTION_BUCKET_ENV] = bucket
        fast_generation.release_engines()
        entry: dict[str, Any] = {}
        try:
            started = time.perf_counter()
            out = fast_generation.generate(model, tokenizer, prompts, max_new_tokens=work.completion_tokens,
                                           do_sample=True, generator=torch.Generator(device=device).manual_seed(0),
                                           min_new_tokens=work.completion_tokens)
            sync()
            entry["first_generation_s"] = time.perf_counter() - started
            entry["generation_s"] = _wall_ms(lambda: fast_generation.generate(
                model, tokenizer, prompts, max_new_tokens=work.completion_tokens, do_sample=True,
                generator=torch.Generator(device=device).manual_seed(0),
                min_new_tokens=work.completion_tokens), 1) / 1e3
            engine = fast_generation._ENGINES[model]
            state = engine.state
            if engine.graphs:
                def at(kv: int) -> Callable[[], None]:
                    return lambda: (state.write_index.fill_(kv - 1), state.positions.fill_(kv - 1))
                entry["graph_replay_ms_by_bucket"] = {
                    kv: _event_ms(graph.replay, 20, at(kv)) for kv, (graph, _) in sorted(engine.graphs.items())}
            entry["compiled"] = engine.layer_fns is not None
            entry["fused_step"] = engine.fused
            entry["products"] = engine.products.describe()
            entry["products_tuned"] = engine.tuned_products.describe()
            entry["choice_timing"] = engine.fused_timing
            if fixed is None:
                fixed = out.prompt_ids, out.prompt_mask, out.completion_ids[:, :32]
            logits = fast_generation.forced_logits(model, *fixed)
            if reference is None:
                fast_generation.release_engines()
                os.environ[fast_generation.FUSED_ENV] = "0"  # the plain eager step is the yardstick
                reference = fast_generation.forced_logits(model, *fixed, use_graphs=False, compile_layers=False)
                os.environ[fast_generation.FUSED_ENV] = fused
            entry["forced_logits_rel_error_vs_eager_bmm"] = float((logits - reference).norm() / reference.norm())
            entry["forced_argmax_agreement_vs_eager_bmm"] = float(
                (logits.argmax(-1) == reference.argmax(-1)).float().mean())
            del logits
        except Exception as exc:  # noqa: BLE001 - a variant failing is a finding, the others go on
            entry["error"] = repr(exc)[:500]
        found[name] = entry
        print(f"[decode_modes] {name}: {entry}", flush=True)
    fast_generation.release_engines()
    return {"modes": found}


def matmul_table(dims, bandwidth_rows: tuple[int, ...] = (128,)) -> dict[str, Any]:
    """Each decode projection alone, as F.linear with `rows` tokens: ms and weight bytes per ms.

    Shows how close cuBLAS's kernel for each shape comes to streaming its weights (the floor).
    """
    import torch
    import torch.nn.functional as F

    from gpu_ours import _event_ms

    shapes = {"qkv": (dims.q_size + 2 * dims.kv_size, dims.hidden), "o": (dims.hidden, dims.q_size),
              "gate_up": (2 * dims.intermediate, dims.hidden), "down": (dims.hidden, dims.intermediate),
              "lm_head": (dims.vocab, dims.hidden)}
    found: dict[str, Any] = {}
    for name, (n, k) in shapes.items():
        weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        for rows in bandwidth_rows:
            x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
            ms = _event_ms(lambda: F.linear(x, weight), 30)
            found[f"{name}_m{rows}"] = {"ms": ms, "weight_gb_per_s": weight.numel() * 2 / ms / 1e6}
        del weight
    return found


def step_gaps(fn: Callable[[], Any], *, min_gap_ms: float = 0.05, top: int = 25) -> dict[str, Any]:
    """Where the GPU waits in one call of `fn` (a whole step): torch.profiler's kernel intervals
    merged, every idle stretch between them (and before the first) attributed to what the host
    was doing at its middle: the innermost CPU op then, with its parents up to the step's
    `record_function` labels. The profiler's own host overhead lengthens the stretches, so read
    the sites' ranking, not their milliseconds."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, record_function

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with record_function("gaps:call"):
            fn()
        torch.cuda.synchronize()
    events = list(prof.events())
    gpu = sorted((e.time_range.start, e.time_range.end) for e in events
                 if e.device_type == DeviceType.CUDA and e.time_range.end > e.time_range.start)
    cpu = [e for e in events if e.device_type == DeviceType.CPU]
    call = next(e for e in cpu if e.name == "gaps:call")
    merged: list[list[float]] = []
    for start, end in gpu:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    busy = sum(end - start for start, end in merged)
    idle = [(call.time_range.start, merged[0][0])] if merged else []
    idle += [(a[1], b[0]) for a, b in zip(merged, merged[1:])]
    if merged:
        idle.append((merged[-1][1], call.time_range.end))

    cpu.sort(key=lambda e: e.time_range.start)
    starts = [e.time_range.start for e in cpu]

    def site(at: float) -> str:
        # The op that started last among those still running at `at` is the innermost one.
        inner, last = None, bisect.bisect_right(starts, at)
        for k in range(last - 1, max(-1, last - 20000), -1):
            if cpu[k].time_range.end >= at and cpu[k] is not call:
                inner = cpu[k]
                break
        if inner is None:
            return "(no host op)"
        chain, seen = [inner.name], inner.cpu_parent
        while seen is not None and seen is not call and len(chain) < 6:
            chain.append(seen.name)
            seen = seen.cpu_parent
        return " < ".join(chain)[:240]

    sites: dict[str, list[float]] = {}
    for start, end in idle:
        ms = (end - start) / 1e3
        if ms >= min_gap_ms:
            entry = sites.setdefault(site((start + end) / 2), [0.0, 0])
            entry[0] += ms
            entry[1] += 1
    ranked = sorted(sites.items(), key=lambda kv: -kv[1][0])
    wall = (call.time_range.end - call.time_range.start) / 1e3
    return {"wall_ms": wall, "gpu_busy_ms": busy / 1e3, "gpu_idle_ms": wall - busy / 1e3,
            "idle_in_gaps_over_min_ms": sum(v[0] for v in sites.values()), "min_gap_ms": min_gap_ms,
            "sites": [{"site": k, "ms": round(v[0], 2), "gaps": v[1]} for k, v in ranked[:top]]}
