"""MobileNetV1, V2 and V3 (small, large) with BSConv-U and BSConv-S variants.

The architecture tables are typed rows (one :class:`Unit` per block, grouped in
:class:`Stage` rows) copied from the reference package ``bsconv`` 0.4.0, and the
names and state_dict keys are the reference's, so a checkpoint trained with
``bsconv.pytorch.get_model`` loads here with ``strict=True``.

Variants (the last part of a name):

* none — the baseline depthwise separable network.
* ``bsconvu`` — V1 (as in the reference): each depthwise-separable unit becomes
  ``Sequential(BSConvU(in, out, 3), BatchNorm, ReLU)``. V2/V3 (added here): each
  bottleneck's expansion 1×1 and its k×k depthwise become one ``BSConvU(in, mid, k)``
  (keys ``bsconv.pw``/``bsconv.dw``), followed by BatchNorm and the activation;
  the BatchNorm and activation the baseline had between them are dropped, since a
  blueprint's pointwise/depthwise pair is linear. SE and the linear projection stay.
* ``bsconvs_p1d6`` — V2/V3 (as in the reference): the network is unchanged and a
  bottleneck's linear projection, read together with the next expansion, is a
  BSConv-S with p = 1/6; training adds the orthonormality penalty of each
  projection weight (``model.reg_loss``). V1 (added here): each unit becomes
  ``Sequential(BSConvS(in, out, 3, p=1/6), BatchNorm, ReLU)``.

Widths scale channels with ``int(c · w)`` (not ``_make_divisible``) because the
reference does, and the checkpoints must fit.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import partial

import torch
from torch import nn

from .layers import BackboneClassifier, BSConvS, BSConvU, Classifier, ConvBlock, RegLossMixin, SEUnit, make_activation
from .layers import orthonormality_penalty
from .registry import register_model

BSCONV_S_P = 1.0 / 6.0


@dataclass(frozen=True)
class Unit:
    out: int
    mid: int = 0          # expansion width (V2/V3 bottlenecks)
    se: bool = False


@dataclass(frozen=True)
class Stage:
    units: tuple[Unit, ...]
    stride: int           # ImageNet flavour: stride of the stage's first unit
    cifar_stride: int     # CIFAR flavour
    kernel: int = 3
    activation: str = "relu"


@dataclass(frozen=True)
class Arch:
    version: str
    init_channels: int
    init_activation: str
    stages: tuple[Stage, ...]
    final_channels: int = 0        # 0: no final 1×1 conv (V1)
    final_se: bool = False
    widths: tuple[str, ...] = ("w1", "w3d4", "w1d2", "w1d4")


def _units(outs, mids=None, ses=None) -> tuple[Unit, ...]:
    mids = mids or [0] * len(outs)
    ses = ses or [0] * len(outs)
    return tuple(Unit(o, m, bool(s)) for o, m, s in zip(outs, mids, ses))


V1 = Arch("v1", 32, "relu", (
    Stage(_units([64]), 1, 1),
    Stage(_units([128, 128]), 2, 1),
    Stage(_units([256, 256]), 2, 2),
    Stage(_units([512] * 6), 2, 2),
    Stage(_units([1024, 1024]), 2, 2),
))

V2 = Arch("v2", 32, "relu6", (
    Stage(_units([16], [32]), 1, 1, activation="relu6"),
    Stage(_units([24, 24], [96, 144]), 2, 1, activation="relu6"),
    Stage(_units([32, 32, 32], [144, 192, 192]), 2, 2, activation="relu6"),
    Stage(_units([64, 64, 64, 64, 96, 96, 96], [192, 384, 384, 384, 384, 576, 576]), 2, 2,
          activation="relu6"),
    Stage(_units([160, 160, 160, 320], [576, 960, 960, 960]), 2, 2, activation="relu6"),
), final_channels=1280)

V3_SMALL = Arch("v3_small", 16, "hswish", (
    Stage(_units([16], [16], [1]), 2, 1, 3, "relu"),
    Stage(_units([24, 24], [72, 88]), 2, 2, 3, "relu"),
    Stage(_units([40, 40, 40, 48, 48], [96, 240, 240, 120, 144], [1] * 5), 2, 2, 5, "hswish"),
    Stage(_units([96, 96, 96], [288, 576, 576], [1] * 3), 2, 2, 5, "hswish"),
), final_channels=576, final_se=True, widths=("w1", "w3d4", "w1d2", "w7d20"))

V3_LARGE = Arch("v3_large", 16, "hswish", (
    Stage(_units([16], [16]), 1, 1, 3, "relu"),
    Stage(_units([24, 24], [64, 72]), 2, 1, 3, "relu"),
    Stage(_units([40, 40, 40], [72, 120, 120], [1, 1, 1]), 2, 2, 5, "relu"),
    Stage(_units([80, 80, 80, 80, 112, 112], [240, 200, 184, 184, 480, 672], [0, 0, 0, 0, 1, 1]),
          2, 2, 3, "hswish"),
    Stage(_units([160, 160, 160], [672, 960, 960], [1, 1, 1]), 2, 2, 5, "hswish"),
), final_channels=960, widths=("w1", "w3d4", "w1d2", "w7d20"))

ARCHS = {a.version: a for a in (V1, V2, V3_SMALL, V3_LARGE)}
VARIANTS = ("", "bsconvu", "bsconvs_p1d6")
REFERENCE_VARIANTS = {"v1": ("", "bsconvu"), "v2": ("", "bsconvs_p1d6"),
                      "v3_small": ("", "bsconvs_p1d6"), "v3_large": ("", "bsconvs_p1d6")}


# --------------------------------------------------------------------------- blocks

class DepthwiseSeparableConvBlock(nn.Module):
    """Baseline MobileNetV1 unit: 3×3 depthwise then 1×1 pointwise, each with BN and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv_dw = ConvBlock(in_channels, in_channels, 3, stride=stride, groups=in_channels)
        self.conv_pw = ConvBlock(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_pw(self.conv_dw(x))


def _v1_unit(variant: str, in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if variant == "":
        return DepthwiseSeparableConvBlock(in_channels, out_channels, stride)
    if variant == "bsconvu":
        conv = BSConvU(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
    else:
        conv = BSConvS(in_channels, out_channels, 3, stride=stride, padding=1, bias=False, p=BSCONV_S_P)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class LinearBottleneck(nn.Module):
    """Inverted residual: 1×1 expand, k×k depthwise, optional SE, linear 1×1 projection.

    With ``orthonormal_projection`` (the BSConv-S reading of V2/V3) the projection
    weight contributes an orthonormality penalty to ``reg_loss``.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int,
                 activation: str = "relu6", kernel_size: int = 3, use_se: bool = False,
                 orthonormal_projection: bool = False):
        super().__init__()
        self.use_res_skip = in_channels == out_channels and stride == 1
        self.orthonormal_projection = orthonormal_projection
        self.conv1 = ConvBlock(in_channels, mid_channels, 1, activation=activation)
        self.conv2 = ConvBlock(mid_channels, mid_channels, kernel_size, stride=stride,
                               groups=mid_channels, activation=activation)
        self.se_unit = SEUnit(mid_channels) if use_se else None
        self.conv3 = ConvBlock(mid_channels, out_channels, 1, activation=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        if self.se_unit is not None:
            y = self.se_unit(y)
        y = self.conv3(y)
        return y + x if self.use_res_skip else y

    def orthonormality_loss(self) -> torch.Tensor | None:
        return orthonormality_penalty(self.conv3.conv.weight) if self.orthonormal_projection else None


class BSConvUBottleneck(nn.Module):
    """V2/V3 bottleneck whose expansion and depthwise form one BSConv-U (see module docstring)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int,
                 activation: str = "relu6", kernel_size: int = 3, use_se: bool = False):
        super().__init__()
        self.use_res_skip = in_channels == out_channels and stride == 1
        self.bsconv = BSConvU(in_channels, mid_channels, kernel_size, stride=stride,
                              padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(mid_channels)
        self.activation = make_activation(activation)
        self.se_unit = SEUnit(mid_channels) if use_se else None
        self.conv3 = ConvBlock(mid_channels, out_channels, 1, activation=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.activation(self.bn(self.bsconv(x)))
        if self.se_unit is not None:
            y = self.se_unit(y)
        y = self.conv3(y)
        return y + x if self.use_res_skip else y


def _bottleneck(variant: str, in_channels: int, mid: int, out: int, stride: int,
                activation: str, kernel: int, se: bool) -> nn.Module:
    if variant == "bsconvu":
        return BSConvUBottleneck(in_channels, mid, out, stride, activation, kernel, se)
    return LinearBottleneck(in_channels, mid, out, stride, activation, kernel, se,
                            orthonormal_projection=(variant == "bsconvs_p1d6"))


# --------------------------------------------------------------------------- network

class MobileNet(RegLossMixin, BackboneClassifier):
    """A MobileNet: ``backbone`` (ending in global pooling) and ``classifier``.

    ``forward_features`` returns pooled features [N, C, 1, 1]; ``forward_head``
    maps them to logits [N, num_classes].
    """

    def __init__(self, arch: Arch, *, num_classes: int, width: float, cifar: bool, variant: str,
                 in_channels: int = 3):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
        self.version = arch.version
        self.variant = variant
        self.width = width
        self.cifar = cifar

        def scale(c: int) -> int:
            return int(c * width)

        init_stride = 1 if cifar else 2
        bb = nn.Sequential()
        bb.add_module("data_bn", nn.BatchNorm2d(in_channels))
        c = scale(arch.init_channels)
        bb.add_module("init_conv", ConvBlock(in_channels, c, 3, stride=init_stride,
                                             activation=arch.init_activation))
        self.total_stride = init_stride
        for si, stage in enumerate(arch.stages, start=1):
            seq = nn.Sequential()
            for ui, unit in enumerate(stage.units, start=1):
                stride = (stage.cifar_stride if cifar else stage.stride) if ui == 1 else 1
                self.total_stride *= stride
                out = scale(unit.out)
                if arch.version == "v1":
                    block = _v1_unit(variant, c, out, stride)
                else:
                    block = _bottleneck(variant, c, scale(unit.mid), out, stride,
                                        stage.activation, stage.kernel, unit.se)
                seq.add_module(f"unit{ui}", block)
                c = out
            bb.add_module(f"stage{si}", seq)
        if arch.version == "v1":
            bb.add_module("global_pool", nn.AdaptiveAvgPool2d(1))
        else:
            final = arch.final_channels * width if width > 1.0 else arch.final_channels
            final = int(final)
            name = "final_conv" if arch.version == "v2" else "final_conv1"
            bb.add_module(name, ConvBlock(c, final, 1, activation=arch.init_activation))
            c = final
            if arch.final_se:
                bb.add_module("final_se", SEUnit(c))
            bb.add_module("global_pool" if arch.version == "v2" else "final_pool", nn.AdaptiveAvgPool2d(1))
        self.backbone = bb
        self.classifier = Classifier(c, num_classes)
        self.num_features = c
        self._init_params()

    def _init_params(self) -> None:
        for m in self.backbone.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.xavier_normal_(self.classifier.conv.weight, gain=1.0)
        nn.init.zeros_(self.classifier.conv.bias)


# --------------------------------------------------------------------------- registry

def parse_width(token: str) -> float:
    """``w3d4`` → 0.75, ``w1`` → 1.0."""
    num, _, den = token[1:].partition("d")
    return float(Fraction(int(num), int(den) if den else 1))


def _build(num_classes: int, *, version: str, width: float, cifar: bool, variant: str) -> MobileNet:
    return MobileNet(ARCHS[version], num_classes=num_classes, width=width, cifar=cifar, variant=variant)


def _register_zoo() -> None:
    for version, arch in ARCHS.items():
        for wtoken in arch.widths:
            for variant in VARIANTS:
                for cifar in (False, True):
                    name = f"{'cifar_' if cifar else ''}mobilenet{version}_{wtoken}"
                    name += f"_{variant}" if variant else ""
                    kind = {"": "depthwise separable", "bsconvu": "BSConv-U",
                            "bsconvs_p1d6": "BSConv-S p=1/6"}[variant]
                    flavour = "CIFAR 32x32" if cifar else "ImageNet 224x224"
                    register_model(
                        name, family=f"mobilenet{version}", default_size=32 if cifar else 224,
                        default_num_classes=10 if cifar else 1000,
                        in_reference=variant in REFERENCE_VARIANTS[version],
                        description=f"MobileNet{version.upper().replace('_', '-').replace('SMALL', 'small').replace('LARGE', 'large')} {wtoken}, {kind}, {flavour}",
                    )(partial(_build, version=version, width=parse_width(wtoken), cifar=cifar,
                              variant=variant))


_register_zoo()
