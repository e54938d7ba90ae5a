"""Training recipes: which tensors train in which stage, on which objective.

- `liger` (Lan et al. 2025): LoRA r=8 on q/k/v, next-token cross-entropy, lr 1e-3.
- `lolcats` (Zhang et al. 2024): stage 1 attention transfer (only the Hedgehog feature maps and window
  factors train; each layer's output before o_proj is fit to the softmax attention's by MSE, every layer
  fed the teacher's inputs), stage 2 LoRA r=8 on q/k/v/o with cross-entropy.
- `align`: attention alignment for any mixer: LoRA on q/k/v of the linearized layers and the mixer's own
  parameters train so that each layer's output before o_proj matches the teacher's softmax attention output
  (`align_metric`), every layer fed the teacher's inputs (all layers in one forward pass).
- `distill`: the same LoRA trained on `kl_weight` * KL(teacher || student) + `ce_weight` * cross-entropy.
- `staged` (as RADLADS, Goldstein et al. 2025: alignment, then distillation): `align` on the first
  `align_fraction` of the budget, then `distill` on the rest, the LoRA carried over.
The teacher of the KL terms is the student itself in teacher mode (liger.train.shared_teacher). The `liger`
and `lolcats` recipes' cross-entropy stages can add a KL term (`distill_weight`).
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
from ..mixers.attention import ALIGNMENT_METRICS
from .losses import DistillLoss, attention_transfer_loss, next_token_loss
from .loop import LossFn, TrainConfig

RECIPES = ("liger", "lolcats", "align", "distill", "staged")
LORA_LR = TrainConfig.lr  # the LoRA stages' default learning rate (1e-3)
TRANSFER_LR = 1e-2  # lolcats attention transfer's default learning rate
ALIGN_LR = 1e-3  # the align stage's default learning rate (LoRA and the mixers' own parameters)
ALIGN_FRACTION = 0.2  # the staged recipe's share of the budget for alignment
ALIGN_METRIC = "nmse"


@dataclass
class Stage:
    """One stage: `prepare` makes its tensors trainable (it may wrap the model, e.g. add adapters), `finish`
    ends it (adapters stay: the job merges them once every stage has run). `share`: the fraction of the run's
    budget it gets (None: the whole budget); `rest`: it gets what the stages before it left."""

    name: str
    lr: float
    prepare: Callable[[nn.Module], nn.Module]
    loss: LossFn
    finish: Callable[[nn.Module], nn.Module] = field(default=lambda m: m)
    share: float | None = None
    rest: bool = False


@dataclass(frozen=True)
class RecipeOptions:
    """The knobs of the recipes (JobOptions carries them; see `build_stages`)."""

    distill_weight: float = 0.0  # liger/lolcats: KL weight added to their cross-entropy
    lr: float | None = None  # LoRA stages (default LORA_LR)
    transfer_lr: float | None = None  # lolcats attention transfer (TRANSFER_LR) and align (ALIGN_LR)
    lora_r: int = 8
    kl_weight: float = 1.0  # distill / staged
    ce_weight: float = 0.0  # distill / staged
    align_metric: str = ALIGN_METRIC
    align_fraction: float = ALIGN_FRACTION  # staged


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
    for m in model.modules():  # the mixers' parameters that train with the adapters (learnable mix, convolutions)
        if isinstance(m, LigerAttention):
            for p in m.core.adapter_parameters():
                p.requires_grad_(True)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the LoRA adapters into the weights and remove them (sharded weights: each rank its own rows)."""
    if not hasattr(model, "merge_and_unload"):
        return model
    return merge_lora_sharded(model) if is_sharded(model) else model.merge_and_unload()


def transfer_mode(model: nn.Module, on: bool, metric: str = "mse") -> None:
    """Attention transfer on or off in every linearized layer, the error measured by `metric`."""
    for m in model.modules():
        if isinstance(m, LigerAttention):
            m.transfer, m.transfer_metric = on, metric
            m.transfer_loss = None


def mixer_lora_targets(model: nn.Module, spec: ArchSpec) -> list[str]:
    """Full module names of q/k/v of the linearized layers only (softmax layers of a hybrid keep none)."""
    return [f"{name}.{t}" for name, m in model.named_modules() if isinstance(m, LigerAttention)
            for t in spec.lora_targets("qkv")]


def ensure_lora(model: nn.Module, targets: list[str], r: int) -> nn.Module:
    """`model` with LoRA adapters on `targets` (added unless a stage before added them), the adapters and the
    mixers' own parameters trainable, everything else frozen."""
    if not hasattr(model, "peft_config"):
        model = add_lora(model, targets, r=r, alpha=2 * r)
    freeze(model)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.requires_grad_(True)
    for p in _own_parameters(model):
        p.requires_grad_(True)
    return model


