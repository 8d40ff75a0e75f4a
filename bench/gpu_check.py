"""Correctness of the fast path on the benchmark model, in bf16 on the GPU (the `check` side).

The CPU tests hold token-for-token equality in float32. In bf16 two correct implementations
round differently, so here the measures are: the relative error of the first-token logits
against transformers' forward; for greedy completions from the fast path (graphs, compiled
layers), the fraction of positions where transformers' teacher-forced argmax picks the same
token; the same measure for an eager (ungraphed, uncompiled) engine (greedy completions of the
two diverge after the first near-tie, so they are each compared with transformers rather than
with each other); and the base weights bitwise unchanged after generation with an adapter.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from gpu_common import Workload, load_tokenizer, make_prompts


def _teacher_forced(model, out, new_tokens: int, eos) -> tuple[float, float, float]:
    """How often transformers' argmax, given the same prefix, is the token the fast path chose
    (EOS excluded, as the fast path suppressed it; and with EOS), and the median top-2 margin."""
    import torch

    ids = torch.cat([out.prompt_ids, out.completion_ids], dim=1)
    mask = torch.cat([out.prompt_mask, out.completion_mask], dim=1)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                       logits_to_keep=new_tokens + 1).logits[:, :-1].float()
    with_eos = float((logits.argmax(-1) == out.completion_ids).float().mean())
    logits.index_fill_(-1, eos, float("-inf"))
    agreement = float((logits.argmax(-1) == out.completion_ids).float().mean())
    top2 = logits.topk(2, dim=-1).values
    return agreement, with_eos, float((top2[..., 0] - top2[..., 1]).median())


def run_check(folder: Path, work: Workload, device: str, new_tokens: int = 64) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model

    from trainer import fast_generation
    from trainer.modeling import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(folder, device, "bf16" if device == "cuda" else "fp32")
    tokenizer = load_tokenizer(folder)
    model = get_peft_model(model, LoraConfig(r=work.lora_r, lora_alpha=work.lora_alpha, lora_dropout=0.0,
                                             target_modules="all-linear", task_type="CAUSAL_LM")).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # zero at init: give the adapter an effect to fold
                param.normal_(0, 0.02)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    # As many distinct prompts as a rollout has rows: same decode shapes, so the compiled layer
    # functions are cached for the `ours` side.
    prompts = make_prompts(replace(work, prompts=work.sequences), model.config.vocab_size)

    out = fast_generation.generate(model, tokenizer, prompts, max_new_tokens=new_tokens, do_sample=False,
                                   min_new_tokens=new_tokens)
    eos = torch.tensor(fast_generation.eos_token_ids(model, tokenizer), device=out.prompt_ids.device)
    agreement, agreement_with_eos, margin = _teacher_forced(model, out, new_tokens, eos)

    engine = fast_generation._ENGINES[model]
    from trainer.qwen2_decode import prefill

    first = prefill(engine.weights, engine.state, out.prompt_ids, out.prompt_mask,
                    torch.arange(len(prompts), device=out.prompt_ids.device)).float()
    with torch.no_grad():
        reference = model(input_ids=out.prompt_ids, attention_mask=out.prompt_mask,
                          position_ids=(out.prompt_mask.cumsum(-1) - 1).clamp(min=0), use_cache=False,
                          logits_to_keep=1).logits[:, -1].float()
    rel_error = float((first - reference).norm() / reference.norm())

    eager = fast_generation.generate(model, tokenizer, prompts, max_new_tokens=new_tokens, do_sample=False,
                                     min_new_tokens=new_tokens, use_graphs=False, compile_layers=False)
    eager_agreement = _teacher_forced(model, eager, new_tokens, eos)[0]
    unchanged = all(torch.equal(p, base[n]) for n, p in model.named_parameters() if n in base)
    result = {
        "first_token_logits_rel_error": rel_error, "teacher_forced_argmax_agreement": agreement,
        "teacher_forced_argmax_agreement_with_eos": agreement_with_eos,
        "median_top1_top2_logit_margin": margin,
        "eager_uncompiled_teacher_forced_agreement": eager_agreement,
        "base_weights_bitwise_unchanged": unchanged, "new_tokens": new_tokens, "rows": len(prompts),
    }
    result["ok"] = bool(unchanged and rel_error < 0.05 and agreement > 0.9)
    print(f"[check] {result}", flush=True)
    fast_generation.release_engines()
    return result
