"""Reduced-precision artifacts: the calibration reader, the quality gate, and the manifest."""
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from bsconv_export.cli import app
from bsconv_export.exporter.export.run import export_bundle
from bsconv_export.exporter.check.run import CheckOptions
from bsconv_export.exporter.kit.options import ExportOptions
from bsconv_export.exporter.formats.onnx.reader import ArrayReader
from bsconv_export.models import UserInputError
from bsconv_export.models.checkpoint import resolve_model

runner = CliRunner()

# exports many formats or models: make test-all, not the fast tier
pytestmark = pytest.mark.slow


def test_calibration_reader_yields_batches_then_none_and_rewinds():
    x = np.arange(5 * 3 * 2 * 2, dtype=np.float32).reshape(5, 3, 2, 2)
    r = ArrayReader(x, batch=2)
    got = [r.get_next() for _ in range(3)]
    assert got[0]["input"].shape == (2, 3, 2, 2) and np.array_equal(got[1]["input"], x[2:4]) and got[2] is None
    r.rewind()
    assert np.array_equal(r.get_next()["input"], x[:2]) and len(r) == 2
    assert len(list(ArrayReader(x, batch=1))) == 5  # onnxruntime iterates readers too
    with pytest.raises(UserInputError):
        ArrayReader(np.zeros((3, 4), np.float32))


@pytest.fixture(scope="module")
def reduced(tmp_path_factory, shipped):
    out = tmp_path_factory.mktemp("red") / "b"
    r = export_bundle(shipped, out, ExportOptions(formats=("onnx", "int8", "fp16", "coreml-fp16")), check=CheckOptions())
    return out, r


