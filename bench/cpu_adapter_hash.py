"""CPU: two GRPO steps (plain rollout, reference, policy_update) on a small random Qwen2 + LoRA
(dropout 0.05); prints a sha256 of the adapter weights. Run it against two checkouts to show that
the CPU trainer's result is bitwise unchanged between them:

    git worktree add /tmp/before COMMIT
    python bench/cpu_adapter_hash.py /tmp/before; python bench/cpu_adapter_hash.py .
"""
import hashlib, sys, torch
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + "/bench")
from gpu_common import build_tokenizer, length_reward
from peft import LoraConfig, get_peft_model
from transformers import Qwen2Config, Qwen2ForCausalLM
from trainer import grpo
from trainer.data import Example
torch.set_num_threads(1); torch.manual_seed(0)
tok = build_tokenizer(151936)
cfg = Qwen2Config(vocab_size=151936, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=128,
                  eos_token_id=151643, pad_token_id=151643)
model = get_peft_model(Qwen2ForCausalLM(cfg), LoraConfig(r=4, lora_dropout=0.05, target_modules="all-linear"))
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
sch = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
prompts = [" ".join(f"w{(7*i+j)%290}" for j in range(5 + i)) for i in range(3)]
ex = [Example(question=p, answer="#### 0", gold="0") for p in prompts]
g = torch.Generator().manual_seed(1)
for step in range(2):
    model.eval()
    b = grpo.rollout(model, tok, ex, prompts, num_generations=4, max_prompt_length=16, max_completion_length=12,
                     temperature=1.0, top_p=1.0, generator=g)
    grpo.score(b, [length_reward], [1.0]); b.advantages = grpo.group_advantages(b.reward, 4, "group")
    b.ref_logps = grpo.frozen_logps(model, b, 1.0, 4, reference=True)
    model.train()
    st = grpo.policy_update(model, opt, sch, [b], loss_type="dr_grpo", epsilon=0.2, epsilon_high=0.28, beta=0.04,
                            temperature=1.0, max_completion_length=12, forward_batch_size=5, max_grad_norm=1.0)
h = hashlib.sha256()
for n, p in sorted(model.named_parameters()):
    if p.requires_grad: h.update(n.encode()); h.update(p.detach().numpy().tobytes())
print("adapter sha256", h.hexdigest(), "loss", st.loss)
