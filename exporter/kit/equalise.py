"""Equalising a pointwise → depthwise intermediate before int8: exact in float, kinder to one scale.

BSConv-U is a 1×1 convolution straight into a k×k depthwise one, with no BatchNorm between them, so
the intermediate's channels keep the pointwise layer's uneven ranges (3–7× between the widest and the
narrowest on a trained MobileNetV1) — and an int8 recipe quantises that activation with one scale per
tensor, spending most of its 256 levels on the widest channels. Because the depthwise layer treats
each channel alone, a factor ``s_c`` can move from one layer to the other without changing the
function: the pointwise layer's output channel ``c`` (weights and bias) times ``s_c``, the depthwise
layer's channel ``c`` weights divided by it. Choosing ``s_c = R / r_c`` (``r_c`` the channel's largest
magnitude over the calibration samples, ``R`` the largest of all) gives every channel the full range.
Weights are quantised per output channel, so the moved factors cost them nothing.

This is cross-layer equalisation (Nagel et al., "Data-Free Quantization Through Weight Equalization
and Bias Correction", ICCV 2019) for the one pair where it is exact without any assumption about an
activation between the layers, with ranges measured on the calibration data rather than the weights.
It works on a captured program's module (an ``torch.fx.GraphModule``) and returns a changed copy.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import fx

#: the largest factor moved between two layers: a channel almost never active is not blown up into
#: one whose depthwise weights are mostly rounding
MAX_FACTOR = 64.0
CONV = torch.ops.aten.conv2d.default


@dataclass(frozen=True)
class Pair:
    pointwise: str     # the nodes' names in the graph
    depthwise: str
    channels: int


def _groups(node: fx.Node) -> int:
    if len(node.args) > 6:
        return int(node.args[6])
    return int(node.kwargs.get("groups", 1))


def _param(gm: fx.GraphModule, node) -> torch.Tensor | None:
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    value = gm
    for part in node.target.split("."):
        value = getattr(value, part, None)
    return value if isinstance(value, torch.Tensor) else None


def pointwise_depthwise_pairs(gm: fx.GraphModule) -> list[Pair]:
    """Every 1×1 convolution (one group) whose only user is a depthwise convolution over its output."""
    pairs = []
    for dw in gm.graph.nodes:
        if dw.op != "call_function" or dw.target is not CONV:
            continue
        pw = dw.args[0]
        if not isinstance(pw, fx.Node) or pw.op != "call_function" or pw.target is not CONV or len(pw.users) != 1:
            continue
        w_pw, w_dw = _param(gm, pw.args[1]), _param(gm, dw.args[1])
        if w_pw is None or w_dw is None or w_pw.dim() != 4 or w_dw.dim() != 4:
            continue
        channels = w_pw.shape[0]
        if tuple(w_pw.shape[2:]) != (1, 1) or _groups(pw) != 1:
            continue
        if _groups(dw) != channels or w_dw.shape[0] != channels or w_dw.shape[1] != 1:
            continue
        pairs.append(Pair(pw.name, dw.name, int(channels)))
    return pairs


class _Ranges(fx.Interpreter):
    """Runs the graph, keeping each watched node's largest magnitude per channel."""

    def __init__(self, gm: fx.GraphModule, watched: set[str]):
        super().__init__(gm)
        self.watched = watched
        self.ranges: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n.name in self.watched:
            r = out.detach().abs().amax(dim=(0, 2, 3))
            self.ranges[n.name] = torch.maximum(self.ranges[n.name], r) if n.name in self.ranges else r
        return out


def _replace(gm: fx.GraphModule, target: str, value: torch.Tensor) -> None:
    *path, name = target.split(".")
    owner = gm.get_submodule(".".join(path)) if path else gm
    setattr(owner, name, torch.nn.Parameter(value, requires_grad=False))


def channel_factors(ranges: np.ndarray) -> np.ndarray | None:
    """The factor each channel of an intermediate is scaled by, from its largest magnitudes ``ranges``
    (one per channel): ``R / r_c``, at most :data:`MAX_FACTOR`, 1 for a channel never active; None
    when no channel is. The one rule every format's equalisation uses."""
    r = np.asarray(ranges, np.float64)
    live = r > 0
    if not live.any():
        return None
    factor = np.ones_like(r)
    factor[live] = np.minimum(r.max() / r[live], MAX_FACTOR)
    return factor


def range_spread(ranges: np.ndarray) -> float:
    """The widest channel's range over the narrowest live one's (1 when none is live)."""
    r = np.asarray(ranges, np.float64)
    live = r[r > 0]
    return float(live.max() / live.min()) if live.size else 1.0


def equalise(gm: fx.GraphModule, x: np.ndarray, batch: int) -> tuple[fx.GraphModule, dict]:
    """A copy of ``gm`` with every pointwise → depthwise pair equalised on the ranges ``x`` gives
    (run ``batch`` samples at a time), and what was done: pairs, the largest factor moved, and the
    spread of the intermediate's channel ranges before (the largest over the smallest, worst pair)."""
    pairs = pointwise_depthwise_pairs(gm)
    if not pairs:
        return gm, {"pairs": 0}
    gm = copy.deepcopy(gm)      # the program's own weights stay as they are
    nodes = {n.name: n for n in gm.graph.nodes}
    ranges = _Ranges(gm, {p.pointwise for p in pairs})
    with torch.no_grad():
        for i in range(0, max(1, len(x) - batch + 1), batch):
            ranges.run(torch.from_numpy(np.ascontiguousarray(x[i:i + batch])))
    largest, widest = 1.0, 1.0
    with torch.no_grad():
        for p in pairs:
            r = ranges.ranges[p.pointwise].to(torch.float64).numpy()
            found = channel_factors(r)
            if found is None:
                continue
            factor = torch.from_numpy(found)
            widest = max(widest, range_spread(r))
            largest = max(largest, float(found.max()))
            pw, dw = nodes[p.pointwise], nodes[p.depthwise]
            w = _param(gm, pw.args[1])
            _replace(gm, pw.args[1].target, (w.double() * factor.view(-1, 1, 1, 1)).to(w.dtype))
            bias = _param(gm, pw.args[2]) if len(pw.args) > 2 else None
            if bias is not None:
                _replace(gm, pw.args[2].target, (bias.double() * factor).to(bias.dtype))
            w = _param(gm, dw.args[1])
            _replace(gm, dw.args[1].target, (w.double() / factor.view(-1, 1, 1, 1)).to(w.dtype))
    gm.recompile()
    return gm, {"pairs": len(pairs), "largest_factor": round(largest, 2),
                "widest_spread_before": round(widest, 2)}
