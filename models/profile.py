"""Parameters and MACs per layer and in total, counted by ``torch.utils.flop_counter``."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass
class LayerProfile:
    name: str
    type: str
    params: int
    macs: int
    output_shape: list[int]


@dataclass
class ModelProfile:
    arch: str
    input_size: int
    params: int
    macs: int
    layers: list[LayerProfile]

    def to_dict(self) -> dict:
        return asdict(self)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def profile_model(model: nn.Module, input_size: int | None = None) -> ModelProfile:
    """Profile leaf layers that hold weights (convs, BN, linear) plus totals.

    MACs are FLOPs / 2 as counted by torch's own counter (convolutions and
    matrix products; element-wise ops count zero, as is usual for MACs).
    """
    spec = model.input_spec
    size = input_size or spec.size
    shapes: dict[str, list[int]] = {}
    hooks = []
    names = {m: n for n, m in model.named_modules()}
    for module, name in names.items():
        if name and not list(module.children()):
            hooks.append(module.register_forward_hook(
                lambda m, i, o, name=name: shapes.__setitem__(name, list(o.shape))))
    x = torch.zeros(1, spec.channels, size, size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False, depth=None) as counter:
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    per_module = counter.get_flop_counts()
    root = type(model).__name__
    layers = []
    for name, module in model.named_modules():
        if not name or list(module.children()) or name not in shapes:
            continue
        params = sum(p.numel() for p in module.parameters(recurse=False))
        flops = sum(per_module.get(f"{root}.{name}", {}).values())
        if params == 0 and flops == 0:
            continue
        layers.append(LayerProfile(name, type(module).__name__, params, flops // 2, shapes[name]))
    return ModelProfile(arch=getattr(model, "arch", root), input_size=size, params=count_params(model),
                        macs=counter.get_total_flops() // 2, layers=layers)
