"""ResNets, pre-activation ResNets and wide ResNets, plain or with BSConv-U / BSConv-S.

The names, module tree and state_dict keys are those of the reference package
``bsconv`` 0.4.0 (``bsconv.pytorch.resnet``), so its checkpoints load here with
``strict=True`` and give the same outputs:

* ImageNet (224×224, 7×7 stem and max-pool): ``resnet{10,18,26,34,68,102}`` and
  ``preresnet…``, stage widths 64/128/256/512;
* CIFAR (32×32, 3×3 stem): ``cifar_resnet{20,56,110,302,602}`` and
  ``cifar_preresnet…``, widths 16/32/64; ``cifar_wrn{16,28,40}_{k}``, the
  pre-activation network with its stage widths times ``k``.

Each name has a plain form and the two the reference builds through its
replacers: ``_bsconvu`` (every 3×3/5×5 convolution with groups=1 becomes a
``BSConvU``, no BatchNorm inside) and ``_bsconvs_p1d6`` (a ``BSConvS`` with
p = 1/6 and BatchNorm after each pointwise layer; training adds its
orthonormality penalty through ``model.reg_loss``). The 7×7 ImageNet stem and the
1×1 projections stay plain convolutions, as in the reference.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from .layers import BackboneClassifier, Classifier, ConvBlock, RegLossMixin
from .registry import register_model
from .replace import replace_convs

#: what the reference's replacers touch: k×k convolutions with groups=1 for these k
REPLACED_KERNELS = (3, 5)
BSCONV_S_P = 1.0 / 6.0


@dataclass(frozen=True)
class Depth:
    """One row of the reference's ``units_per_stage`` table."""

    name: str                      # resnet18, cifar_resnet56, cifar_wrn16
    units: tuple[int, ...]         # residual units per stage


@dataclass(frozen=True)
class Flavour:
    """What differs between the ImageNet and the CIFAR networks."""

    prefix: str
    stage_channels: tuple[int, ...]
    stem_channels: int
    large_stem: bool               # 7×7 stride-2 conv + 3×3 max-pool, else a 3×3 stride-1 conv
    size: int
    num_classes: int


IMAGENET = Flavour("", (64, 128, 256, 512), 64, True, 224, 1000)
CIFAR = Flavour("cifar_", (16, 32, 64), 16, False, 32, 10)

IMAGENET_DEPTHS = (
    Depth("resnet10", (1, 1, 1, 1)), Depth("resnet18", (2, 2, 2, 2)), Depth("resnet26", (3, 3, 3, 3)),
    Depth("resnet34", (3, 4, 6, 3)), Depth("resnet68", (3, 4, 23, 3)), Depth("resnet102", (3, 8, 36, 3)),
)
CIFAR_DEPTHS = (
    Depth("resnet20", (3, 3, 3)), Depth("resnet56", (9, 9, 9)), Depth("resnet110", (18, 18, 18)),
    Depth("resnet302", (50, 50, 50)), Depth("resnet602", (100, 100, 100)),
)
WRN_DEPTHS = (Depth("wrn16", (2, 2, 2)), Depth("wrn28", (4, 4, 4)), Depth("wrn40", (6, 6, 6)))
#: widening factors registered by name (the reference parses any integer k)
WRN_WIDTHS = (2, 4, 8, 10)
VARIANTS = ("", "bsconvu", "bsconvs_p1d6")


# --------------------------------------------------------------------------- blocks

class StemLarge(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = ConvBlock(in_channels, out_channels, 7, stride=2)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x))


