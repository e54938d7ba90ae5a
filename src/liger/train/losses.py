"""Training objectives: next-token cross-entropy, teacher distillation (KL), attention transfer (MSE)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..mixers import LigerAttention

Tensor = torch.Tensor


def next_token_loss(model: nn.Module, batch: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Mean cross-entropy of predicting batch[:, 1:] from batch[:, :-1]. batch: LongTensor [B, L]."""
    loss = model(input_ids=batch, labels=batch, use_cache=False).loss
    return loss, {"ce": loss.item()}


class DistillLoss:
    """`kl_weight` * KL(teacher || student) + `ce_weight` * next-token cross-entropy, per token, temperature 1.

    The teacher (the original softmax model, frozen) sees the same batch without gradients; a SharedTeacher
    (the student in teacher mode) is pointed at the model being trained first."""

    def __init__(self, teacher: nn.Module, kl_weight: float = 1.0, ce_weight: float = 1.0) -> None:
        self.teacher, self.kl_weight, self.ce_weight = teacher, kl_weight, ce_weight

    def __call__(self, model: nn.Module, batch: Tensor) -> tuple[Tensor, dict[str, float]]:
        if hasattr(self.teacher, "set_student"):
            self.teacher.set_student(model)
        with torch.no_grad():
            t_logp = F.log_softmax(self.teacher(input_ids=batch, use_cache=False).logits[:, :-1].float(), -1)
        out = model(input_ids=batch, labels=batch if self.ce_weight else None, use_cache=False)
        s_logp = F.log_softmax(out.logits[:, :-1].float(), -1)
        kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1).mean()
        if not self.ce_weight:
            return self.kl_weight * kl, {"kl": kl.item()}
        return self.ce_weight * out.loss + self.kl_weight * kl, {"ce": out.loss.item(), "kl": kl.item()}


def attention_transfer_loss(model: nn.Module, batch: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Sum over linearized layers of the error (MSE unless set otherwise, see `transfer_mode`) between each mixer's output and the softmax attention's
    (both before o_proj), every layer fed the teacher's inputs. Needs the mixers in transfer mode
    (`liger.train.recipes.transfer_mode`), where each returns the softmax output and records its error."""
    model(input_ids=batch, use_cache=False)
    layers = [m for m in model.modules() if isinstance(m, LigerAttention) and m.transfer_loss is not None]
    loss = torch.stack([m.transfer_loss for m in layers]).sum()
    return loss, {f"{layers[0].transfer_metric}_mean": loss.item() / len(layers)}