def test_reduced_formats_are_in_the_manifest_and_pass_their_gates(reduced):
    out, r = reduced
    assert r.ok, r.manifest.to_dict()["check"]
    by = {a["format"]: a for a in r.manifest.to_dict()["artifacts"]}
    assert by["int8"]["details"]["precision"] == "int8" and "training split" in by["int8"]["details"]["calibration"]
    plan = by["int8"]["details"]["plan"]
    # int8 bytes: at most 0.35x fp32, plus what a mixed plan (chosen only when surely faster) keeps in float
    assert by["int8"]["details"]["weakest_layers"] and by["int8"]["bytes"] <= \
        (0.35 + 0.75 * plan["float_weight_share"][plan["chosen"]]) * by["onnx-simplified"]["bytes"]
    assert "QuantizeLinear" in by["int8"]["details"]["op_types"]
    assert by["fp16"]["details"]["precision"] == "fp16" and by["coreml-fp16"]["details"]["precision"] == "fp16"
    checks = {(c["artifact"], c["runner"]): c for c in r.manifest.to_dict()["check"]["results"]}
    for key in [("int8", "onnxruntime-cpu"), ("fp16", "onnxruntime-cpu"), ("coreml-fp16", "coreml-mil-reference")]:
        c = checks[key]
        assert c["status"] == "ok" and c["metrics"]["top1_agreement"] >= 0.99
        assert c["reference_accuracy"] - c["accuracy"] <= 0.005
        assert "accuracy drop <= 0.5 points" in c["tolerance"]
    import onnxruntime as ort
    sess = ort.InferenceSession(str(out / "model.fp16.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].type == "tensor(float)" and sess.get_outputs()[0].type == "tensor(float)"


def test_a_deliberately_bad_calibration_fails_the_quality_gate(tmp_path, shipped):
    bad = tmp_path / "bad.npz"
    # Calibrating on near-black inputs clips every real activation range: a bad recipe.
    x = np.full((16, 3, 32, 32), 0.01, np.float32)
    np.savez(bad, input=x)
    # the uniform plan: the measured one would spend minutes putting groups back to float before
    # giving up, and the test is about the check, not the plan (tests/unit/test_int8_plan.py)
    r = export_bundle(shipped, tmp_path / "b", ExportOptions(formats=("onnx", "int8"), calibration=str(bad),
                                                             int8_plan="uniform"), check=CheckOptions())
    assert not r.ok and r.manifest.to_dict()["passed"] is False
    int8 = next(c for c in r.manifest.to_dict()["check"]["results"] if c["artifact"] == "int8")
    assert int8["status"] == "failed" and ("top-1 agreement" in int8["reason"] or "accuracy" in int8["reason"])
    assert all(c["status"] == "ok" for c in r.manifest.to_dict()["check"]["results"] if c["artifact"] != "int8")


def test_keep_fp32_leaves_named_nodes_in_float(tmp_path, shipped):
    node = "/backbone/init_conv/conv/Conv"
    r = export_bundle(shipped, tmp_path / "k", ExportOptions(formats=("onnx", "int8"), keep_fp32=(node,)))
    assert all(a.ok for a in r.records) and r.manifest.to_dict()["artifacts"][-1]["details"]["kept_fp32"] == [node]
    import onnx
    g = onnx.load(tmp_path / "k" / "model.int8.onnx").graph
    conv = next(n for n in g.node if n.name == node)
    producers = {o: n.op_type for n in g.node for o in n.output}
    assert producers.get(conv.input[1]) != "DequantizeLinear"  # its weight stayed float


def test_int8_without_real_data_needs_an_explicit_choice(tmp_path):
    loaded = resolve_model("cifar_mobilenetv1_w1d4_bsconvu")
    r = runner.invoke(app, ["export", "cifar_mobilenetv1_w1d4_bsconvu", "--formats", "int8", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--calibration" in r.stderr and not (tmp_path / "x").exists()
    r = runner.invoke(app, ["export", "cifar_mobilenetv1_w1d4_bsconvu", "--formats", "int8", "--calibration", "random",
                            "--no-check", "--out", str(tmp_path / "y"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["artifacts"][-1]["details"]["calibration"].startswith("random")
    assert loaded.arch == "cifar_mobilenetv1_w1d4_bsconvu"


def test_bench_shows_fp32_int8_fp16_side_by_side(reduced):
    from bsconv_export.exporter.bench.bench import BenchOptions, run_bench
    out, _ = reduced
    res = run_bench(out, BenchOptions(warmup=2, duration=0.3, window=5))
    names = [r["artifact"] for r in res["results"] if r["status"] == "ok"]
    assert names[:3] == ["onnx-simplified", "int8", "fp16"]


def test_unknown_keep_fp32_node_is_bad_input(tmp_path, shipped):
    with pytest.raises(UserInputError, match="no such node.*did you mean /backbone/init_conv/conv/Conv"):
        export_bundle(shipped, tmp_path / "k", ExportOptions(formats=("int8",), keep_fp32=("/backbone/init_conv/conv/Con",)))
    assert list(tmp_path.iterdir()) == []


def test_random_calibration_never_draws_the_checks_own_inputs():
    """``--calibration random`` calibrated on the very samples the check then measured (both drew from seed
    0): the check measured the quantiser's fit to its own inputs. Calibration and gate now have streams of
    their own."""
    from types import SimpleNamespace

    from bsconv_export.exporter.kit.calibration import calibration_data, gate_data
    from bsconv_export.exporter.check.run import check_inputs
    spec = resolve_model("cifar_mobilenetv1_w1d4_bsconvu").input_spec
    ctx = SimpleNamespace(options=ExportOptions(formats=("int8",), calibration="random"), spec=spec)
    calib, labels, _ = calibration_data(ctx)
    gate, _, _ = gate_data(ctx, calib, labels)
    checked = check_inputs(spec, None, 32, reduced=True).x
    rows = {r.tobytes() for r in checked}
    assert not any(r.tobytes() in rows for r in calib) and not any(r.tobytes() in rows for r in gate)
    assert not {r.tobytes() for r in calib} & {r.tobytes() for r in gate}


@pytest.fixture(scope="module")
def compressed_coreml(tmp_path_factory, shipped):
    """The shipped model's three compressed CoreML packages (int8 weights, a 4-bit palette, W8A8), checked:
    read by the two tests below, each of which tampers with its own copy."""
    out = tmp_path_factory.mktemp("compressed") / "b"
    r = export_bundle(shipped, out, ExportOptions(formats=("coreml-int8w", "coreml-palette", "coreml-w8a8"),
                                                  palettize_bits=4), check=CheckOptions(), jobs=1)
    return out, r


def test_compressed_coreml_is_judged_by_its_own_precision_and_its_content(compressed_coreml, tmp_path):
    """coreml-int8w and coreml-palette are gated as what they are (int8 weights, a 4-bit palette: the
    CoreML plugin's own precisions), never as fp16; a package whose content is another compression
    than its row's fails, whatever the manifest says."""
    import shutil

    from helpers import rehash
    out = tmp_path / "b"
    shutil.copytree(compressed_coreml[0], out)
    r = compressed_coreml[1]
    judged = {c.artifact: c for c in r.manifest.check.records if c.runner == "coreml-mil-reference"}
    assert judged["coreml-int8w"].precision == "int8-weights" and judged["coreml-int8w"].status.value == "ok"
    assert judged["coreml-palette"].precision == "palette-4bit"
    assert "slope" in judged["coreml-palette"].metrics     # judged by the agreement and scale rules
    records = {a.format: a for a in r.manifest.artifacts}
    assert records["coreml-palette"].details["palettize_bits"] == 4
    # the palettised package in the int8-weights row's place: its content decides, and it is not allowed
    shutil.rmtree(out / "model.int8w.mlpackage")
    shutil.copytree(out / "model.palette.mlpackage", out / "model.int8w.mlpackage")
    rehash(out)
    res = runner.invoke(app, ["check", str(out), "--json"])
    assert res.exit_code == 1
    bad = [c for c in json.loads(res.stdout)["results"] if c["artifact"] == "coreml-int8w"]
    assert bad and all(c["status"] == "failed" for c in bad)
    assert "holds palette-4bit arithmetic, but the coreml-int8w format is int8-weights" in bad[0]["reason"]


def test_mixed_palettes_keep_the_sensitive_weights_wider_and_pass_the_gate(shipped, tmp_path):
    """--palettize-bits 4 --palettize-mixed: the weights measured most sensitive to 4-bit tables are
    kept at 6 bits (the fewest that hold the gate on the calibration samples); the package is judged
    at its own precision, palette-mixed, which its content says too; one table per kept weight is
    6-bit. Without real calibration samples on a model that has none, one line, exit 2."""
    import collections

    from bsconv_export.exporter.formats.coreml.mil import MilProgram, program_precision
    out = tmp_path / "b"
    r = export_bundle(shipped, out, ExportOptions(formats=("coreml-palette",), palettize_bits=4, palettize_mixed=True),
                      check=CheckOptions(), jobs=1)
    record = {a.format: a for a in r.manifest.artifacts}["coreml-palette"]
    assert record.ok, record.error
    mixing = record.details["mixed_widths"]
    assert mixing["held_on_calibration"] and 0 < len(mixing["kept"]) < mixing["weights"]
    assert [t["holds"] for t in mixing["tries"]][-1] and not mixing["tries"][0]["holds"]   # plain 4 bits does not
    assert program_precision(out / "model.palette.mlpackage") == "palette-mixed"
    tables = collections.Counter(len(np.asarray(op.inputs["lut"].val).reshape(-1))
                                 for op in MilProgram(out / "model.palette.mlpackage").ops
                                 if op.op_type == "constexpr_lut_to_dense")
    assert tables == {64: len(mixing["kept"]), 16: mixing["weights"] - len(mixing["kept"])}
    judged = [c for c in r.manifest.check.records if c.artifact == "coreml-palette" and c.runner == "coreml-mil-reference"]
    assert judged and judged[0].precision == "palette-mixed" and judged[0].status.value == "ok", judged[0].reason
    bad = runner.invoke(app, ["export", "cifar_mobilenetv1_w1d4_bsconvu", "--formats", "coreml-palette",
                              "--palettize-bits", "4", "--palettize-mixed", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--calibration" in bad.stderr and not (tmp_path / "x").exists()


def test_coreml_w8a8_quantises_activations_and_is_judged_as_w8a8(compressed_coreml, tmp_path):
    """coreml-w8a8: activation ranges measured by the MIL interpreter (Core ML's own calibration needs
    macOS), quantize/dequantize pairs inserted by coremltools' passes, int8 weights; judged at the
    plugin's w8a8 precision. Its content decides: in the int8-weights row's place it fails."""
    import shutil

    from bsconv_export.exporter.formats.coreml.mil import program_precision
    from helpers import rehash
    out = tmp_path / "b"
    shutil.copytree(compressed_coreml[0], out)
    r = compressed_coreml[1]
    records = {a.format: a for a in r.manifest.artifacts}
    w8a8 = records["coreml-w8a8"]
    assert w8a8.ok and w8a8.deployment_target == "iOS17", w8a8.error
    assert w8a8.details["op_types"].get("quantize", 0) > 20 and w8a8.details["quantized_activations"] > 20
    assert program_precision(out / "model.w8a8.mlpackage") == "w8a8"
    judged = {c.artifact: c for c in r.manifest.check.records if c.runner == "coreml-mil-reference"}
    c = judged["coreml-w8a8"]
    assert c.precision == "w8a8" and c.status.value == "ok", c.reason
    assert abs(c.metrics["slope"] - 1) <= 0.05 and c.accuracy >= c.reference_accuracy - 0.005
    # activations really run quantised: its error is well above the int8-weights package's
    assert c.metrics["max_abs"] > 3 * judged["coreml-int8w"].metrics["max_abs"]
    shutil.rmtree(out / "model.int8w.mlpackage")
    shutil.copytree(out / "model.w8a8.mlpackage", out / "model.int8w.mlpackage")
    rehash(out)
    res = runner.invoke(app, ["check", str(out), "--json"])
    bad = [c for c in json.loads(res.stdout)["results"] if c["artifact"] == "coreml-int8w"]
    assert res.exit_code == 1 and "holds w8a8 arithmetic, but the coreml-int8w format is int8-weights" in bad[0]["reason"]


def test_the_mil_interpreter_quantises_as_the_ios17_ops_define():
    from bsconv_export.exporter.formats.coreml.mil import OPS
    x = np.array([[-1.0, 0.26, 0.5, 3.0]], dtype=np.float32)
    q = OPS["quantize"](input=x, scale=np.float32(0.02), output_dtype="int8")
    assert q.dtype == np.int8 and q.tolist() == [[-50, 13, 25, 127]]
    assert OPS["dequantize"](input=q, scale=np.float32(0.02)).ravel().tolist() == pytest.approx([-1.0, 0.26, 0.5, 2.54])
    per_axis = OPS["quantize"](input=np.ones((1, 2, 1, 1), np.float32), scale=np.array([0.5, 0.25], np.float32),
                               zero_point=np.array([1, -1], np.int8), output_dtype="int8", axis=1)
    assert per_axis.ravel().tolist() == [3, 3]
    u = OPS["quantize"](input=np.array([-1.0, 1.0], np.float32), scale=np.float32(1 / 127), output_dtype="uint8",
                        zero_point=np.uint8(128))
    assert u.dtype == np.uint8 and u.tolist() == [1, 255]
