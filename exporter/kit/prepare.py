"""Make a trained model ready to export: eval mode, no grad, export-friendly modules.

The input BatchNorm (``data_bn``, the reference's normalisation convention)
becomes an explicit per-channel multiply-add. A BatchNormalization on the input
cannot be folded into the first convolution exactly (that convolution pads its
input with zeros *after* normalisation), so leaving it as a BN would keep a
BatchNormalization node in every simplified graph; a Mul/Add is what it is.
The hard-swish and hard-sigmoid activations, written in eager mode with the
reference's formulas (four element-wise ops each), become ``nn.Hardswish`` and
``nn.Hardsigmoid``: one ONNX ``HardSwish``/``HardSigmoid`` node each (one MIL op
in CoreML). The same function, rounded differently by ~1e-7; fewer nodes to run,
and INT8 graphs lose a quantise/dequantise pair around each of the four ops.
The BSConv-S orthonormality regulariser only matters for training and plays no
part here.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class ChannelAffine(nn.Module):
    """x · scale + shift, per channel: an eval-mode BatchNorm2d written out."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        inv = torch.rsqrt(bn.running_var + bn.eps)
        weight = bn.weight if bn.affine else torch.ones_like(inv)
        bias = bn.bias if bn.affine else torch.zeros_like(inv)
        scale = (weight * inv).detach()
        self.register_buffer("scale", scale.reshape(1, -1, 1, 1))
        self.register_buffer("shift", (bias - bn.running_mean * scale).detach().reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def prepare_for_export(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode, gradients off, data_bn written as Mul/Add."""
    m = copy.deepcopy(model).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    from ...models.layers import HSigmoid, HSwish
    for name, module in list(m.named_modules()):
        if isinstance(module, (HSwish, HSigmoid)):
            parent_name, _, attr = name.rpartition(".")
            parent = m.get_submodule(parent_name) if parent_name else m
            setattr(parent, attr, nn.Hardswish() if isinstance(module, HSwish) else nn.Hardsigmoid())
    backbone = getattr(m, "backbone", None)
    if backbone is not None and isinstance(getattr(backbone, "data_bn", None), nn.BatchNorm2d):
        backbone.data_bn = ChannelAffine(backbone.data_bn)
    return m


def example_input(channels: int, size: int, batch: int, seed: int = 0) -> torch.Tensor:
    """A fixed example input in [0, 1] (tracing only records shapes, but keep it reproducible)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, size, size, generator=g)
