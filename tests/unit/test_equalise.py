"""Equalising pointwise → depthwise intermediates before int8: the captured program's
(exporter.kit.equalise, for .pte int8) and the ONNX graph's (exporter.formats.onnx.equalise, for int8)."""
import numpy as np
import torch
from torch import nn

from bsconv_export.exporter.kit.equalise import MAX_FACTOR, equalise, pointwise_depthwise_pairs


class Blocks(nn.Module):
    """A BSConv-U block with uneven pointwise channels, one whose pointwise output is also used
    elsewhere (not equalisable), and a dead channel."""

    def __init__(self):
        super().__init__()
        self.pw = nn.Conv2d(3, 8, 1, bias=True)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw2 = nn.Conv2d(8, 4, 1, bias=False)
        self.dw2 = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        with torch.no_grad():
            self.pw.weight.mul_(torch.tensor([1, 5, 0.01, 30, 1, 1, 2, 3.0]).view(-1, 1, 1, 1))
            self.pw.weight[5].zero_()
            self.pw.bias[5] = 0.0
            self.pw.bias[2] = 0.0

    def forward(self, x):
        y = self.dw(self.pw(x)).relu()
        z = self.pw2(y)
        return self.dw2(z) + z.mean()      # pw2's output has two users: left alone


def test_pairs_are_found_and_the_function_is_unchanged():
    torch.manual_seed(0)
    model = Blocks().eval()
    x = torch.randn(16, 3, 12, 12)
    program = torch.export.export(model, (x[:4],), strict=False)
    gm = program.module()
    pairs = pointwise_depthwise_pairs(gm)
    assert [(p.channels) for p in pairs] == [8]
    before = {k: v.clone() for k, v in gm.state_dict().items()}
    eq, info = equalise(gm, x.numpy(), 4)
    assert info["pairs"] == 1 and 1 < info["largest_factor"] <= MAX_FACTOR
    with torch.no_grad():
        torch.testing.assert_close(eq(x[:4]), model(x[:4]), atol=2e-5, rtol=1e-5)
    for k, v in gm.state_dict().items():                 # the program's own weights are not touched
        assert torch.equal(v, before[k]), k
    # each live channel of the intermediate now reaches the widest one's range (or its own times the
    # largest factor allowed); the dead one keeps factor 1
    with torch.no_grad():
        was = nn.functional.conv2d(x, model.pw.weight, model.pw.bias).abs().amax(dim=(0, 2, 3))
        now = nn.functional.conv2d(x, eq.pw.weight, eq.pw.bias).abs().amax(dim=(0, 2, 3))
    live = torch.arange(8) != 5
    torch.testing.assert_close(now[live], torch.minimum(was.max(), was * MAX_FACTOR)[live], rtol=1e-5, atol=0)
    assert float(was[live].max() / was[live].min()) > MAX_FACTOR        # the cap was needed here
    assert float(now[5]) == 0.0


def test_a_network_without_the_pattern_is_returned_as_is():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, groups=4)).eval()
    x = torch.randn(2, 3, 10, 10)
    gm = torch.export.export(model, (x,), strict=False).module()
    same, info = equalise(gm, np.asarray(x), 2)
    assert same is gm and info == {"pairs": 0}


def test_the_pte_int8_observer_is_min_max_on_an_equalised_program_and_histogram_otherwise():
    """The stage's measured choice (docs/int8.md): an equalised program keeps the plain range seen,
    one with nothing to equalise keeps the recipe's histogram; an explicit observer is honoured."""
    import pytest
    pytest.importorskip("executorch")
    from bsconv_export.exporter.formats.executorch.export import quantize_program
    torch.manual_seed(0)
    x = torch.randn(8, 3, 12, 12)
    blocks = torch.export.export(Blocks().eval(), (x[:4],), strict=False)
    plain = torch.export.export(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval(), (x[:4],), strict=False)
    _, done = quantize_program(blocks, x.numpy(), 4)
    assert done["pairs"] == 1 and done["observer"] == "minmax"
    _, done = quantize_program(plain, x.numpy(), 4)
    assert done == {"pairs": 0, "observer": "histogram"}
    _, done = quantize_program(blocks, x.numpy(), 4, observer="histogram")
    assert done["observer"] == "histogram"


def _logits(path, x):
    from bsconv_export.kernel.backends import onnxruntime
    session = onnxruntime().InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_the_onnx_pairs_are_found_equalised_and_the_function_is_unchanged(tmp_path):
    import onnx
    from onnx import numpy_helper

    from bsconv_export.exporter.formats.onnx.equalise import equalise_onnx, pointwise_depthwise_pairs
    torch.manual_seed(0)
    model = Blocks().eval()
    x = torch.randn(16, 3, 12, 12)
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (x[:4],), str(path), input_names=["input"], dynamo=False)
    graph = onnx.load(path).graph
    assert len(pointwise_depthwise_pairs(graph)) == 1          # pw2 → dw2 has a second user: left alone
    before = _logits(path, x[:4].numpy())
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    info = equalise_onnx(path, x.numpy(), 4)
    assert info["pairs"] == 1 and 1 < info["largest_factor"] <= 64 and info["widest_spread_before"] > 64
    np.testing.assert_allclose(_logits(path, x[:4].numpy()), before, atol=2e-5, rtol=1e-5)
    after = {i.name: numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}
    changed = [n for n in weights if not np.array_equal(weights[n], after[n])]
    assert len(changed) == 3      # the pointwise weight and bias, the depthwise weight; nothing else


def test_a_graph_without_the_pattern_is_left_as_it_was(tmp_path):
    from bsconv_export.exporter.formats.onnx.equalise import equalise_onnx
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, groups=4)).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 10, 10),), str(path), input_names=["input"], dynamo=False)
    raw = path.read_bytes()
    assert equalise_onnx(path, np.random.default_rng(0).normal(size=(4, 3, 10, 10)).astype(np.float32), 2) == {"pairs": 0}
    assert path.read_bytes() == raw