class StemSmall(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, preact: bool):
        super().__init__()
        self.conv = ConvBlock(in_channels, out_channels, 3, use_bn=not preact,
                              activation=None if preact else "relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class PostActivation(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(x))


class BasicUnit(nn.Module):
    """conv3×3-BN-ReLU, conv3×3-BN, plus the (projected) input, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.use_projection = in_channels != out_channels or stride != 1
        self.conv1 = ConvBlock(in_channels, out_channels, 3, stride=stride)
        self.conv2 = ConvBlock(out_channels, out_channels, 3, activation=None)
        if self.use_projection:
            self.projection = ConvBlock(in_channels, out_channels, 1, stride=stride, activation=None)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.projection(x) if self.use_projection else x
        return self.relu(self.conv2(self.conv1(x)) + residual)


class PreactUnit(nn.Module):
    """BN-ReLU first; the projection (when there is one) reads the activated input."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.use_projection = in_channels != out_channels or stride != 1
        self.bn = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = ConvBlock(in_channels, out_channels, 3, stride=stride)
        self.conv2 = ConvBlock(out_channels, out_channels, 3, use_bn=False, activation=None)
        if self.use_projection:
            self.projection = ConvBlock(in_channels, out_channels, 1, stride=stride, use_bn=False,
                                        activation=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_projection:
            x = self.relu(self.bn(x))
            residual = self.projection(x)
        else:
            residual = x
            x = self.relu(self.bn(x))
        return self.conv2(self.conv1(x)) + residual


# --------------------------------------------------------------------------- network

class ResNet(RegLossMixin, BackboneClassifier):
    """``backbone`` (data BatchNorm, stem, stages, pooling) and ``classifier``, like the MobileNets."""

    def __init__(self, flavour: Flavour, units: tuple[int, ...], *, num_classes: int, preact: bool,
                 width: float = 1.0, in_channels: int = 3):
        super().__init__()
        bb = nn.Sequential()
        bb.add_module("data_bn", nn.BatchNorm2d(in_channels))
        c = flavour.stem_channels
        bb.add_module("init_unit", StemLarge(in_channels, c) if flavour.large_stem
                      else StemSmall(in_channels, c, preact))
        self.total_stride = (4 if flavour.large_stem else 1) * 2 ** (len(units) - 1)
        unit_cls = PreactUnit if preact else BasicUnit
        for si, (repeats, channels) in enumerate(zip(units, flavour.stage_channels), start=1):
            out = int(channels * width)
            stage = nn.Sequential()
            for ui in range(1, repeats + 1):
                stage.add_module(f"unit{ui}", unit_cls(c, out, 2 if ui == 1 and si != 1 else 1))
                c = out
            bb.add_module(f"stage{si}", stage)
        if preact:
            bb.add_module("final_activation", PostActivation(c))
        bb.add_module("global_pool", nn.AdaptiveAvgPool2d(1))
        self.backbone = bb
        self.classifier = Classifier(c, num_classes)
        self.num_features = c
        for m in self.backbone.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight)
        nn.init.xavier_normal_(self.classifier.conv.weight, gain=1.0)
        nn.init.zeros_(self.classifier.conv.bias)


def apply_variant(model: nn.Module, variant: str) -> nn.Module:
    """What the reference's replacers do to a built network for a name's last part."""
    if variant == "bsconvu":
        replace_convs(model, kind="bsconvu", kernel_sizes=REPLACED_KERNELS, with_bn=False)
    elif variant == "bsconvs_p1d6":
        replace_convs(model, kind="bsconvs", kernel_sizes=REPLACED_KERNELS, p=BSCONV_S_P, with_bn=True)
    elif variant:
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    return model


def _build(num_classes: int, *, flavour: Flavour, units: tuple[int, ...], preact: bool, width: float,
           variant: str) -> ResNet:
    model = ResNet(flavour, units, num_classes=num_classes, preact=preact, width=width)
    return apply_variant(model, variant)


def _names() -> list[tuple[str, str, Flavour, Depth, bool, float, str]]:
    """(base name, family, flavour, depth, preact, width, description) for every base name."""
    rows = []
    for flavour, depths in ((IMAGENET, IMAGENET_DEPTHS), (CIFAR, CIFAR_DEPTHS)):
        where = "ImageNet 224x224" if flavour is IMAGENET else "CIFAR 32x32"
        for d in depths:
            n = d.name[len("resnet"):]
            rows.append((f"{flavour.prefix}{d.name}", f"{flavour.prefix}resnet", flavour, d, False, 1.0,
                         f"ResNet-{n}, {where}"))
            rows.append((f"{flavour.prefix}pre{d.name}", f"{flavour.prefix}preresnet", flavour, d, True, 1.0,
                         f"pre-activation ResNet-{n}, {where}"))
    for d in WRN_DEPTHS:
        for k in WRN_WIDTHS:
            rows.append((f"cifar_{d.name}_{k}", "cifar_wrn", CIFAR, d, True, float(k),
                         f"WRN-{d.name[3:]}-{k}, CIFAR 32x32"))
    return rows


def _register_zoo() -> None:
    kinds = {"": "plain", "bsconvu": "BSConv-U", "bsconvs_p1d6": "BSConv-S p=1/6"}
    for base, family, flavour, depth, preact, width, description in _names():
        for variant in VARIANTS:
            register_model(
                f"{base}_{variant}" if variant else base, family=family, default_size=flavour.size,
                default_num_classes=flavour.num_classes, in_reference=True,
                description=f"{description}, {kinds[variant]}",
            )(partial(_build, flavour=flavour, units=depth.units, preact=preact, width=width, variant=variant))


_register_zoo()
