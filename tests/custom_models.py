"""A small BSConv classifier defined outside the zoo, for the --model and --program tests."""
import torch
from torch import nn

from bsconv_export.models import BSConvS, BSConvU


class TinyBSConvNet(nn.Module):
    """Stem conv, a BSConv-U and a BSConv-S stage, global pooling and a linear head."""

    def __init__(self, num_classes: int = 10, width: int = 8, in_channels: int = 3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            BSConvU(width, 2 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            BSConvS(2 * width, 4 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def tiny(num_classes: int = 10, width: int = 8, seed: int = 0) -> nn.Module:
    """The factory --model names: seeded weights, BatchNorm statistics that are not the identity."""
    torch.manual_seed(seed)
    model = TinyBSConvNet(num_classes, width)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def not_a_module(**_):
    return "a string"


def dies(**_: object) -> nn.Module:
    """A factory whose process dies as it runs (a converter crash, an out-of-memory kill)."""
    import os
    import signal
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


class Fp16Overflow(nn.Module):
    """A stem, then a 1×1 convolution over the stem's channels twice — weights +B on the first copy,
    -B on the second — so its terms cancel exactly. Its partial sums reach ~4·B: fine in fp32 and in
    fp16 storage with fp32 accumulation (x86's fp16 path), infinite where fp16 arithmetic accumulates
    in fp16 (Armv8.2 cores such as the Cortex-A76). The planted fault only ARM kernels expose."""

    def __init__(self, num_classes: int = 4, width: int = 8, big: float = 30000.0):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.Sigmoid())
        self.cancel = nn.Conv2d(2 * width, width, 1, bias=False)
        with torch.no_grad():
            self.cancel.weight.zero_()
            self.cancel.weight[:, :width] = big
            self.cancel.weight[:, width:] = -big
        self.head = nn.Sequential(BSConvU(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(2 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        return self.head(h + self.cancel(torch.cat([h, h], dim=1)))


def fp16_overflow(num_classes: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return Fp16Overflow(num_classes).eval()
