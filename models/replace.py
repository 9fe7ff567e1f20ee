"""Turn the plain k×k convolutions of any ``nn.Module`` into BSConv-U or BSConv-S."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..kernel.errors import UserInputError
from .layers import BSConvS, BSConvU
from .profile import count_params


@dataclass
class ReplaceReport:
    replaced: list[str] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0

    @property
    def ratio(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0


def _to_pair(k) -> tuple[int, int]:
    return (k, k) if isinstance(k, int) else tuple(k)


def replace_convs(model: nn.Module, *, kind: str = "bsconvu", kernel_sizes=(3, 5, 7), p: float = 0.25,
                  with_bn: bool = False) -> ReplaceReport:
    """Replace, in place, every ``nn.Conv2d`` with groups=1 and a kernel in ``kernel_sizes``.

    ``kind`` is ``"bsconvu"`` or ``"bsconvs"`` (with ``p``). Returns which modules
    were replaced and the parameter counts before and after.
    """
    if kind not in ("bsconvu", "bsconvs"):
        raise ValueError(f"kind must be 'bsconvu' or 'bsconvs', got {kind!r}")
    wanted = {_to_pair(k) for k in kernel_sizes}
    report = ReplaceReport(params_before=count_params(model))
    targets = [(name, m) for name, m in model.named_modules()
               if type(m) is nn.Conv2d and m.groups == 1 and tuple(m.kernel_size) in wanted]
    for name, conv in targets:
        kw = dict(kernel_size=conv.kernel_size, stride=conv.stride, padding=conv.padding,
                  dilation=conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode,
                  with_bn=with_bn)
        new = (BSConvU(conv.in_channels, conv.out_channels, **kw) if kind == "bsconvu"
               else BSConvS(conv.in_channels, conv.out_channels, p=p, **kw))
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, new)
        report.replaced.append(name)
    report.params_after = count_params(model)
    return report


def replacement_preview(model: nn.Module, kind: str) -> dict:
    """What :func:`replace_convs` would do to a copy of ``model`` (the original is untouched)."""
    import copy
    if kind not in ("bsconvu", "bsconvs"):
        raise UserInputError(f"--replace must be bsconvu or bsconvs, not {kind!r}")
    if getattr(model, "program", None) is not None:
        raise UserInputError("--replace needs modules to replace; a program file holds only a graph")
    report = replace_convs(copy.deepcopy(model), kind=kind, p=1.0 / 6.0, with_bn=kind == "bsconvs")
    return {"kind": kind, "replaced": report.replaced, "params_before": report.params_before,
            "params_after": report.params_after, "ratio": report.ratio}
