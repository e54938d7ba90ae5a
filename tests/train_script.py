"""Run by tests/test_train.py in a subprocess: train a tiny linearized model with LoRA for a few steps,
optionally dying abruptly (os._exit) right after step KILL_AT, optionally resuming; saves the LoRA tensors."""

import os
import sys

import torch
from conftest import tiny_model
from safetensors.torch import save_file

import liger
from liger.train.loop import Trainer, TrainConfig
from liger.train.losses import next_token_loss
from liger.train.recipes import add_lora, trainable_parameters

work, out, kill_at, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
torch.manual_seed(0)
model = add_lora(liger.linearize(tiny_model("llama")), ["q_proj", "k_proj", "v_proj"])
blocks = torch.randint(0, 128, (7, 24), generator=torch.Generator().manual_seed(1))
cfg = TrainConfig(lr=3e-3, warmup_steps=2, max_steps=8, batch_size=2, grad_accum=2, checkpoint_every=1,
                  precision="fp32", seed=3)
params = trainable_parameters(model)
trainer = Trainer(model, params, blocks, next_token_loss, cfg, work, "lora", {"run": "test"}, show_progress=False)
if resume:
    assert trainer.load_checkpoint()
if kill_at:
    trainer.on_step = lambda step: os._exit(137) if step == kill_at else None
trainer.run()
save_file({n: p.detach().contiguous() for n, p in params.items()}, out)
