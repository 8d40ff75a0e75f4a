"""Our side of bench/gpu_step.py: the GRPO step composed from trainer/grpo.py, as rl_runner does it.

rollout (with trainer.fast_generation.generate in place of the plain generate), rewards and
group advantages, reference log-probs with the adapter disabled (beta > 0), then one
policy_update (one optimizer step); on CUDA grpo.token_logps goes through completion_logprobs.
Both replacements are swapped into trainer.grpo's namespace here, which is exactly the
integration the trainer needs. After the timed steps, `decode_profile` times the captured
decode graphs per attention-length bucket, the sampling kernels, an eager (ungraphed) step and an
uncompiled graph, for the notes on where decode time goes.
"""

from __future__ import annotations

import statistics
import time
from functools import partial
from pathlib import Path
from typing import Any

from gpu_common import (
    PhaseTimer, Workload, length_reward, load_tokenizer, make_prompts, median_split, peak_gib, peak_reserved_gib, sync,
)


def run_ours(folder: Path, work: Workload, steps: int, device: str, *, profile: bool,
             plain_generation: bool = False) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.profiler import record_function

    from trainer import fast_generation, grpo
    from trainer.data import Example
    from trainer import generation as generation_module
    from trainer.generation import generate as plain_generate
    from trainer.modeling import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(folder, device, "bf16" if device == "cuda" else "fp32")
    tokenizer = load_tokenizer(folder)
    model = get_peft_model(model, LoraConfig(r=work.lora_r, lora_alpha=work.lora_alpha, lora_dropout=0.0,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=work.learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    # EOS suppressed so every completion has the forced length (as TRL's min_new_tokens), patched
    # where grpo.rollout's fast_or_plain finds its generate.
    if plain_generation:
        forced = partial(plain_generate, stop_at_eos=False)
        fast_generation.supports_fast_generation = lambda model: False
        generation_module.generate = forced
    else:
        forced = partial(fast_generation.generate, min_new_tokens=work.completion_tokens)
        fast_generation.generate = forced
    calls = []

    def counted(*args: Any, **kwargs: Any):
        calls.append(1)
        return forced(*args, **kwargs)

    if plain_generation:
        generation_module.generate = counted
    else:
        fast_generation.generate = counted

    prompts = make_prompts(work, model.config.vocab_size)
    examples = [Example(question=p, answer="#### 0", gold="0") for p in prompts]
    generator = torch.Generator(device=device).manual_seed(work.seed)
    timer = PhaseTimer(events=device == "cuda")  # no syncs between phases: the step as rl_runner runs it
    step_times, splits, tokens = [], [], 0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def one_step():
        with timer.phase("generation"), record_function("phase:generation"):
            batch = grpo.rollout(model, tokenizer, examples, prompts, num_generations=work.generations,
                                 max_prompt_length=work.prompt_tokens,
                                 max_completion_length=work.completion_tokens,
                                 temperature=work.temperature, top_p=work.top_p, generator=generator)
        with timer.phase("scoring"), record_function("phase:scoring"):
            grpo.score(batch, [length_reward], [1.0])
            batch.advantages = grpo.group_advantages(batch.reward, work.generations, "group").to(device)
        with timer.phase("reference_logprobs"), record_function("phase:reference"):
            batch.ref_logps = grpo.frozen_logps(model, batch, work.temperature, work.micro_batch, reference=True)
        with timer.phase("training"), record_function("phase:training"):
            model.train()
            stats = grpo.policy_update(
                model, optimizer, scheduler, [batch], loss_type=work.loss_type, epsilon=work.epsilon,
                epsilon_high=work.epsilon, beta=work.beta, temperature=work.temperature,
                max_completion_length=work.completion_tokens, forward_batch_size=work.micro_batch,
                max_grad_norm=work.max_grad_norm)
            model.eval()
        return batch, stats

    for step in range(steps):
        sync()
        start = time.perf_counter()
        batch, stats = one_step()
        sync()
        step_times.append(time.perf_counter() - start)
        splits.append(timer.take())
        tokens = batch.generation_tokens
        print(f"[ours G={work.generations}] step {step + 1}: {step_times[-1]:.2f} s "
              f"{ {k: round(v, 3) for k, v in splits[-1].items()} } loss {stats.loss:.4f} "
              f"kl {stats.kl:.2e} tokens {tokens}", flush=True)

    measured = list(range(1, steps)) or [0]  # the first step compiles and captures graphs
    step_s = statistics.median(step_times[i] for i in measured)
    split = median_split([splits[i] for i in measured])
    result: dict[str, Any] = {
        "step_times_s": step_times, "step_s": step_s, "split_s": split, "generated_tokens": tokens,
        "mean_completion_length": tokens / work.sequences,
        "generation_tokens_per_s": tokens / split["generation"], "step_tokens_per_s": tokens / step_s,
        "peak_gib": peak_gib(), "peak_reserved_gib": peak_reserved_gib(), "prompt_length": batch.prompt_length,
        "generation_path": "plain" if plain_generation else "fast", "generate_calls": len(calls),
        "logprobs_path": "completion_logprobs",  # grpo.token_logps on CUDA
    }
    # Where the first step's time went: its phases, and within generation the decode engine's parts
    # (trainer/fast_generation.py DecodeEngine.warm_up_s; the rest is compiles and first calls).
    engine = None if plain_generation else fast_generation._ENGINES.get(model)
    result["warm_up"] = {"step_s": step_times[0], "split_s": splits[0],
                         "engine_s": dict(engine.warm_up_s) if engine is not None else None}
    print(f"[ours] warm-up: step 1 {step_times[0]:.2f} s {splits[0]}, engine "
          f"{ {k: round(v, 2) for k, v in result['warm_up']['engine_s'].items()} if engine else None}", flush=True)
    if profile and device == "cuda":
        from gpu_probe import step_gaps

        try:  # one more step, under the profiler: where the GPU waits for the host
            result["step_gaps"] = step_gaps(one_step)
            timer.take()
        except Exception as exc:  # noqa: BLE001 - the step numbers above must survive
            result["step_gaps_error"] = repr(exc)[:500]
    if profile and device == "cuda" and not plain_generation:
        try:
            result["decode"] = decode_profile(model, work, batch.prompt_length, split["generation"])
        except Exception as exc:  # noqa: BLE001 - the step numbers above must survive
            result["decode_error"] = repr(exc)
    if profile and device == "cuda" and not plain_generation:
        try:
            result["generation_profile"] = generation_profile(model, tokenizer, prompts, work, generator)
        except Exception as exc:  # noqa: BLE001 - the step numbers above must survive
            result["generation_profile_error"] = repr(exc)[:500]
    if profile:
        from gpu_probe import training_profile

        try:
            if device == "cuda":
                from gpu_probe import matmul_table
                from trainer.qwen2_decode import model_dims

                result["matmul_table"] = matmul_table(model_dims(model), (64, 128, 256))
            result["training_profile"] = training_profile(model, batch, work)
        except Exception as exc:  # noqa: BLE001 - the step numbers above must survive
            result["training_profile_error"] = repr(exc)[:500]
    return result


def generation_profile(model, tokenizer, prompts: list[str], work: Workload, generator) -> dict[str, Any]:
    """Where a rollout's generation time goes besides the decode replays: the adapter fold, the
    prefill, detokenising, and the GPU's busy time against the wall time of one whole rollout."""
    import torch

    from trainer import fast_generation, grpo
    from trainer.data import Example

    engine = fast_generation._ENGINES[model]
    found: dict[str, Any] = {"refresh_ms": _event_ms(lambda: engine.weights.refresh(model), 5)}
    repeated = [p for p in prompts for _ in range(work.generations)]
    ids, mask = fast_generation._tokenize_left(tokenizer, repeated, work.prompt_tokens)
    starts, inverse = fast_generation._unique_rows(ids, mask)
    ids, mask, rows = ids.cuda(), mask.cuda(), torch.tensor(inverse, device="cuda")
    found["prefill_ms"] = _event_ms(lambda: engine.prefill(ids[starts], mask[starts], rows), 5)
    examples = [Example(question=p, answer="#### 0", gold="0") for p in prompts]

    def rollout():
        return grpo.rollout(model, tokenizer, examples, prompts, num_generations=work.generations,
                            max_prompt_length=work.prompt_tokens, max_completion_length=work.completion_tokens,
                            temperature=work.temperature, top_p=work.top_p, generator=generator)

    sync()
    start = time.perf_counter()
    out = rollout()
    sync()
    found["rollout_wall_ms"] = (time.perf_counter() - start) * 1e3
    ids_list = out.input_ids[:, out.prompt_length:].tolist()
    start = time.perf_counter()
    fast_generation.decode_texts(tokenizer, ids_list)  # as generate does it
    found["detokenise_ms"] = (time.perf_counter() - start) * 1e3
    sampling = torch.randn(len(repeated), engine.weights.dims.vocab, device="cuda", dtype=torch.bfloat16)
    banned = torch.tensor([0], device="cuda")
    found["sampling_ms"] = _event_ms(lambda: fast_generation.sample_tokens(
        sampling, do_sample=True, temperature=1.0, top_p=1.0, generator=None, banned=banned), 20)
    import os

    from trainer import triton_sampling

    os.environ[triton_sampling.ENV] = "0"
    found["sampling_ms_torch_race"] = _event_ms(lambda: fast_generation.sample_tokens(
        sampling, do_sample=True, temperature=1.0, top_p=1.0, generator=None, banned=banned), 20)
    os.environ[triton_sampling.ENV] = "1"
    found["triton_sampling_failed"] = bool(fast_generation._TRITON_FAILED)
    k = kernel_breakdown(rollout, lambda: None, top=12)
    found["rollout_gpu_busy_ms"] = k["kernel_ms_total"]
    found["rollout_kernels"] = k
    return found


def _event_ms(fn, reps: int, before=None) -> float:
    import torch

    times = []
    for _ in range(reps):
        if before is not None:
            before()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def decode_profile(model, work: Workload, prompt_length: int, generation_s: float) -> dict[str, Any]:
    import torch

    from trainer import fast_generation, fused_decode

    engine = fast_generation._ENGINES[model]
    state, dims = engine.state, engine.weights.dims
    capacity = state.capacity

    def at(kv_len: int):
        def reset() -> None:
            state.write_index.fill_(kv_len - 1)
            state.positions.fill_(kv_len - 1)
        return reset

    per_bucket = {kv: _event_ms(graph.replay, 30, at(kv)) for kv, (graph, _) in sorted(engine.graphs.items())}
    visits = [fast_generation.kv_length(prompt_length + i + 1, capacity) for i in range(work.completion_tokens - 1)]
    replay_ms = mean_replay_ms(engine, prompt_length, visits)
    logits = torch.randn(state.tokens.shape[0], dims.vocab, device="cuda", dtype=torch.bfloat16)
    gen = torch.Generator(device="cuda").manual_seed(0)
    sampling_ms = _event_ms(lambda: fast_generation.sample_tokens(
        logits, do_sample=True, temperature=work.temperature, top_p=work.top_p, generator=gen,
        banned=None), 30)
    probe = max(k for k in per_bucket if k <= max(visits))
    eager_ms = _event_ms(lambda: engine.run_step(probe), 5, at(probe))
    uncompiled = fast_generation.DecodeEngine(model, fast_generation.EngineKey(
        state.tokens.shape[0], capacity, "cuda", engine.key.dtype, graphs=True, compiled=False))
    ustate = uncompiled.state
    # The rollout's cache and masks at the probe's last slot: the state a rollout leaves, on which
    # the engine's choice checks its stream steps against the plain step. The fused and stream
    # steps attend to the slots up to the one written and the plain step to every valid one, so on
    # a state with valid slots after it they differ (call 83 dropped the stream steps, 1.4 off,
    # when this engine had every slot valid and none written).
    for name in state.__dataclass_fields__:
        getattr(ustate, name).copy_(getattr(state, name))
    ustate.write_index.fill_(probe - 1)
    ustate.positions.fill_(probe - 1)
    uncompiled.step(probe)
    uncompiled_ms = _event_ms(uncompiled.graphs[probe][0].replay, 30,
                              lambda: (ustate.write_index.fill_(probe - 1), ustate.positions.fill_(probe - 1)))
    del uncompiled
    torch.cuda.empty_cache()
    kernels = {}
    for name, fn in (("eager_step", lambda: engine.run_step(probe)),
                     ("graph_replay", engine.graphs[probe][0].replay)):
        try:
            kernels[name] = kernel_breakdown(fn, at(probe))
        except Exception as exc:  # noqa: BLE001 - the profile is extra detail
            kernels[name] = {"error": repr(exc)[:300]}
    # Keys and values read from memory per step: the prompt's slots once per group (the fused
    # step reads them from the group's first row), the completion's once per row.
    groups = len(set(state.leaders.tolist())) if engine.fused else state.tokens.shape[0]
    per_slot = 2 * dims.layers * dims.kv_heads * dims.head_dim * 2
    kv_bytes = statistics.mean(per_slot * (groups * prompt_length + state.tokens.shape[0] * i)
                               for i in range(len(visits)))
    return {
        "batch": state.tokens.shape[0], "capacity": capacity, "weights_bytes": engine.weights.nbytes(),
        "kv_bytes_read_per_step_mean": kv_bytes, "graph_replay_ms_by_bucket": per_bucket,
        "graph_replay_ms_mean": replay_ms, "sampling_ms": sampling_ms,
        "per_token_in_generation_ms": generation_s / work.completion_tokens * 1e3,
        "eager_step_ms_at_probe": eager_ms, "uncompiled_graph_ms_at_probe": uncompiled_ms,
        "compiled_graph_ms_at_probe": per_bucket[probe], "probe_kv_len": probe,
        "compiled": engine.layer_fns is not None, "kernels_at_probe": kernels,
        "fused_step": engine.fused, "fused_choice_timing": engine.fused_timing,
        "attention_configs": fused_decode.tuned_configs(),
        "products": engine.products.describe(), "products_tuned": engine.tuned_products.describe(),
        "products_timing_ms": engine.tuned_products.timing,
        "chain_products": engine.chain.describe() if engine.chain else None,
        "chain_timing_ms": engine.chain.timing if engine.chain else None,
    }


def mean_replay_ms(engine, prompt_length: int, visits: list[int]) -> float:
    """The engine's decode graphs replayed through a rollout's own sequence of slots (each replay
    advances the slot and position; `visits`: the bucket of each step), median of three passes
    after a warm one; milliseconds per replay. The attention reads the slots filled so far, not
    the whole bucket, so the time depends on the slot. The engine's position and slot are put back."""
    import torch

    state = engine.state

    def replays() -> float:
        state.write_index.fill_(prompt_length)
        state.positions.fill_(prompt_length)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for kv in visits:
            engine.graphs[kv][0].replay()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / len(visits)

    saved = state.positions.clone(), state.write_index.clone()
    replays()  # warm clocks
    ms = statistics.median(replays() for _ in range(3))
    state.positions.copy_(saved[0])
    state.write_index.copy_(saved[1])
    return ms


def kernel_breakdown(fn, before, top: int = 20) -> dict[str, Any]:
    """GPU time by kernel for one call of `fn` (torch.profiler): where a decode step's time goes."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    before()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = []
    for event in prof.key_averages():
        us = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0)
        if us and event.count:
            rows.append((event.key, us / 1e3, event.count))
    rows.sort(key=lambda r: -r[1])
    matmul = ("gemm", "cutlass", "nvjet", "sm90", "matmul", "bmm")
    is_mm = [any(m in name.lower() for m in matmul) for name, _, _ in rows]
    return {
        "kernel_ms_total": sum(r[1] for r in rows), "kernels": sum(r[2] for r in rows),
        "matmul_ms": sum(r[1] for r, mm in zip(rows, is_mm) if mm),
        "other_ms": sum(r[1] for r, mm in zip(rows, is_mm) if not mm),
        "top": [{"kernel": k[:120], "ms": round(ms, 4), "count": c} for k, ms, c in rows[:top]],
    }
