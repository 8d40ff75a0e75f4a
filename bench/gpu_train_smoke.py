"""GPU smoke run of the trainer at Qwen2.5-1.5B's shape: a few steps, save, resume; timings.

Usage:
    python bench/gpu_train_smoke.py --root /tmp/smoke [--steps 2] [--resume-steps 1] [--nproc 1]
        [--out DIR]

No weights can be downloaded on the GPU machine, so the model is a randomly initialised Qwen2 of
Qwen2.5-1.5B's dimensions (1.54 B parameters, vocabulary 151,936), saved as an ordinary Hugging
Face folder with a locally built word-level tokenizer of the same vocabulary size. The dataset is
the built-in arithmetic task written as GSM8K jsonl (longer questions: several joined), so the
config is configs/qwen2_5_1_5b_gsm8k.yaml unchanged except the base path, the step counts and
saving. A random model rarely emits EOS, so every completion runs to max_completion_length (256):
the worst case for generation time.

It runs `trainer.rl_runner` for --steps (under torchrun when --nproc > 1), then
`trainer.resume_training --from-step latest --additional-steps K`, checks that the resumed session
continued from the checkpoint, and prints one table: per step the time split (generation,
scoring, training, saving), completion tokens/s and peak GPU memory. With --out, the logs and a
summary.json are copied there.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from a checkout, installed or not
VOCAB = 151_936
QWEN2_5_1_5B = dict(
    vocab_size=VOCAB, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
    num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
    rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
)


TINY_SHAPE = dict(QWEN2_5_1_5B, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)


def build_model(folder: Path, shape: dict) -> None:
    """A random Qwen2.5-1.5B-shaped model and a word-level tokenizer of the same vocabulary."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from trainer.data import arith_split

    if (folder / "config.json").exists():
        return
    words: list[str] = []
    seen = set()
    for ex in arith_split("train")[:2000]:
        for w in re.findall(r"\w+|[^\w\s]", ex.question + " " + ex.answer + " <think> </think> <answer> </answer>"):
            if w not in seen:
                seen.add(w)
                words.append(w)
    vocab = {"<|endoftext|>": 0, "<|pad|>": 1, "[UNK]": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    for i in range(len(vocab), VOCAB):
        vocab[f"tok{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   pad_token="<|pad|>", unk_token="[UNK]", padding_side="left")
    config = Qwen2Config(**shape, eos_token_id=0, pad_token_id=1, bos_token_id=0,
                         torch_dtype="bfloat16")
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = 0
    model.generation_config.pad_token_id = 1
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    fast.save_pretrained(tmp)
    os.replace(tmp, folder)
    print(f"built {sum(p.numel() for p in model.parameters()) / 1e9:.3f} B parameters in {folder}")


def write_dataset(root: Path) -> None:
    """GSM8K-format jsonl from the arithmetic task, 3 questions joined: ~100-word prompts."""
    from trainer.data import arith_split

    out = root / "datasets" / "gsm8k" / "train.jsonl"
    if out.exists():
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    ex = arith_split("train")
    rng = random.Random(0)
    with open(out, "w") as f:
        for i in range(2000):
            picked = rng.sample(ex, 3)
            question = " Then: ".join(e.question for e in picked)
            f.write(json.dumps({"question": question, "answer": picked[-1].answer}) + "\n")


def write_config(root: Path, base: Path, steps: int, cpu_check: bool) -> Path:
    import yaml

    cfg = yaml.safe_load((REPO / "configs" / "qwen2_5_1_5b_gsm8k.yaml").read_text())
    cfg["model"]["base"] = str(base)
    if cpu_check:  # the pipeline only, at a size a CPU can run
        cfg["grpo"].update(per_device_prompts=2, num_generations=2, max_completion_length=8)
        cfg["training"]["cpu_threads"] = 1
    cfg["training"].update(total_steps=steps, save_every=steps, log_rollouts_every=1)
    cfg["optim"]["warmup_steps"] = min(cfg["optim"]["warmup_steps"], steps)
    path = root / "smoke.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run(cmd: list[str], log: Path) -> str:
    print("$", " ".join(cmd), flush=True)
    started = time.monotonic()
    with open(log, "a") as f:
        p = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        f.write(p.stdout)
    print(f"  exit {p.returncode} in {time.monotonic() - started:.1f}s", flush=True)
    if p.returncode != 0:
        print(p.stdout[-6000:])
        sys.exit(p.returncode)
    return p.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--resume-steps", type=int, default=1)
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--cpu-check", action="store_true",
                    help="a 2-layer model and tiny batches: checks the pipeline on a CPU")
    args = ap.parse_args()
    import torch

    root = Path(args.root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    base = root / "models" / ("small_random" if args.cpu_check else "qwen2_5_1_5b_random")
    t0 = time.monotonic()
    build_model(base, TINY_SHAPE if args.cpu_check else QWEN2_5_1_5B)
    write_dataset(root)
    cfg = write_config(root, base, args.steps, args.cpu_check)
    print(f"setup {time.monotonic() - t0:.1f}s; card: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
    log = root / f"smoke_nproc{args.nproc}.log"
    if args.nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
                    f"--nproc_per_node={args.nproc}", "-m", "trainer.rl_runner"]
    else:
        launcher = [sys.executable, "-m", "trainer.rl_runner"]
    out = run([*launcher, "--cfg", str(cfg), "--root", str(root)], log)
    name = re.search(r"^run: (\S+)", out, re.M).group(1)
    resume = [sys.executable, "-m", "trainer.resume_training", "--training-run", name, "--from-step",
              "latest", "--additional-steps", str(args.resume_steps), "--root", str(root)]
    if args.nproc == 1:
        resume.append("--no-torchrun")
    run(resume, log)
    run_dir = root / "training_runs" / name
    rows = [json.loads(line) for line in (run_dir / "logs" / "train_log.jsonl").read_text().splitlines()]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["phase"] == "completed" and status["step"] == args.steps + args.resume_steps, status
    assert len({r["session"] for r in rows}) == 2, "the resume did not run as a second session"
    print(f"\nrun {name}: {args.nproc} process(es), card {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}")
    print("step session      gen_s  score_s  train_s  save_s  tokens/s  gen_tok/s  peak_GiB  reward  len")
    for r in rows:
        print(f"{r['step']:>4} {r['session']} {r['time_generation']:7.2f} {r['time_scoring']:7.2f} "
              f"{r['time_training']:8.2f} {r['time_saving']:7.2f} {r['tokens_per_s']:9.0f} "
              f"{r['generation_tokens_per_s']:10.0f} {r.get('peak_gpu_mem_gib', 0):9.2f} "
              f"{r['reward_mean']:7.3f} {r['completion_length']:5.0f}")
    summary = {"run": name, "nproc": args.nproc, "steps": rows, "status": status,
               "card": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    if args.out:
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"summary_nproc{args.nproc}.json").write_text(json.dumps(summary, indent=2))
        shutil.copy(log, out_dir / log.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
