"""Training recipes: which tensors train in which stage, on which objective.

- `liger` (Lan et al. 2025): LoRA r=8 on q/k/v, next-token cross-entropy, lr 1e-3.
- `lolcats` (Zhang et al. 2024): stage 1 attention transfer (only the Hedgehog feature maps and window
  factors train; each layer's output before o_proj is fit to the softmax attention's by MSE, every layer
  fed the teacher's inputs), stage 2 LoRA r=8 on q/k/v/o with cross-entropy.
Any recipe's cross-entropy stages can add a KL term to the teacher (`distill_weight`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..arch import ArchSpec
from ..distributed.sharding import is_sharded, merge_lora_sharded
from ..errors import ConfigError
from ..mixers import LigerAttention
from .losses import DistillLoss, attention_transfer_loss, next_token_loss
from .loop import LossFn, TrainConfig

RECIPES = ("liger", "lolcats")
LORA_LR = TrainConfig.lr  # the LoRA stages' default learning rate (1e-3)
TRANSFER_LR = 1e-2  # lolcats attention transfer's default learning rate


@dataclass
class Stage:
    name: str
    lr: float
    prepare: Callable[[nn.Module], nn.Module]  # make the stage's tensors trainable; may wrap the model
    loss: LossFn
    finish: Callable[[nn.Module], nn.Module] = field(default=lambda m: m)


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def add_lora(model: nn.Module, targets: list[str], r: int = 8, alpha: int = 16) -> nn.Module:
    """Wrap `model` with peft LoRA adapters on the modules named `targets` (only those train)."""
    from peft import LoraConfig, get_peft_model  # imported on first use: peft takes a second to import

    freeze(model)
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets))
    for name, p in model.named_parameters():
        if name.endswith("core.mix"):  # --learnable-mix: the window/linear weights train with the adapters
            p.requires_grad_(True)
        if name.endswith(("core.conv_q", "core.conv_k")):  # lawcat's short convolutions train with them too
            p.requires_grad_(True)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the LoRA adapters into the weights and remove them (sharded weights: each rank its own rows)."""
    if not hasattr(model, "merge_and_unload"):
        return model
    return merge_lora_sharded(model) if is_sharded(model) else model.merge_and_unload()


def transfer_mode(model: nn.Module, on: bool) -> None:
    for m in model.modules():
        if isinstance(m, LigerAttention):
            m.transfer = on
            m.transfer_loss = None


def _attention_transfer_prepare(model: nn.Module) -> nn.Module:
    freeze(model)
    params = [p for m in model.modules() if isinstance(m, LigerAttention) for p in m.own_parameters()]
    if not params:
        raise ConfigError("attention transfer needs a mixer with trainable feature maps (--mixer lolcats)")
    for p in params:
        p.requires_grad_(True)
    transfer_mode(model, True)
    return model


def _attention_transfer_finish(model: nn.Module) -> nn.Module:
    transfer_mode(model, False)
    freeze(model)
    return model


def _check_finite(name: str, value: float, positive: bool) -> None:
    if not (math.isfinite(value) and (value > 0 if positive else value >= 0)):
        raise ConfigError(f"{name} must be a finite number {'>' if positive else '>='} 0, got {value!r}")


def build_stages(recipe: str, spec: ArchSpec, teacher: nn.Module | None, distill_weight: float,
                 lr: float | None, transfer_lr: float | None = None, lora_r: int = 8) -> list[Stage]:
    """The stages of `recipe` for a model whose attention is laid out as `spec` (LoRA target names);
    `teacher` (frozen original model) is needed only when distill_weight > 0."""
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    lr = LORA_LR if lr is None else lr  # `is None`: an lr of 0 is an error, not "the default"
    transfer_lr = TRANSFER_LR if transfer_lr is None else transfer_lr
    _check_finite("lr", lr, positive=True)
    _check_finite("transfer_lr", transfer_lr, positive=True)
    _check_finite("distill_weight", distill_weight, positive=False)
    if isinstance(lora_r, bool) or not isinstance(lora_r, int) or lora_r < 1:
        raise ConfigError(f"lora_r (the LoRA rank) must be a whole number >= 1, got {lora_r!r}")
    ce: LossFn = DistillLoss(teacher, distill_weight) if distill_weight > 0 else next_token_loss

    def lora(targets: list[str]) -> Stage:
        return Stage(
            name="lora",
            lr=lr,
            prepare=lambda m: add_lora(m, targets, r=lora_r, alpha=2 * lora_r),
            loss=ce,
            finish=merge_lora,
        )

    if recipe == "liger":
        return [lora(spec.lora_targets("qkv"))]
    return [
        Stage("attention_transfer", transfer_lr, _attention_transfer_prepare, attention_transfer_loss,
              _attention_transfer_finish),
        lora(spec.lora_targets("qkvo")),
    ]


def count_parameters(params: dict[str, torch.Tensor]) -> int:
    return sum(p.numel() for p in params.values())
