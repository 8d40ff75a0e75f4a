"""What both sides of bench/gpu_step.py share: the workload, the model folder, prompts, timers.

The model has Qwen2.5-1.5B's dimensions with random bf16 weights (nothing can be downloaded on
the GPU machine), saved once as an ordinary Hugging Face folder together with a locally built
word-level tokenizer whose vocabulary fills all 151,936 ids, so that every sampled id decodes.
Both sides load that same folder.
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

EOS_ID = 151643  # Qwen2.5's <|endoftext|>, also its pad token


@dataclass(frozen=True)
class ModelShape:
    vocab_size: int = 151936
    hidden_size: int = 1536
    intermediate_size: int = 8960
    num_hidden_layers: int = 28
    num_attention_heads: int = 12
    num_key_value_heads: int = 2
    rope_theta: float = 1e6


TINY_SHAPE = ModelShape(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2)


@dataclass(frozen=True)
class Workload:
    prompts: int = 16
    generations: int = 8
    prompt_tokens: int = 128  # prompt lengths vary in [prompt_tokens - 16, prompt_tokens]
    completion_tokens: int = 256
    beta: float = 0.04
    epsilon: float = 0.2
    loss_type: str = "dapo"  # TRL's default
    learning_rate: float = 1e-5
    lora_r: int = 16
    lora_alpha: int = 32
    # Sequences per forward/backward in the training and reference phases, both sides. 32, not 16:
    # a micro-batch of 16 left the GPU idle ~45% of the time behind the host's kernel launches
    # (7,000 kernels each; measured 18.2 ms/sequence at 16 vs 10.5 at 32 on the H200).
    micro_batch: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    max_grad_norm: float = 1.0
    seed: int = 0

    @property
    def sequences(self) -> int:
        return self.prompts * self.generations


def word(i: int) -> str:
    return f"w{i}"


def build_tokenizer(vocab_size: int):
    """Word-level tokenizer: id i <-> "w{i}", EOS_ID <-> <|endoftext|> (eos and pad, as Qwen2.5)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {word(i): i for i in range(vocab_size) if i != EOS_ID}
    vocab["<|endoftext|>"] = EOS_ID
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=word(0)))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()  # joins words with spaces
    return _wrap(tok)


def _wrap(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token=word(0), padding_side="left")


def load_tokenizer(folder: Path):
    """The folder's tokenizer.json as a plain fast tokenizer, on both sides.

    AutoTokenizer would map a qwen2 folder to Qwen2Tokenizer, whose byte-level BPE pipeline does
    not apply to this word-level vocabulary.
    """
    from tokenizers import Tokenizer

    return _wrap(Tokenizer.from_file(str(folder / "tokenizer.json")))


def build_model_folder(folder: Path, shape: ModelShape, device: str) -> Path:
    """Random-initialised bf16 Qwen2 of `shape` + tokenizer, saved once (reused when present)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    config = Qwen2Config(
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size, num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads, num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=32768, rope_theta=shape.rope_theta, rms_norm_eps=1e-6,
        tie_word_embeddings=True, bos_token_id=EOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID,
        use_sliding_window=False, torch_dtype="bfloat16",
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    model = model.to(torch.bfloat16)
    model.generation_config.eos_token_id = EOS_ID
    model.generation_config.pad_token_id = EOS_ID
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    build_tokenizer(shape.vocab_size).save_pretrained(tmp)
    os.replace(tmp, folder)
    del model
    return folder


def make_prompts(work: Workload, vocab_size: int) -> list[str]:
    """`work.prompts` prompts of random words (never EOS), lengths in [P - 16, P], seeded."""
    rng = random.Random(work.seed)
    prompts = []
    for _ in range(work.prompts):
        length = rng.randint(max(1, work.prompt_tokens - 16), work.prompt_tokens)
        ids = [rng.randrange(0, vocab_size - 1) for _ in range(length)]
        prompts.append(" ".join(word(i if i != EOS_ID else i + 1) for i in ids))
    return prompts


def length_reward(prompts: list[str], completions: list[str], *extra, **kwargs) -> list[float]:
    """A cheap reward with spread inside each group (so advantages and the loss are non-zero)."""
    return [float(sum(map(ord, c[-8:])) % 5) for c in completions]


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


@dataclass
class PhaseTimer:
    """Time per named phase: wall time with a device sync at both ends of each phase, or with
    `events`, CUDA events at its ends and no sync, so that the host's work at a phase's start
    overlaps the GPU's work of the one before, as in the trainer (trainer/rl_runner.py syncs
    nowhere between the reference pass and the update). A phase then lasts from the moment the GPU
    finished the previous one (or reached this one, if it was idle) to its own last kernel;
    `take` syncs once."""

    totals: dict[str, float] = field(default_factory=dict)
    events: bool = False
    pending: list = field(default_factory=list)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self.events:
            import torch

            start = torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end = torch.cuda.Event(enable_timing=True)
                end.record()
                self.pending.append((name, start, end))
            return
        sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            sync()
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start

    def take(self) -> dict[str, float]:
        if self.pending:
            self.pending[-1][2].synchronize()
            for name, start, end in self.pending:
                self.totals[name] = self.totals.get(name, 0.0) + start.elapsed_time(end) / 1e3
            self.pending = []
        found, self.totals = self.totals, {}
        return found


def median_split(steps: list[dict[str, float]]) -> dict[str, float]:
    names = sorted({k for s in steps for k in s})
    return {k: statistics.median(s.get(k, 0.0) for s in steps) for k in names}


def peak_gib() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def peak_reserved_gib() -> float:
    """The most memory the caching allocator held from the card (CUDA graphs' pools included)."""
    import torch

    return torch.cuda.max_memory_reserved() / 2**30 if torch.cuda.is_available() else 0.0


def copy_bandwidth(gib: float = 2.0, repeats: int = 20) -> float:
    """Device-to-device copy bandwidth in bytes/s (bytes read + written), median of `repeats`."""
    import torch

    n = int(gib * 2**30) // 2
    src = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * n * 2 / statistics.median(times)


def environment() -> dict[str, str]:
    import torch

    found = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("transformers", "peft", "trl", "accelerate", "datasets", "triton"):
        try:
            found[name] = __import__(name).__version__
        except Exception as exc:  # noqa: BLE001 - report, do not fail
            found[name] = f"unavailable ({type(exc).__name__})"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        found["gpu"] = f"{props.name}, {props.total_memory / 2**30:.1f} GiB, {props.multi_processor_count} SMs"
        found["cuda"] = str(torch.version.cuda)
    return found


def gpu_bench_start(doc: str, argv: list[str] | None):
    """A one-GPU benchmark's start: its arguments (--out PATH), the CUDA device and a generator
    seeded 0 on it."""
    import argparse

    import torch

    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    dev = torch.device("cuda")
    return args, dev, torch.Generator(device=dev).manual_seed(0)


def write_text(path: Path, text: str) -> None:
    """`text` into `path` atomically: a reader sees the old file or the whole new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data: object) -> None:
    write_text(path, json.dumps(data, indent=2, default=str))


def asdict_workload(work: Workload) -> dict:
    return asdict(work)
