"""Training micro-batches replayed from CUDA graphs with LoRA dropout (trainer/train_graph.py):
do the replays draw the eager masks and a new mask each time? On the GPU machine:

    python bench/gpu_dropout_graphs.py [--out $OUT/dropout_graphs.json]

A small random Qwen2 in bf16 with LoRA r=8 on all linear layers and dropout 0.05 (the shipped
Qwen config's), one rollout-shaped batch (4 prompts x 4 completions, 64 completion tokens), and
`grpo.policy_update` with an SGD step of size 0 (the weights never move), run:
  eager    from CUDA seed 1, graphs off
  graph    from CUDA seed 1, graphs on (captures, then replays)
  again    from CUDA seed 1, the graph replayed again
  next     without reseeding: the generator has moved on
The loss is a forward quantity, bitwise repeatable here without dropout: equal losses mean equal
masks. Expected: eager = graph = again (the replay draws what the eager run draws from the same
generator state, and capturing does not move the stream), next differs (a new mask each replay),
and the generator ends where the eager run leaves it. The result is written after each stage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "dropout_graphs.json")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from trainer import grpo, train_graph

    found: dict = {"device": torch.cuda.get_device_name(0)}

    def write() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(found, indent=1))
        tmp.replace(args.out)
        print(json.dumps(found), flush=True)

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = get_peft_model(Qwen2ForCausalLM(config).to("cuda", torch.bfloat16),
                           LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    model.train()
    gen = torch.Generator(device="cuda").manual_seed(2)
    prompts, completions, g = 16, 64, 4
    prompt_ids = torch.randint(0, 1024, (4, prompts), device="cuda", generator=gen).repeat_interleave(g, 0)
    ids = torch.cat([prompt_ids, torch.randint(0, 1024, (16, completions), device="cuda", generator=gen)], 1)
    mask = torch.ones_like(ids)
    n = ids.shape[0]
    batch = grpo.Batch(prompts=[""] * n, answers=[""] * n, completions=[""] * n, input_ids=ids, attention_mask=mask,
                       completion_mask=mask[:, prompts:], prompt_length=prompts,
                       truncated=torch.zeros(n, dtype=torch.bool, device="cuda"),
                       advantages=torch.randn(n, device="cuda", generator=gen),
                       ref_logps=-3 * torch.rand(n, completions, device="cuda", generator=gen))
    found["graphs_usable_with_dropout"] = train_graph.usable(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    grads = {}
    for name, graphs, seed in (("eager", "0", 1), ("graph", "1", 1), ("again", "1", 1), ("next", "1", None)):
        os.environ[train_graph.ENV] = graphs
        if seed is not None:
            torch.cuda.manual_seed(seed)
        stats = grpo.policy_update(model, optimizer, scheduler, [batch], loss_type="dapo", epsilon=0.2,
                                   epsilon_high=0.2, beta=0.04, temperature=1.0, max_completion_length=completions,
                                   forward_batch_size=8, max_grad_norm=1.0)
        grads[name] = torch.cat([p.grad.flatten().float() for p in params])
        found[name] = {"loss": stats.loss, "grad_norm": stats.grad_norm,
                       "rng_offset_state": torch.cuda.get_rng_state()[-8:].tolist()}
        write()
    captured = train_graph.MicroBatchGraphs.of(model)
    found["graphs_captured"] = len(captured.graphs)
    found["graphs_failed"] = captured.failed
    found["graphs_error"] = captured.error[-500:]
    found["losses_equal_eager_graph_again"] = found["eager"]["loss"] == found["graph"]["loss"] == found["again"]["loss"]
    found["loss_next_differs"] = found["next"]["loss"] != found["again"]["loss"]
    found["rng_state_after_graph_equals_eager"] = found["graph"]["rng_offset_state"] == found["eager"]["rng_offset_state"]
    for name in ("graph", "again", "next"):
        found[f"grad_rel_diff_{name}_vs_eager"] = float((grads[name] - grads["eager"]).norm() / grads["eager"].norm())
    write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