def _own_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for m in model.modules() if isinstance(m, LigerAttention) for p in m.own_parameters()]


def _attention_transfer_prepare(model: nn.Module) -> nn.Module:
    freeze(model)
    params = _own_parameters(model)
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


def uses_teacher(recipe: str, opts: RecipeOptions) -> bool:
    """Whether the recipe's losses need the teacher's logits."""
    return recipe in ("distill", "staged") or opts.distill_weight > 0


def check_recipe_options(recipe: str, o: RecipeOptions) -> None:
    """ConfigError for a recipe or knob out of range."""
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    for name in ("lr", "transfer_lr"):  # `is None`: an lr of 0 is an error, not "the default"
        if getattr(o, name) is not None:
            _check_finite(name, getattr(o, name), positive=True)
    for name in ("distill_weight", "kl_weight", "ce_weight"):
        _check_finite(name, getattr(o, name), positive=False)
    if recipe in ("distill", "staged") and o.kl_weight == 0 and o.ce_weight == 0:
        raise ConfigError("kl_weight (--kl-weight) and ce_weight (--ce-weight) are both 0: the distill stage would "
                          "have no loss; give one > 0")
    if isinstance(o.lora_r, bool) or not isinstance(o.lora_r, int) or o.lora_r < 1:
        raise ConfigError(f"lora_r (the LoRA rank) must be a whole number >= 1, got {o.lora_r!r}")
    if o.align_metric not in ALIGNMENT_METRICS:
        raise ConfigError(f"align_metric must be one of {', '.join(ALIGNMENT_METRICS)}, got {o.align_metric!r}")
    if not (isinstance(o.align_fraction, (int, float)) and 0 < o.align_fraction < 1):
        raise ConfigError(f"align_fraction must be a number strictly between 0 and 1, got {o.align_fraction!r}")


def build_stages(recipe: str, spec: ArchSpec, teacher: nn.Module | None, o: RecipeOptions) -> list[Stage]:
    """The stages of `recipe` for a model whose attention is laid out as `spec` (LoRA target names);
    `teacher` (called like the original model, e.g. a SharedTeacher) is needed when `uses_teacher`."""
    check_recipe_options(recipe, o)
    lr = LORA_LR if o.lr is None else o.lr
    transfer_lr = TRANSFER_LR if o.transfer_lr is None else o.transfer_lr
    lora_r = o.lora_r
    if uses_teacher(recipe, o) and teacher is None:
        raise ConfigError(f"recipe {recipe!r} needs the teacher's logits; none was given")
    ce: LossFn = DistillLoss(teacher, o.distill_weight) if o.distill_weight > 0 else next_token_loss

    def lora(targets: list[str]) -> Stage:
        return Stage(
            name="lora",
            lr=lr,
            prepare=lambda m: add_lora(m, targets, r=lora_r, alpha=2 * lora_r),
            loss=ce,
        )

    if recipe == "liger":
        return [lora(spec.lora_targets("qkv"))]
    if recipe in ("align", "distill", "staged"):
        return _aligned_stages(recipe, spec, teacher, o)
    return [
        Stage("attention_transfer", transfer_lr, _attention_transfer_prepare, attention_transfer_loss,
              _attention_transfer_finish),
        lora(spec.lora_targets("qkvo")),
    ]


def _aligned_stages(recipe: str, spec: ArchSpec, teacher: nn.Module | None, o: RecipeOptions) -> list[Stage]:
    """The stages of `align`, `distill` and `staged`: one LoRA (q/k/v of the linearized layers) and the
    mixers' own parameters, trained on alignment and/or distillation."""

    def with_lora(m: nn.Module) -> nn.Module:
        return ensure_lora(m, mixer_lora_targets(m, spec), o.lora_r)

    def align_prepare(m: nn.Module) -> nn.Module:
        m = with_lora(m)
        transfer_mode(m, True, o.align_metric)
        return m

    def align_finish(m: nn.Module) -> nn.Module:
        transfer_mode(m, False)
        return m

    align = Stage("align", ALIGN_LR if o.transfer_lr is None else o.transfer_lr, align_prepare, attention_transfer_loss,
                  align_finish, share=o.align_fraction if recipe == "staged" else None)
    distill = Stage("distill", LORA_LR if o.lr is None else o.lr, with_lora,
                    DistillLoss(teacher, o.kl_weight, o.ce_weight), rest=recipe == "staged")
    return {"align": [align], "distill": [distill], "staged": [align, distill]}[recipe]


def count_parameters(params: dict[str, torch.Tensor]) -> int:
    return sum(p.numel() for p in params.values())
