"""The equivalence check: it passes correct exports and catches the ways exports really break."""
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

from bsconv_export.exporter.export.run import export_bundle
from bsconv_export.exporter.check.run import CheckOptions, Reference, check_inputs, run_check
from bsconv_export.exporter.check.verdict import compare, verdict
from bsconv_export.exporter.bundle.manifest_io import read_manifest
from helpers import rehash
from bsconv_export.exporter.kit.tolerances import Tolerance
from bsconv_export.exporter.kit.options import ExportOptions
from bsconv_export.exporter.kit.records import Status
from bsconv_export.exporter.runners import infer_batched
from bsconv_export.exporter.formats.coreml.mil import CoreMLRunner, MilProgram, MilReferenceRunner
from bsconv_export.exporter.formats.onnx.runner import OnnxRunner, OrtFormatRunner
from bsconv_export.exporter.runners.torch_runner import TorchRunner
from bsconv_export.models.checkpoint import resolve_model

# exports many formats or models: make test-all, not the fast tier
pytestmark = pytest.mark.slow


@pytest.fixture
def good_bundle(shared_bundle):
    # the formats the planted faults below edit; the .pt2 and .pte are tests/e2e/test_program.py's
    return shared_bundle("onnx-ort-coreml")


@pytest.fixture
def bundle_copy(tmp_path, good_bundle):
    dst = tmp_path / "b"
    shutil.copytree(good_bundle, dst)
    return dst


def test_correct_export_passes_with_numbers_for_every_artifact(good_bundle, shipped):
    m = read_manifest(good_bundle)
    assert m.passed and m.verdict == "passed" and m.check.passed
    assert m.check.inputs.startswith("shipped held-out digits + 36 coloured copies") and m.check.samples == 402
    by = {(r.artifact, r.runner): r for r in m.check.records}
    for key in [("onnx", "onnxruntime-cpu"), ("onnx-simplified", "onnxruntime-cpu"),
                ("ort", "ort-format-cpu"), ("coreml", "coreml-mil-reference")]:
        r = by[key]
        assert r.status is Status.OK, r
        assert r.metrics["max_abs"] < 1e-4 and r.metrics["cosine_min"] > 0.99999
        assert 0 < r.metrics["torch_fp32_error_max"] < 1e-4
        assert r.accuracy == r.reference_accuracy >= 0.95
    apple = by[("coreml", "coreml-apple")]
    if CoreMLRunner("unused").unavailable_reason():
        assert apple.status is Status.SKIPPED and "macOS" in apple.reason


def _check(bundle, shipped, **kw):
    manifest = read_manifest(bundle)
    return run_check(bundle, manifest, shipped.model, CheckOptions(**kw))


def _failed(report):
    return {r.artifact for r in report.records if r.status is Status.FAILED}


def _edit_onnx(path, edit):
    model = onnx.load(path)
    edit(model.graph)
    onnx.save(model, path)
    rehash(path.parent)


def test_perturbed_conv_weight_fails_and_is_localized(bundle_copy, shipped):
    target = "/backbone/stage3/unit1/conv2/conv/Conv"

    def perturb(graph):
        node = next(n for n in graph.node if n.name == target)
        init = next(i for i in graph.initializer if i.name == node.input[1])
        w = numpy_helper.to_array(init).copy()
        w += np.where(np.random.default_rng(0).random(w.shape) < 0.5, -1e-2, 1e-2).astype(w.dtype)
        init.CopyFrom(numpy_helper.from_array(w, init.name))

    _edit_onnx(bundle_copy / "model.onnx", perturb)
    report = _check(bundle_copy, shipped)
    assert not report.passed and _failed(report) == {"onnx"}
    rec = next(r for r in report.records if r.artifact == "onnx")
    assert "outside" in rec.reason
    fd = rec.first_divergence
    assert fd["found"] and fd["torch_module"] == "backbone.stage3.unit1.conv2"
    assert fd["onnx_node"].startswith("/backbone/stage3/unit1/conv2/")


def _insert_before_first_consumer(graph, make_nodes):
    """Feed the graph input through new nodes; rewire its consumers."""
    new_nodes, new_out = make_nodes("input")
    for n in graph.node:
        for i, name in enumerate(n.input):
            if name == "input":
                n.input[i] = new_out
    for k, node in enumerate(new_nodes):
        graph.node.insert(k, node)


