"""BSConv layers and the small building blocks the MobileNets are made of.

``BSConvU`` and ``BSConvS`` follow Haase & Amthor, "Rethinking Depthwise
Separable Convolutions" (CVPR 2020) and the reference package ``bsconv`` 0.4.0:
submodule names and formulas are kept identical so that reference checkpoints
load with ``strict=True`` and give bit-for-bit the same outputs.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn


def orthonormality_penalty(weight: torch.Tensor) -> torch.Tensor:
    """Frobenius norm of W·Wᵀ − I for a 1×1 conv weight seen as a [out, in] matrix."""
    w = weight[:, :, 0, 0]
    wwt = torch.mm(w, w.t())
    eye = torch.eye(wwt.shape[0], device=wwt.device, dtype=wwt.dtype)
    return torch.norm(wwt - eye, p="fro")


class BSConvU(nn.Sequential):
    """Unconstrained blueprint separable convolution: 1×1 pointwise, then k×k depthwise."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, bias: bool = True, padding_mode: str = "zeros",
                 with_bn: bool = False, bn_kwargs: dict[str, Any] | None = None):
        super().__init__()
        self.add_module("pw", nn.Conv2d(in_channels, out_channels, kernel_size=(1, 1), bias=False))
        if with_bn:
            self.add_module("bn", nn.BatchNorm2d(out_channels, **(bn_kwargs or {})))
        self.add_module("dw", nn.Conv2d(out_channels, out_channels, kernel_size=kernel_size,
                                        stride=stride, padding=padding, dilation=dilation,
                                        groups=out_channels, bias=bias, padding_mode=padding_mode))


def bsconv_s_mid_channels(in_channels: int, p: float, min_mid_channels: int) -> int:
    """Width of BSConv-S's low-rank bottleneck: min(in, max(min_mid, ceil(p·in)))."""
    return min(in_channels, max(min_mid_channels, math.ceil(p * in_channels)))


class BSConvS(nn.Sequential):
    """Subspace blueprint separable convolution: low-rank pointwise pair, then k×k depthwise.

    Train it with :meth:`orthonormality_loss` (summed by a model's ``reg_loss``)
    to keep the rows of ``pw1`` orthonormal, as the paper does.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, bias: bool = True, padding_mode: str = "zeros", p: float = 0.25,
                 min_mid_channels: int = 4, with_bn: bool = False,
                 bn_kwargs: dict[str, Any] | None = None):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"BSConvS: p must lie in [0, 1], got {p}")
        mid = bsconv_s_mid_channels(in_channels, p, min_mid_channels)
        bn_kwargs = bn_kwargs or {}
        self.add_module("pw1", nn.Conv2d(in_channels, mid, kernel_size=(1, 1), bias=False))
        if with_bn:
            self.add_module("bn1", nn.BatchNorm2d(mid, **bn_kwargs))
        self.add_module("pw2", nn.Conv2d(mid, out_channels, kernel_size=(1, 1), bias=False))
        if with_bn:
            self.add_module("bn2", nn.BatchNorm2d(out_channels, **bn_kwargs))
        self.add_module("dw", nn.Conv2d(out_channels, out_channels, kernel_size=kernel_size,
                                        stride=stride, padding=padding, dilation=dilation,
                                        groups=out_channels, bias=bias, padding_mode=padding_mode))

    def orthonormality_loss(self) -> torch.Tensor:
        return orthonormality_penalty(self.pw1.weight)


class BackboneClassifier(nn.Module):
    """The zoo's one interface: ``backbone`` (ending in global pooling) and ``classifier``.

    ``forward_features`` returns pooled features [N, C, 1, 1]; ``forward_head`` maps them
    to logits [N, num_classes].
    """

    backbone: nn.Module
    classifier: nn.Module

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class RegLossMixin:
    """Adds ``reg_loss(alpha)``: alpha times the sum of every submodule's orthonormality loss."""

    def reg_loss(self, alpha: float = 0.1) -> torch.Tensor:
        terms = [m.orthonormality_loss() for m in self.modules()  # type: ignore[attr-defined]
                 if m is not self and hasattr(m, "orthonormality_loss")]
        terms = [t for t in terms if t is not None]
        if not terms:
            return torch.zeros(())
        return alpha * torch.stack(terms).sum()


# Activations written with the reference's formulas (not nn.Hardswish) so outputs
# match reference checkpoints bit for bit; ONNX export turns them into plain ops.
class HSwish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * nn.functional.relu6(x + 3.0) / 6.0


class HSigmoid(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.relu6(x + 3.0) / 6.0


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "relu6": lambda: nn.ReLU6(inplace=True),
    "hswish": HSwish,
    "hsigmoid": HSigmoid,
    "sigmoid": nn.Sigmoid,
}


def make_activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}") from None


class ConvBlock(nn.Module):
    """Conv → optional BN → optional activation (submodules ``conv``, ``bn``, ``activation``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, bias: bool = False, use_bn: bool = True,
                 activation: str | None = "relu"):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=kernel_size // 2, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(out_channels) if use_bn else None
        self.activation = make_activation(activation) if activation is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class SEUnit(nn.Module):
    """Squeeze-and-excitation with 1×1 convolutions, as in MobileNetV3."""

    def __init__(self, channels: int, squeeze_factor: int = 4):
        super().__init__()
        squeezed = channels // squeeze_factor
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv1 = nn.Conv2d(channels, squeezed, 1, bias=True)
        self.activation1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(squeezed, channels, 1, bias=True)
        self.activation2 = HSigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.activation2(self.conv2(self.activation1(self.conv1(self.pool(x)))))
        return x * s


class Classifier(nn.Module):
    """1×1 convolution on pooled features [N, C, 1, 1], squeezed to logits [N, num_classes].

    Squeeze, not flatten: ONNX ``Flatten`` is not taken by CoreML's ML Program
    execution provider, ``Squeeze`` is, at fixed and at dynamic batch alike.
    """

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).squeeze(3).squeeze(2)
