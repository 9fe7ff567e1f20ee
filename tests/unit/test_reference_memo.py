"""The check's reference is computed once per process for the same model and inputs
(exporter/check/reference.py): anything it depends on changing computes it again."""
import numpy as np
import pytest
import torch
from torch import nn

from bsconv_export.exporter.check import reference


def tiny(scale: float = 1.0) -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(4, 3)).eval()
    with torch.no_grad():
        m[0].weight.mul_(scale)
    return m


@pytest.fixture
def counted(monkeypatch):
    monkeypatch.setattr(reference, "_COMPUTED", type(reference._COMPUTED)())
    runs = []
    compute = reference._compute_reference
    monkeypatch.setattr(reference, "_compute_reference", lambda *a: runs.append(a[3:]) or compute(*a))
    return runs


def test_the_same_model_and_inputs_are_computed_once_and_handed_out_as_copies(counted):
    m, x = tiny(), np.random.RandomState(0).rand(5, 3, 8, 8).astype(np.float32)
    first = reference.torch_reference(m, x, half=True)
    first.r64[:] = 0                       # a caller's edits never reach the next caller
    again = reference.torch_reference(tiny(), x.copy(), half=True)   # equal, not the same objects
    assert len(counted) == 1
    assert np.array_equal(again.r64, reference._compute_reference(tiny(), x, 8, 0, True).r64)
    assert np.abs(again.r64).max() > 0


class Plain(nn.Module):
    def __init__(self, factor: torch.Tensor):
        super().__init__()
        self.inner = tiny()
        self.factor = factor               # a plain tensor attribute: no parameter, no buffer

    def forward(self, x):
        return self.inner(x) * self.factor


def test_anything_the_reference_depends_on_computes_it_again(counted):
    x = np.random.RandomState(0).rand(5, 3, 8, 8).astype(np.float32)
    m = tiny()
    reference.torch_reference(m, x)
    bn = tiny()
    with torch.no_grad():
        bn[1].running_mean.add_(1e-3)      # a buffer
    y = x.copy()
    y[0, 0, 0, 0] += 1e-3                  # one input value
    for model, inputs, options in [(tiny(1.0001), x, {}), (bn, x, {}), (m, y, {}), (m, x, {"half": True}),
                                   (m, x, {"batch": 2}), (m, x, {"seed": 1}),
                                   (Plain(torch.tensor(2.0)), x, {}), (Plain(torch.tensor(3.0)), x, {})]:
        before = len(counted)
        reference.torch_reference(model, inputs, **options)
        assert len(counted) == before + 1, (model, options)
    # a class of another definition but the same name and weights is another model
    first = type("Net", (nn.Module,), {"forward": lambda self, x: self.inner(x)})
    second = type("Net", (nn.Module,), {"forward": lambda self, x: self.inner(x) + 1})
    outs = []
    for cls in (first, second):
        net = cls()
        net.inner = tiny()
        outs.append(reference.torch_reference(net, x).r64)
    assert not np.array_equal(outs[0], outs[1])
