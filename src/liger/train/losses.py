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
    """Cross-entropy plus `weight` * KL(teacher || student) per token, at temperature 1.

    The teacher (the original softmax model, frozen, eval mode) sees the same batch without gradients."""

    def __init__(self, teacher: nn.Module, weight: float = 1.0) -> None:
        self.teacher, self.weight = teacher, weight

    def __call__(self, model: nn.Module, batch: Tensor) -> tuple[Tensor, dict[str, float]]:
        with torch.no_grad():
            t_logits = self.teacher(input_ids=batch, use_cache=False).logits[:, :-1].float()
        out = model(input_ids=batch, labels=batch, use_cache=False)
        s_logp = F.log_softmax(out.logits[:, :-1].float(), -1)
        t_logp = F.log_softmax(t_logits, -1)
        kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1).mean()
        return out.loss + self.weight * kl, {"ce": out.loss.item(), "kl": kl.item()}


def attention_transfer_loss(model: nn.Module, batch: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Sum over linearized layers of the MSE between each mixer's output and the softmax attention's
    (both before o_proj), every layer fed the teacher's inputs. Needs the mixers in transfer mode
    (`liger.train.recipes.transfer_mode`), where each returns the softmax output and records its error."""
    model(input_ids=batch, use_cache=False)
    errors = [m.transfer_loss for m in model.modules() if isinstance(m, LigerAttention) and m.transfer_loss is not None]
    loss = torch.stack(errors).sum()
    return loss, {"mse_mean": loss.item() / len(errors)}
