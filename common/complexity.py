"""Parameter and multiply-accumulate (MAC) counts of a model, measured by running it once.

    from common.complexity import profile, profile_table
    profile(model, (1, 1, 28, 28))          # Profile(parameters=..., macs=...)
    print(profile_table({"LeNet-5": lenet, "VGG-11": vgg}, (1, 1, 28, 28)))

MACs are counted for the layers that dominate them, recognised by their
torch.nn names (so both ``torch.nn`` and ``common.nn`` layers count):
``Conv2d`` (out elements x in_channels/groups x kH x kW), ``Linear``
(out elements x in_features), and any module with an ``extra_macs(inputs,
output)`` method adds what it returns: the products inside an attention
layer that no ``Linear`` sees (``common.models.swin``'s window attention
does this). ``MultiheadAttention`` has no such method yet and is not counted
(say so where it matters). Normalisation, activation, pooling and additions
are left out: they are a few percent of the total in the CNNs of stages 2-3.
Counts are per input batch given; pass a batch of 1 for "per image".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn

__all__ = ["Profile", "profile", "profile_table"]


@dataclass
class Profile:
    parameters: int
    macs: int

    def __str__(self) -> str:
        return f"{self.parameters:,} parameters, {self.macs / 1e6:,.2f} M MACs"


def _macs_of(module: nn.Module, output: torch.Tensor) -> int:
    name = type(module).__name__
    if name == "Conv2d":
        kh, kw = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kh * kw
    if name == "Linear":
        return output.numel() * module.in_features
    return 0


def _counted(module: nn.Module) -> bool:
    return type(module).__name__ in ("Conv2d", "Linear") or callable(getattr(module, "extra_macs", None))


@torch.no_grad()
def profile(model: nn.Module, input_shape: Sequence[int]) -> Profile:
    """Parameters of ``model`` and MACs of one forward pass on zeros of ``input_shape`` (eval mode)."""
    total = [0]

    def hook(module, inputs, output):
        total[0] += _macs_of(module, output)
        if callable(getattr(module, "extra_macs", None)):
            total[0] += int(module.extra_macs(inputs, output))

    handles = [m.register_forward_hook(hook) for m in model.modules() if _counted(m)]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(torch.zeros(*input_shape, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return Profile(parameters=sum(p.numel() for p in model.parameters()), macs=total[0])


def profile_table(models: Mapping[str, nn.Module], input_shape: Sequence[int]) -> str:
    """A markdown table: model, parameters, MACs per forward pass of ``input_shape``."""
    lines = [f"| model | parameters | MACs (input {tuple(input_shape)}) |", "|---|---:|---:|"]
    for name, model in models.items():
        p = profile(model, input_shape)
        lines.append(f"| {name} | {p.parameters:,} | {p.macs / 1e6:,.2f} M |")
    return "\n".join(lines)
