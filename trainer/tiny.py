"""The built-in tiny model: a small Qwen2 with its own tokenizer, and its warm-start LoRA adapter.

Usage:
    python -m trainer.tiny [--root ROOT] [--eval N]    build (if missing) and report accuracy
    python -m trainer.tiny [--root ROOT] --eval 0       build (if missing) only

`ensure_tiny(root)` builds on first use, under ROOT/models/tiny/:

    base/        an ordinary Hugging Face folder (config, safetensors, tokenizer): the tiny model
                 goes through exactly the loading code a real model does
    warmstart/   a peft LoRA adapter from a short supervised warm-start on the arith train split,
                 as our users' SFT checkpoint is, so that RL has signal from the first step
    tiny_info.json   written last: what was built, with which settings

The tokenizer is a byte-level BPE trained on the arith task's text (digits split one per token,
the four R1 tags as single tokens), so decoding gives back exactly the text. Everything is built
from fixed seeds on the CPU. The whole folder is built in a temporary sibling and renamed into
place under a lock file, so two processes starting at once build it once and never see half of it.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rltui.runs.localfs import Layout, read_json_or_none, resolve_root, write_json_atomic

TINY_VERSION = 1
TINY_BASE_NAME = "tiny"  # the warm-start adapter's base_model_name_or_path
SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>")
R1_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


@dataclass(frozen=True)
class TinySettings:
    seed: int = 0
    vocab_size: int = 400
    hidden_size: int = 64
    intermediate_size: int = 192
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 256
    pretrain_steps: int = 600
    pretrain_batch: int = 32
    pretrain_lr: float = 5e-3
    lora_r: int = 16
    lora_alpha: int = 32
    warmstart_steps: int = 300
    warmstart_batch: int = 32
    warmstart_lr: float = 3e-3


@dataclass(frozen=True)
class TinyPaths:
    base: Path
    warmstart: Path


def tiny_dir(root: Path) -> Path:
    return Layout(Path(root)).models / "tiny"


def ensure_tiny(root: Path, settings: TinySettings = TinySettings()) -> TinyPaths:
    """The tiny model's folders under ROOT/models/tiny/, built first if missing."""
    final = tiny_dir(root)
    if not _is_built(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        with open(final.parent / ".tiny.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not _is_built(final):  # another process may have built it while we waited
                _build_into(final, settings)
    return TinyPaths(base=final / "base", warmstart=final / "warmstart")


def _is_built(folder: Path) -> bool:
    info = read_json_or_none(folder / "tiny_info.json") if folder.is_dir() else None
    return isinstance(info, dict) and info.get("version") == TINY_VERSION


def _build_into(final: Path, settings: TinySettings) -> None:
    staging = Path(tempfile.mkdtemp(prefix=".tmp_tiny.", dir=str(final.parent)))
    try:
        started = time.monotonic()
        build_base(staging / "base", settings)
        stats = warm_start(staging / "base", staging / "warmstart", settings)
        info = {"version": TINY_VERSION, "settings": asdict(settings), "warmstart": stats,
                "build_seconds": round(time.monotonic() - started, 2)}
        write_json_atomic(staging / "tiny_info.json", info)
        if final.exists():  # an old version: move it aside, then replace
            shutil.rmtree(final)
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------- the base model and tokenizer


def build_tokenizer(settings: TinySettings):
    """A byte-level BPE trained on the arith train split's prompts and solutions."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from trainer.data import R1_PLAIN, arith_split, r1_solution

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=settings.vocab_size, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    corpus = [R1_PLAIN.format(question=e.question) + r1_solution(e) for e in arith_split("train")]
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>",
        padding_side="left", model_max_length=settings.max_position_embeddings,
    )
    fast.add_tokens(list(R1_TAGS))  # ordinary (not special) tokens: decoding keeps them
    return fast


def build_base(out: Path, settings: TinySettings) -> None:
    """A randomly initialised Qwen2 (seeded) saved with its tokenizer as a Hugging Face folder."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tokenizer(settings)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size, num_hidden_layers=settings.num_hidden_layers,
        num_attention_heads=settings.num_attention_heads,
        num_key_value_heads=settings.num_key_value_heads,
        max_position_embeddings=settings.max_position_embeddings, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id, use_cache=True,
    )
    torch.manual_seed(settings.seed)
    model = Qwen2ForCausalLM(config)
    pretrain(model, tokenizer, settings)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def pretrain(model, tokenizer, settings: TinySettings) -> float:
    """Full-parameter language modelling on the arith train split in plain GSM8K form
    ("question\nworking\n#### N"), so that the base is a (tiny) pretrained model that knows the
    task's language but not the R1 template. Returns the mean loss of the last steps."""
    import torch

    from trainer.data import arith_split, r1_solution

    examples = arith_split("train")
    # One document in five shows the R1 tags (without the instruction), as web text shows some
    # markup: the tags' embeddings are trained here, because LoRA cannot train embeddings later.
    texts = [f"{e.question}\n{r1_solution(e) if i % 5 == 0 else e.answer}{tokenizer.eos_token}"
             for i, e in enumerate(examples)]
    return _train(model, tokenizer, [""] * len(texts), texts, steps=settings.pretrain_steps,
                  batch=settings.pretrain_batch, lr=settings.pretrain_lr, seed=settings.seed + 3,
                  params=list(model.parameters()))


# ---------------------------------------------------------------- the supervised warm-start


def warm_start(base: Path, out: Path, settings: TinySettings) -> dict[str, float]:
    """Teacher-forced LoRA training on R1-formatted arith solutions; saves a peft adapter."""
    import torch
    from peft import LoraConfig, get_peft_model

    from trainer.data import arith_split, build_prompt, r1_solution
    from trainer.modeling import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(base, "cpu", torch.float32)
    lora = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    torch.manual_seed(settings.seed + 1)
    model = get_peft_model(model, lora)
    model.train()
    examples = arith_split("train")
    prompts = [build_prompt(tokenizer, e.question, "r1_template") for e in examples]
    targets = [r1_solution(e) + tokenizer.eos_token for e in examples]
    final_loss = _train(model, tokenizer, prompts, targets, steps=settings.warmstart_steps,
                        batch=settings.warmstart_batch, lr=settings.warmstart_lr,
                        seed=settings.seed + 2,
                        params=[p for p in model.parameters() if p.requires_grad])
    # Name the base by what it is, not by the temporary folder it was built in.
    model.peft_config["default"].base_model_name_or_path = TINY_BASE_NAME
    model.save_pretrained(out, save_embedding_layers=False)  # (no Hub lookup of "tiny": trainer/checkpoint.py)
    return {"steps": settings.warmstart_steps, "final_loss": round(final_loss, 4)}


def _train(model, tokenizer, prompts: list[str], targets: list[str], *, steps: int, batch: int,
           lr: float, seed: int, params: list) -> float:
    """Teacher-forced AdamW steps on random batches (loss on targets only); the last steps' loss."""
    import torch

    model.train()
    rng = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 20) * max(0.05, 1 - s / steps))
    losses: list[float] = []
    for _ in range(steps):
        idx = torch.randint(len(prompts), (batch,), generator=rng).tolist()
        input_ids, attention, labels = _teacher_forcing_batch(
            tokenizer, [prompts[i] for i in idx], [targets[i] for i in idx])
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    tail = losses[-20:]
    return sum(tail) / len(tail)


