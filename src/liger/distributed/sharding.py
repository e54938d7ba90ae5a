"""FSDP for models that do not fit one device: the frozen weights are sharded over all ranks with PyTorch's
FSDP2 (`torch.distributed.fsdp.fully_shard`, one unit per decoder layer plus the root for the embeddings,
final norm and output layer); they are all-gathered layer by layer in the forward and backward passes.

What trains stays whole on every rank: LoRA adapters (added after sharding, so FSDP does not manage them)
and the mixers' own parameters (feature maps, mixing weights, convolutions: `ignored_params`). They are
under 1% of the bytes, and `liger.train.loop.Trainer` broadcasts them, all-reduces their gradients and
writes them from rank 0 exactly as in plain data parallelism, so checkpoints and `--resume` are the same.

Everything that runs a forward pass on a sharded model must run it on every rank (the all-gathers are
collectives): see `liger.train.job.perplexity` for the held-out evaluation split over ranks.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..arch import decoder_layers
from .runtime import ParallelContext

Tensor = torch.Tensor


def is_sharded(model: nn.Module) -> bool:
    """Whether any parameter of `model` is a DTensor (sharded by `shard_frozen`)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def shard_frozen(model: nn.Module, par: ParallelContext, keep: Iterable[nn.Parameter] = (),
                 from_rank0: bool = False) -> nn.Module:
    """Shard `model`'s parameters over all `par.world` ranks (FSDP2, in place), except those in `keep`, which
    stay whole and replicated. The shards go to `par.device`; so do the kept parameters and every buffer.
    Returns `model` (its class becomes FSDP's subclass of it; its API is unchanged).

    from_rank0: only rank 0 holds the weights; the other ranks built the model with its parameters on the
    meta device (`liger.models.load_model(..., empty=True)`), so a node holds one copy of the model, not
    one per process. Rank 0 broadcasts the weights tensor by tensor and each rank keeps its shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    keep = set(keep)
    full = model.state_dict() if from_rank0 and par.is_main else {}  # references, not copies
    with par.guard("sharding the model (FSDP)"):
        mesh = init_device_mesh(par.device.type, (par.world,))
        for layer in decoder_layers(model):
            fully_shard(layer, mesh=mesh, ignored_params=keep & set(layer.parameters()) or None)
        fully_shard(model, mesh=mesh, ignored_params=keep or None)
        if from_rank0:
            if any(p.is_meta for p in model.parameters()):  # allocate the shards (buffers are real: keep them)
                buffers = {n: b.clone() for n, b in model.named_buffers()}
                model.to_empty(device=par.device)
                with torch.no_grad():
                    for n, b in model.named_buffers():
                        b.copy_(buffers[n])
            set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    del full
    place_replicated(model, par.device)
    return model


def place_replicated(model: nn.Module, device: torch.device) -> None:
    """Move the parameters FSDP does not manage (not DTensors) and all buffers to `device`, in place."""
    from torch.distributed.tensor import DTensor

    with torch.no_grad():
        for p in model.parameters():
            if not isinstance(p, DTensor) and p.device != device:
                p.data = p.data.to(device)
        for mod in model.modules():
            for name, b in mod._buffers.items():
                if b is not None and b.device != device:
                    mod._buffers[name] = b.to(device)


def merge_lora_sharded(model: nn.Module) -> nn.Module:
    """peft's merge_and_unload for a model whose base weights are sharded: each rank adds its own rows of
    the (replicated) LoRA update W += scale * B @ A to its shard, then the adapters are removed. peft's own
    merge cannot: it adds a full tensor to a DTensor."""
    from peft.tuners.lora import LoraLayer
    from torch.distributed.tensor import DTensor, distribute_tensor

    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, LoraLayer):
                continue
            weight = module.get_base_layer().weight
            for adapter in module.active_adapters:
                if adapter not in module.lora_A:
                    continue
                delta = module.get_delta_weight(adapter).to(weight.dtype)
                if isinstance(weight, DTensor):  # this rank's rows, sliced locally (no communication)
                    part = distribute_tensor(delta, weight.device_mesh, weight.placements, src_data_rank=None)
                    weight.to_local().add_(part.to_local())
                else:
                    weight.add_(delta)
    return model.unload()


def full_state_dict(model: nn.Module, par: ParallelContext) -> dict[str, Tensor]:
    """The whole model's state dict on rank 0, on the CPU (an all-gather: call it on every rank); other
    ranks get an empty dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    with par.guard("gathering the sharded model"):
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
