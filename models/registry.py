"""Model registry and the one input-spec object every later stage reads.

``@register_model`` records a builder under a unique name; ``create_model``
builds by name; ``list_models`` lists names. Export, checks and bundle metadata
read a model's :class:`InputSpec` (``model.input_spec``) and never re-derive it.
"""
from __future__ import annotations

import math

import difflib
import fnmatch
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from torch import nn

from ..kernel.errors import UnknownModelError

NORMALIZATIONS = ("data_bn", "mean_std", "none")
COLOR_ORDERS = ("RGB", "BGR")
#: the architecture of the shipped trained model, and what ``train`` trains by default
DEFAULT_ARCH = "cifar_mobilenetv2_w1d4_bsconvs_p1d6"


@dataclass(frozen=True)
class InputSpec:
    """What a caller must feed the network.

    ``normalization`` is ``"data_bn"`` for the reference's convention (the network
    starts with a BatchNorm on its input, so feed RGB scaled to ``value_range``),
    ``"mean_std"`` when the caller subtracts ``mean`` and divides by ``std``, or
    ``"none"``.
    """

    size: int
    num_classes: int
    channels: int = 3
    normalization: str = "data_bn"
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    value_range: tuple[float, float] = (0.0, 1.0)
    color_order: str = "RGB"
    labels: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        for name in ("size", "num_classes", "channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        numbers = (*self.mean, *self.std, *self.value_range)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
            raise ValueError("mean, std and value_range must be numbers")
        if not all(math.isfinite(v) for v in numbers):
            raise ValueError("mean, std and value_range must be finite numbers")
        if len(self.value_range) != 2 or self.value_range[0] >= self.value_range[1]:
            raise ValueError(f"value_range must be two increasing numbers, got {self.value_range!r}")
        if any(v <= 0 for v in self.std):   # every client divides by it: 0 gives NaN logits
            raise ValueError(f"std must be positive numbers, got {list(self.std)!r}")
        if not all(isinstance(x, str) for x in self.labels):
            raise ValueError("labels must be strings")
        if self.color_order not in COLOR_ORDERS:
            raise ValueError(f"color_order must be one of {COLOR_ORDERS}, got {self.color_order!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        if self.labels and len(self.labels) != self.num_classes:
            raise ValueError(f"{len(self.labels)} labels given for {self.num_classes} classes")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)

    def class_labels(self) -> list[str]:
        """The labels, or ``class_0 … class_{n-1}`` when none were given."""
        return list(self.labels) if self.labels else [f"class_{i}" for i in range(self.num_classes)]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "InputSpec":
        known = {f for f in cls.__dataclass_fields__}
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known}
        return cls(**kw)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    family: str
    default_size: int
    default_num_classes: int
    in_reference: bool
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, *, family: str, default_size: int, default_num_classes: int,
                   in_reference: bool, description: str = "") -> Callable:
    """Decorator (or plain call on a builder) that registers ``builder`` as ``name``."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name, builder, family, default_size, default_num_classes,
                                     in_reference, description)
        return builder

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_entry(name: str) -> ModelEntry:
    key = name.lower()
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, _REGISTRY, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; run 'bsconv-export models' to list them"
        raise UnknownModelError(f"unknown architecture {name!r}{hint}")
    return _REGISTRY[key]


def create_model(name: str, *, num_classes: int | None = None, labels: tuple[str, ...] | list[str] = (),
                 **kwargs: Any) -> nn.Module:
    """Build a registered model, in eval mode, with ``model.input_spec`` and ``model.arch`` set."""
    entry = get_entry(name)
    n = entry.default_num_classes if num_classes is None else int(num_classes)
    if n < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    model = entry.builder(num_classes=n, **kwargs)
    model.arch = entry.name
    model.input_spec = InputSpec(size=entry.default_size, num_classes=n, labels=tuple(labels))
    return model.eval()