def _teacher_forcing_batch(tokenizer, prompts: list[str], targets: list[str]):
    """Right-padded ids with labels on the target tokens only (prompt and padding are -100)."""
    import torch

    rows = []
    for p, t in zip(prompts, targets):
        p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        t_ids = tokenizer(t, add_special_tokens=False)["input_ids"]
        rows.append((p_ids + t_ids, [-100] * len(p_ids) + t_ids))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows])
    return input_ids, attention, labels


# ---------------------------------------------------------------- a quick report


def measure_accuracy(root: Path, n: int, *, do_sample: bool, seed: int = 0) -> dict[str, float]:
    """Accuracy and strict-format rate of the warm-started tiny model on n arith test questions."""
    import torch

    from trainer.data import arith_split, build_prompt
    from trainer.generation import generate
    from trainer.modeling import load_adapter, load_model_and_tokenizer
    from trainer.rewards import is_correct, is_strict_format

    paths = ensure_tiny(root)
    model, tokenizer = load_model_and_tokenizer(paths.base, "cpu", torch.float32)
    model = load_adapter(model, paths.warmstart, adapter_name="warmstart")
    examples = arith_split("test")[:n]
    prompts = [build_prompt(tokenizer, e.question, "r1_template") for e in examples]
    out = generate(model, tokenizer, prompts, max_new_tokens=24, do_sample=do_sample,
                   generator=torch.Generator().manual_seed(seed))
    correct = [is_correct(c, e.gold) for c, e in zip(out.texts, examples)]
    strict = [is_strict_format(c) for c in out.texts]
    return {"accuracy": sum(correct) / n, "format_rate": sum(strict) / n}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.tiny", description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=None)
    parser.add_argument("--eval", type=int, default=200, metavar="N",
                        help="test questions to score (0: build only, as `rltui --batch demo` does)")
    args = parser.parse_args(argv)
    root = resolve_root(args.root)
    started = time.monotonic()
    paths = ensure_tiny(root)
    print(f"tiny model ready in {time.monotonic() - started:.1f}s: {paths.base} {paths.warmstart}")
    print(f"build info: {read_json_or_none(paths.base.parent / 'tiny_info.json')}")
    for sample in (False, True) if args.eval > 0 else ():
        m = measure_accuracy(root, args.eval, do_sample=sample)
        print(f"{'sampled' if sample else 'greedy'}: accuracy {m['accuracy']:.3f} "
              f"format {m['format_rate']:.3f} on {args.eval} test questions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
