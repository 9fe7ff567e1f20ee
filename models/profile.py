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
                lambda m, i, o, name=name: isinstance(o, torch.Tensor) and shapes.__setitem__(name, list(o.shape))))
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


def _conv_kind(in_ch: int, out_ch: int, groups: int, kernel: tuple[int, ...]) -> str:
    if groups == in_ch == out_ch and groups > 1:
        return "depthwise"
    if groups > 1:
        return "grouped"
    return "pointwise 1x1" if all(k == 1 for k in kernel) else "plain kxk"


def conv_inventory(model: nn.Module) -> dict:
    """Which convolutions are BSConv-U / BSConv-S and which plain ones remain.

    Modules are recognised by class name, so the reference package's ``BSConvU``/``BSConvS``
    count as well as ours; the convolutions inside a BSConv are part of it. A model loaded
    from a program file has no modules left: its graph's convolutions are classified instead.
    """
    counts: dict[str, int] = {}
    plain: list[str] = []
    graph = getattr(getattr(model, "program", None), "graph", None)
    if graph is not None:
        for node in graph.nodes:
            target = str(node.target)
            if node.op != "call_function" or not ("aten.convolution" in target or "aten.conv2d" in target):
                continue
            w = getattr(node.args[1], "meta", {}).get("val")
            if w is None or w.ndim != 4:
                continue
            groups_at = 8 if "convolution" in target else 6
            groups = int(node.args[groups_at]) if len(node.args) > groups_at else int(node.kwargs.get("groups", 1))
            kind = _conv_kind(int(w.shape[1]) * groups, int(w.shape[0]), groups, tuple(w.shape[2:]))
            counts[kind] = counts.get(kind, 0) + 1
            if kind == "plain kxk":
                plain.append(node.name)
        return {"counts": counts, "plain": plain, "from": "graph"}
    inside: set[str] = set()
    for name, m in model.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue
        cls = type(m).__name__
        if cls in ("BSConvU", "BSConvS"):
            kind = "BSConv-U" if cls == "BSConvU" else "BSConv-S"
            inside.add(name)
        elif isinstance(m, nn.Conv2d):
            kind = _conv_kind(m.in_channels, m.out_channels, m.groups, tuple(m.kernel_size))
            if kind == "plain kxk":
                plain.append(name)
        else:
            continue
        counts[kind] = counts.get(kind, 0) + 1
    return {"counts": counts, "plain": plain, "from": "modules"}


def describe_models(pattern: str = "*", *, profile: bool = False) -> list[dict]:
    """The zoo models matching ``pattern`` as plain rows (name, family, input size, classes, whether the
    reference package has it, description), with parameters and MACs at the model's size if ``profile``."""
    from .registry import create_model, get_entry, list_models
    rows = []
    for name in list_models(pattern):
        e = get_entry(name)
        row = {"name": e.name, "family": e.family, "input_size": e.default_size,
               "num_classes": e.default_num_classes, "in_reference": e.in_reference,
               "description": e.description}
        if profile:
            p = profile_model(create_model(name))
            row.update(params=p.params, macs=p.macs)
        rows.append(row)
    return rows
