"""The baseline side of bench/gpu_step.py: TRL's GRPOTrainer, transformers generation path.

Same model folder, prompts, reward, LoRA and GRPO settings as our side. One optimizer step =
16 prompts x 8 generations (per_device_train_batch_size 16 x gradient_accumulation_steps 8 =
one generation batch of 128), EOS suppressed with min_new_tokens so every completion has 256
tokens. The split is measured by wrapping the trainer's own methods with device-synced timers:
generation (`_generate_single_turn`), rewards (`_calculate_rewards`), reference log-probs (the
no-grad calls of `_get_per_token_logps_and_entropies`); training is the rest of the step.
"""

from __future__ import annotations

import functools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from gpu_common import (
    PhaseTimer, Workload, length_reward, load_tokenizer, make_prompts, median_split, peak_gib, peak_reserved_gib, sync,
)


def _timed(timer: PhaseTimer, name: Callable[[], str], method: Callable) -> Callable:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with timer.phase(name()):
            return method(*args, **kwargs)
    return wrapper


def _dataset(prompts: list[str]):
    from datasets import Dataset
    from datasets.table import InMemoryTable

    # An explicit fingerprint: on the GPU image, datasets fails to hash a new table (REFERENCE.md).
    return Dataset(InMemoryTable.from_pydict({"prompt": prompts}), fingerprint="rltui-bench-prompts")


def run_trl(folder: Path, work: Workload, steps: int, device: str) -> dict[str, Any]:
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = load_tokenizer(folder)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, attn_implementation="sdpa",
                                                 local_files_only=True).to(device)
    prompts = make_prompts(work, model.config.vocab_size)
    timer = PhaseTimer()
    step_times: list[float] = []
    splits: list[dict[str, float]] = []
    log_rows: list[dict[str, float]] = []

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.last = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            sync()
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            now = time.perf_counter()
            step_times.append(now - self.last)
            splits.append(timer.take())
            self.last = now
            print(f"[trl] step {len(step_times)}: {step_times[-1]:.2f} s {splits[-1]}", flush=True)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                log_rows.append({k: v for k, v in logs.items() if isinstance(v, (int, float))})

    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl_bench_"), per_device_train_batch_size=work.micro_batch,
        gradient_accumulation_steps=work.sequences // work.micro_batch, num_generations=work.generations,
        max_completion_length=work.completion_tokens,
        generation_kwargs={"min_new_tokens": work.completion_tokens},
        temperature=work.temperature, top_p=work.top_p, beta=work.beta, epsilon=work.epsilon,
        loss_type=work.loss_type, learning_rate=work.learning_rate, lr_scheduler_type="constant",
        max_grad_norm=work.max_grad_norm, num_iterations=1, scale_rewards="group",
        bf16=device == "cuda", gradient_checkpointing=False, report_to="none", logging_steps=1,
        save_strategy="no", max_steps=steps, seed=work.seed, shuffle_dataset=False,
        disable_tqdm=True, dataloader_num_workers=0, use_cpu=device != "cuda",
    )
    lora = LoraConfig(r=work.lora_r, lora_alpha=work.lora_alpha, lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    dataset = _dataset([p for _ in range(steps) for p in prompts])
    trainer = GRPOTrainer(model=model, reward_funcs=[length_reward], args=config, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=lora, callbacks=[StepClock()])
    trainer._generate_single_turn = _timed(timer, lambda: "generation", trainer._generate_single_turn)
    trainer._calculate_rewards = _timed(timer, lambda: "scoring", trainer._calculate_rewards)
    trainer._get_per_token_logps_and_entropies = _timed(
        timer, lambda: "training_logprobs" if torch.is_grad_enabled() else "reference_logprobs",
        trainer._get_per_token_logps_and_entropies)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()

    measured = list(range(1, len(step_times))) or [0]  # the first step warms up
    step = statistics.median(step_times[i] for i in measured)
    split = median_split([splits[i] for i in measured])
    split["training"] = step - sum(v for k, v in split.items() if k != "training_logprobs")
    split.pop("training_logprobs", None)
    lengths = [entry["completions/mean_length"] for entry in log_rows if "completions/mean_length" in entry]
    tokens = work.sequences * (lengths[-1] if lengths else work.completion_tokens)
    return {
        "step_times_s": step_times, "step_s": step, "split_s": split,
        "generated_tokens": tokens, "mean_completion_length": lengths[-1] if lengths else None,
        "generation_tokens_per_s": tokens / split["generation"] if split.get("generation") else None,
        "step_tokens_per_s": tokens / step, "peak_gib": peak_gib(), "peak_reserved_gib": peak_reserved_gib(),
        "trl_logs_last": log_rows[-1] if log_rows else {},
    }