def test_rgb_swapped_to_bgr_fails(bundle_copy, shipped):
    def swap(graph):
        graph.initializer.append(numpy_helper.from_array(np.array([2, 1, 0], np.int64), "bgr_idx"))
        _insert_before_first_consumer(graph, lambda x: (
            [helper.make_node("Gather", [x, "bgr_idx"], ["bgr"], axis=1, name="swap")], "bgr"))

    _edit_onnx(bundle_copy / "model.sim.onnx", swap)
    report = _check(bundle_copy, shipped)
    assert _failed(report) == {"onnx-simplified"}


def test_dropped_normalization_fails(bundle_copy, shipped):
    def drop(graph):
        mul = next(n for n in graph.node if n.op_type == "Mul" and "data_bn" in n.name)
        add = next(n for n in graph.node if n.op_type == "Add" and "data_bn" in n.name)
        for n in graph.node:
            for i, name in enumerate(n.input):
                if name == add.output[0]:
                    n.input[i] = "input"
        graph.node.remove(mul)
        graph.node.remove(add)

    _edit_onnx(bundle_copy / "model.onnx", drop)
    report = _check(bundle_copy, shipped)
    assert _failed(report) == {"onnx"}
    assert next(r for r in report.records if r.artifact == "onnx").first_divergence["found"]


def test_changed_padding_fails(bundle_copy, shipped):
    def repad(graph):
        conv = next(n for n in graph.node if n.op_type == "Conv" and "stage2/unit1/conv2" in n.name)
        pads = next(a for a in conv.attribute if a.name == "pads")
        assert list(pads.ints) == [1, 1, 1, 1]
        pads.ints[:] = [2, 2, 0, 0]  # same output size, shifted window

    _edit_onnx(bundle_copy / "model.sim.onnx", repad)
    report = _check(bundle_copy, shipped)
    assert _failed(report) == {"onnx-simplified"}


def test_coreml_fp16_passes_its_own_criteria_but_not_an_fp32_tolerance(tmp_path, shipped):
    out = tmp_path / "fp16"
    r = export_bundle(shipped, out, ExportOptions(formats=("coreml",), coreml_precision="fp16"), check=CheckOptions())
    assert r.ok, r.manifest.check
    rec = next(x for x in r.manifest.check.records if x.runner == "coreml-mil-reference")
    assert rec.precision == "fp16" and rec.metrics["max_abs"] > 1e-4  # fp16 really ran
    report = _check(out, shipped, atol=1e-4, rtol=1e-4)
    assert _failed(report) == {"coreml"}
    r.manifest.record_check(report)  # a re-check with user tolerances sits beside the export's own
    assert r.manifest.passed and r.manifest.user_checks == [report]


def test_nan_and_inf_fail_whatever_the_tolerance():
    ref = np.ones((2, 3), np.float32)
    out = ref.copy()
    out[0, 1] = np.nan
    m = compare(out, ref)
    assert m["nonfinite"] == 1 and m["top1_agreement"] == 0.0
    r = Reference(r64=ref.astype(np.float64), r32=ref, e32=np.zeros(2))
    assert "NaN/Inf" in verdict(out, r, m, Tolerance(min_cosine=0.0))


def test_unsupported_mil_op_is_skipped_not_passed(good_bundle, shipped, monkeypatch):
    from bsconv_export.exporter.formats.coreml import mil
    monkeypatch.delitem(mil.OPS, "conv")
    report = _check(good_bundle, shipped)
    rec = next(r for r in report.records if r.runner == "coreml-mil-reference")
    assert rec.status is Status.SKIPPED and rec.reason == "op conv not supported"
    # nothing else could run it here, so the CoreML artifact is unverified and the check fails
    unverified = [r for r in report.records if r.status is Status.UNVERIFIED]
    if CoreMLRunner("unused").unavailable_reason():
        assert [r.artifact for r in unverified] == ["coreml"] and not report.passed


def test_runners_share_one_contract(good_bundle, shipped):
    x = check_inputs(shipped.input_spec).x[:5]
    ref = TorchRunner(shipped.model).infer({"input": x})["logits"]
    for runner in (OnnxRunner(good_bundle / "model.onnx"), OrtFormatRunner(good_bundle / "model.ort"),
                   MilReferenceRunner(good_bundle / "model.mlpackage")):
        with runner as r:
            out = infer_batched(r, x)
        assert set(out) == {"logits"} and out["logits"].shape == (5, 10)
        np.testing.assert_allclose(out["logits"], ref, atol=1e-4)


