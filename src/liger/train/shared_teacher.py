"""The teacher without a second copy of the model: the student itself, its mixers switched to the host's
softmax attention and its LoRA adapters off.

While a recipe trains, the student differs from the original model only in its attention layers: each
linearized layer's mixer (whose own parameters, if any, are new) and the LoRA adapters on its projections;
every base weight is the original's, frozen. So the original model's forward is the student's with every
`LigerAttention` in teacher mode (`softmax_only`: the host's causal softmax attention from its own
projection weights) and peft's adapters disabled (this also restores softmax layers kept in a hybrid). That
costs one teacher forward per use and no memory for a second model. It stops being the teacher once the
adapters are merged into the weights (`SharedTeacher` checks the linearized layers' projection weights before
every forward), or if a base weight trains (no recipe trains one).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..mixers import LigerAttention


def _host_checksum(model: nn.Module) -> torch.Tensor:
    """Sum of each projection weight of the linearized layers' hosts (without adapters), to notice a merge."""
    weights = [m._proj(n, True).weight.detach() for m in model.modules() if isinstance(m, LigerAttention)
               for n in m.spec.projections() if hasattr(m._proj(n, True), "weight")]
    # a sharded weight (FSDP's DTensor): this rank's shard
    sums = [getattr(w, "to_local", lambda w=w: w)().float().sum().cpu() for w in weights]
    return torch.stack(sums) if sums else torch.zeros(0)


class SharedTeacher(nn.Module):
    """Called like the original model (`teacher(input_ids=..., use_cache=False).logits`), computed by the
    student `model` in teacher mode, without gradients. Inputs must be whole unpadded sequences."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self._student = [model]  # a list: not registered as a submodule (the teacher owns no parameters)
        self._checksum = _host_checksum(model)

    @property
    def student(self) -> nn.Module:
        return self._student[0]

    @property
    def config(self):
        return self.student.config

    def set_student(self, model: nn.Module) -> None:
        """Follow the student when a stage wraps it (adds adapters) or unwraps it."""
        self._student[0] = model

    def parameters(self, recurse: bool = True):  # the device of the inputs, for callers that ask
        return self.student.parameters(recurse)

    @torch.no_grad()
    def forward(self, *args, **kwargs):
        model = self.student
        if not torch.equal(_host_checksum(model), self._checksum):
            raise RuntimeError("the student's projection weights changed (LoRA adapters merged?): it is no longer "
                               "its teacher; load the original model as the teacher")
        mixers = [m for m in model.modules() if isinstance(m, LigerAttention)]
        adapters_off = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
        modes = [(m.transfer, m.softmax_only) for m in mixers]
        was_training = model.training
        try:
            for m in mixers:
                m.transfer, m.softmax_only = False, True
            model.eval()  # no dropout in the teacher
            with adapters_off:
                return model(*args, **{**kwargs, "use_cache": False})
        finally:
            for m, (transfer, softmax_only) in zip(mixers, modes):
                m.transfer, m.softmax_only = transfer, softmax_only
            model.train(was_training)