def test_the_mil_interpreter_drops_each_value_after_its_last_reader(good_bundle):
    """Kept to the end of a run, every activation of a V2 at 224 held 1.5 GiB."""
    from bsconv_export.exporter.formats.coreml.mil import MilProgram
    p = MilProgram(good_bundle / "model.mlpackage")

    def names(var):
        return [n for v in var for n in names(v)] if isinstance(var, (list, tuple)) else [var.name]

    dropped: set[str] = set()
    read: set[str] = set()
    for op, drops in zip(p.ops, p.last_uses):
        inputs = {n for var in op.inputs.values() for n in names(var)}
        assert not inputs & dropped, op.name   # nothing is read after it was dropped
        read |= inputs
        assert not set(drops) & dropped
        dropped |= set(drops)
    assert dropped == read - {v.name for v in p.function.outputs}


def test_unavailable_providers_and_runtimes_say_why():
    import onnxruntime as ort
    from bsconv_export.exporter.runners import RunnerUnavailable
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(RunnerUnavailable, match="CUDAExecutionProvider is not available"):
            OnnxRunner("unused.onnx", "cuda").load()
    if CoreMLRunner("unused").unavailable_reason():
        with pytest.raises(RunnerUnavailable, match="macOS only"):
            CoreMLRunner("unused.mlpackage").load()


# --- the MIL interpreter against coremltools conversions of small models -----------------

def _convert(module, shape, precision="fp32"):
    from bsconv_export.exporter.formats.coreml.backend import import_coremltools
    ct = import_coremltools()
    traced = torch.jit.trace(module.eval(), torch.rand(shape))
    prec = ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32
    return ct.convert(traced, inputs=[ct.TensorType(name="input", shape=shape)], convert_to="mlprogram",
                      minimum_deployment_target=ct.target.iOS16, compute_precision=prec)


MIL_CASES = {
    "conv": (nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU()), (2, 3, 17, 17)),
    "conv_dilated_nobias": (nn.Conv2d(4, 6, 3, padding=2, dilation=2, bias=False), (1, 4, 12, 12)),
    "depthwise": (nn.Sequential(nn.Conv2d(8, 8, 5, padding=2, groups=8), nn.ReLU6()), (1, 8, 16, 16)),
    "grouped": (nn.Conv2d(8, 12, 3, groups=4), (1, 8, 10, 10)),
    "pooling": (nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1)), (1, 4, 16, 16)),
    "linear": (nn.Sequential(nn.Flatten(), nn.Linear(48, 10), nn.Sigmoid()), (2, 3, 4, 4)),
    "hardswish": (nn.Sequential(nn.Conv2d(3, 4, 1), nn.Hardswish(), nn.Hardsigmoid()), (1, 3, 8, 8)),
    "batchnorm": (nn.Sequential(nn.BatchNorm2d(3).eval()), (1, 3, 8, 8)),
}


@pytest.mark.parametrize("case", sorted(MIL_CASES))
def test_mil_interpreter_matches_torch(tmp_path, case):
    module, shape = MIL_CASES[case]
    if case == "batchnorm":
        with torch.no_grad():
            module[0].running_mean.uniform_(-1, 1)
            module[0].running_var.uniform_(0.5, 2)
    path = tmp_path / f"{case}.mlpackage"
    _convert(module, shape).save(str(path))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    got = MilProgram(path).run(x)
    np.testing.assert_allclose(got.reshape(ref.shape), ref, atol=1e-5, rtol=1e-5)


def test_mil_interpreter_honours_fp16(tmp_path):
    module, shape = MIL_CASES["conv"]
    path = tmp_path / "fp16.mlpackage"
    _convert(module, shape, "fp16").save(str(path))
    prog = MilProgram(path)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    got = prog.run(x)
    err = np.abs(got.reshape(ref.shape) - ref).max()
    assert 0 < err < 1e-2  # fp16 rounding shows, and stays small


def test_mobilenetv3_coreml_is_interpreted_not_skipped(tmp_path):
    """V3's hard-swish and squeeze-excitation reach CoreML as thresholded_relu, sigmoid_hard and mul."""
    torch.manual_seed(0)
    loaded = resolve_model("cifar_mobilenetv3_small_w1d2_bsconvs_p1d6")
    r = export_bundle(loaded, tmp_path / "v3", ExportOptions(formats=("coreml", "coreml-fp16")), check=CheckOptions(samples=4))
    assert r.ok, r.manifest.check
    mil = [c for c in r.manifest.check.records if c.runner == "coreml-mil-reference"]
    assert len(mil) == 2 and all(c.status is Status.OK for c in mil)
    assert "sigmoid_hard" in r.manifest.artifacts[0].details["op_types"]
