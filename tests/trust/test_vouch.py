"""A bundle cannot vouch for itself: the check decides from the files, never from the manifest.

Each fault below is planted the way an export bug would look (hashes updated the tool's own
way, so the fault is the only difference) and then the manifest is edited to talk the check
out of failing: relabelled rows, rows marked skipped or removed, a loosened export option,
metadata that apps read changed together with the model. Every one must fail through the CLI.
"""
import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from bsconv_export.cli import app
from helpers import rehash

runner = CliRunner()


def check(bundle):
    r = runner.invoke(app, ["check", str(bundle), "--json"])
    return r.exit_code, (json.loads(r.stdout) if r.stdout.strip().startswith("{") else None), r.output


def failures(report):
    return {(x["artifact"], x["status"]): x["reason"] for x in report["results"] if x["status"] in ("failed", "unverified")}


@pytest.fixture
def bundle(tmp_path, shared_bundle):
    dst = tmp_path / "b"
    shutil.copytree(shared_bundle("onnx-ort-coreml"), dst)
    return dst


def move_classifier_bias(path, delta=0.05, cls=3):
    m = onnx.load(path)
    bias = [t for t in m.graph.initializer if list(t.dims) == [10]][-1]
    a = numpy_helper.to_array(bias).copy()
    a[cls] += delta
    bias.CopyFrom(numpy_helper.from_array(a, bias.name))
    onnx.save(m, path)


def edit(bundle, fn):
    d = json.loads((bundle / "manifest.json").read_text())
    fn(d)
    (bundle / "manifest.json").write_text(json.dumps(d))


def onnx_row(d):
    return next(a for a in d["artifacts"] if a["format"] == "onnx")


SLOW = pytest.mark.slow


@pytest.mark.parametrize("lie", ["relabel-fp16", pytest.param("status-skipped", marks=SLOW),
                                 pytest.param("row-removed", marks=SLOW), "formats-forgotten"])
def test_the_manifest_cannot_loosen_or_switch_off_a_gate(bundle, lie):
    move_classifier_bias(bundle / "model.onnx")      # 0.05: hundreds of times the fp32 bound
    rehash(bundle)
    edit(bundle, {
        "relabel-fp16": lambda d: onnx_row(d).update(format="fp16"),
        "status-skipped": lambda d: onnx_row(d).update(status="skipped"),
        "row-removed": lambda d: d["artifacts"].remove(onnx_row(d)),
        "formats-forgotten": lambda d: (d["artifacts"].remove(onnx_row(d)), d["export"]["formats"].remove("onnx")),
    }[lie])
    code, report, out = check(bundle)
    assert code == 1, out
    reason = failures(report).get(("onnx", "failed"))
    assert reason and "samples outside" in reason, failures(report)
    assert next(x for x in report["results"] if x["artifact"] == "onnx")["precision"] == "fp32"


@pytest.mark.slow
def test_coreml_precision_is_read_from_the_package_not_the_manifest(bundle):
    edit(bundle, lambda d: d["export"].update(coreml_precision="fp16"))
    code, report, out = check(bundle)
    coreml = [x for x in report["results"] if x["artifact"] == "coreml" and x["runner"] == "coreml-mil-reference"]
    assert coreml and coreml[0]["precision"] == "fp32", coreml   # the package computes in fp32


@pytest.mark.slow
def test_an_exported_format_whose_file_is_missing_fails(bundle):
    (bundle / "model.ort").unlink()
    edit(bundle, lambda d: d["artifacts"].remove(next(a for a in d["artifacts"] if a["format"] == "ort")))
    code, report, out = check(bundle)
    assert code == 1 and "model.ort is missing" in failures(report)[("ort", "failed")], out


def test_a_model_file_nobody_lists_is_still_verified_or_fails(bundle):
    shutil.copy(bundle / "model.onnx", bundle / "extra.onnx")
    code, report, out = check(bundle)
    assert code == 1 and ("extra.onnx", "unverified") in failures(report), out


@pytest.mark.slow
def test_an_fp32_file_holding_fp16_arithmetic_fails_by_its_content(bundle, tmp_path):
    from onnxconverter_common import float16
    m = float16.convert_float_to_float16(onnx.load(bundle / "model.onnx"), keep_io_types=True)
    onnx.save(m, bundle / "model.onnx")
    rehash(bundle)
    code, report, out = check(bundle)
    assert code == 1 and "holds fp16 arithmetic" in failures(report)[("onnx", "failed")], out


def set_onnx_metadata(path, key, value):
    m = onnx.load(path)
    entry = next(p for p in m.metadata_props if p.key == key)
    entry.value = value
    onnx.save(m, path)


@pytest.mark.slow
@pytest.mark.parametrize("key, change, needle", [
    ("input_spec", lambda s: {**s, "mean": [0.5, 0.5, 0.5]}, "at 'mean'"),
    ("input_spec", lambda s: {**s, "value_range": [0, 255]}, "at 'value_range'"),
    ("input_spec", lambda s: {**s, "color_order": "BGR"}, "at 'color_order'"),
    ("input_size", None, "input_size"),
    ("checkpoint_sha256", None, "checkpoint_sha256"),
])
def test_onnx_metadata_apps_read_must_match_the_manifest(bundle, key, change, needle):
    m = onnx.load(bundle / "model.sim.onnx")
    current = next(p.value for p in m.metadata_props if p.key == key)
    new = json.dumps(change(json.loads(current)), sort_keys=True) if change else ("28" if key == "input_size" else "0" * 64)
    set_onnx_metadata(bundle / "model.sim.onnx", key, new)
    rehash(bundle)
    code, report, out = check(bundle)
    assert code == 1 and needle in failures(report)[("onnx-simplified", "failed")], out


def test_an_opset_that_differs_from_the_record_fails(bundle):
    edit(bundle, lambda d: onnx_row(d).update(opset=17))
    code, report, out = check(bundle)
    assert code == 1 and "opset 18 differs" in failures(report)[("onnx", "failed")], out


def edit_coreml_spec(bundle, fn):
    """Change the package's model spec in place (its description and metadata), hashes updated."""
    from bsconv_export.exporter.formats.coreml.mil import load_spec
    pkg = bundle / "model.mlpackage"
    spec = load_spec(pkg)
    fn(spec)
    next(pkg.rglob("model.mlmodel")).write_bytes(spec.SerializeToString())
    rehash(bundle)


@pytest.mark.slow
def test_a_coreml_description_that_differs_from_the_program_fails(bundle):
    """A package that declares a 28x28 input but runs a 32x32 program: an app builds 28x28 inputs."""
    def shrink(spec):
        shape = spec.description.input[0].type.multiArrayType.shape
        shape[2], shape[3] = 28, 28

    edit_coreml_spec(bundle, shrink)
    code, report, out = check(bundle)
    assert code == 1 and "declared [1, 3, 28, 28]" in failures(report)[("coreml", "failed")], out


@pytest.mark.slow
def test_coreml_metadata_must_match_the_manifest(bundle):
    def widen(spec):
        meta = spec.description.metadata.userDefined
        meta["input_spec"] = json.dumps({**json.loads(meta["input_spec"]), "value_range": [0.0, 2.0]}, sort_keys=True)

    edit_coreml_spec(bundle, widen)
    code, report, out = check(bundle)
    assert code == 1 and "value_range" in failures(report)[("coreml", "failed")], out


def test_grey_data_gets_coloured_copies_so_a_channel_swap_fails_many_inputs(bundle):
    """Swap the red and blue input channels of the first convolution: on grey digits alone only the
    edge cases would see it; the coloured copies make it fail on dozens of inputs."""
    path = bundle / "model.sim.onnx"
    m = onnx.load(path)
    first_conv = next(n for n in m.graph.node if n.op_type == "Conv")
    w_init = next(t for t in m.graph.initializer if t.name == first_conv.input[1])
    w = numpy_helper.to_array(w_init).copy()
    if w.shape[1] == 3:
        w = w[:, ::-1].copy()
    else:
        pytest.skip("the first convolution is depthwise here")
    w_init.CopyFrom(numpy_helper.from_array(w, w_init.name))
    onnx.save(m, path)
    rehash(bundle)
    code, report, out = check(bundle)
    assert code == 1 and "coloured copies" in report["inputs"], out
    reason = failures(report)[("onnx-simplified", "failed")]
    outside = int(reason.split(" of ")[0])
    assert outside > 12, reason   # more than the 6 edge cases could show


def test_the_check_chooses_its_threads_and_restores_the_callers(bundle, monkeypatch):
    """At most the usable cores (its affinity), whatever torch's pool was; the caller's count comes back."""
    import torch

    from bsconv_export.exporter.check import run as check_mod
    from bsconv_export.kernel import machine
    seen = []
    real = check_mod.torch_reference

    def spy(*a, **k):
        seen.append(torch.get_num_threads())
        return real(*a, **k)

    monkeypatch.setattr(check_mod, "torch_reference", spy)
    monkeypatch.setattr(machine, "usable_cores", lambda: 1)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        code, report, out = check(bundle)
        assert code == 0, out
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# --- reduced precision sees scale -------------------------------------------------------------------

@pytest.fixture
def reduced(tmp_path, shared_bundle):
    dst = tmp_path / "r"
    shutil.copytree(shared_bundle("reduced"), dst)
    return dst


def wrap_logits(path, op, value):
    """Put ``op`` (Mul or Add) with a constant between the graph and its 'logits' output."""
    m = onnx.load(path)
    producer = next(n for n in m.graph.node if "logits" in n.output)
    producer.output[list(producer.output).index("logits")] = "logits_before_fault"
    m.graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), "planted_fault"))
    m.graph.node.append(onnx.helper.make_node(op, ["logits_before_fault", "planted_fault"], ["logits"]))
    onnx.save(m, path)


def class_bias(delta, cls=3):
    v = np.zeros(10, np.float32)
    v[cls] = delta
    return v


@pytest.mark.parametrize("file, artifact, op, value, needle", [
    ("model.fp16.onnx", "fp16", "Mul", 1.5, "1.4999x the reference"),
    pytest.param("model.int8.onnx", "int8", "Mul", 1.5, "x the reference", marks=SLOW),
    ("model.fp16.onnx", "fp16", "Add", class_bias(0.1), "more or less likely"),
    pytest.param("model.fp16.onnx", "fp16", "Add", class_bias(0.3), "more or less likely", marks=SLOW),
    ("model.int8.onnx", "int8", "Add", class_bias(2.0), "more or less likely"),
])
def test_reduced_precision_sees_scale_and_bias(reduced, file, artifact, op, value, needle):
    """Faults cosine and top-1 agreement are blind to: every logit x1.5, one class's bias moved."""
    wrap_logits(reduced / file, op, value)
    rehash(reduced)
    code, report, out = check(reduced)
    reason = failures(report).get((artifact, "failed"))
    assert code == 1 and reason and needle in reason, failures(report) or out


@pytest.mark.slow
def test_an_fp16_depthwise_layer_one_percent_off_fails(reduced):
    m = onnx.load(reduced / "model.fp16.onnx")
    dw = next(n for n in m.graph.node if n.op_type == "Conv"
              and any(a.name == "group" and a.i > 1 for a in n.attribute))
    w = next(t for t in m.graph.initializer if t.name == dw.input[1])
    w.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(w) * np.float16(1.01)).astype(np.float16), w.name))
    onnx.save(m, reduced / "model.fp16.onnx")
    rehash(reduced)
    code, report, out = check(reduced)
    assert code == 1 and ("fp16", "failed") in failures(report), out


@pytest.mark.slow
def test_correct_reduced_exports_keep_headroom_under_the_scale_gates(reduced):
    code, report, out = check(reduced)
    assert code == 0, failures(report)
    for rec in report["results"]:
        if rec["precision"] != "fp32":
            uses = {k: v for k, v in rec["metrics"].items() if k.endswith("bound_used")}
            assert uses and max(uses.values()) < 0.6, (rec["artifact"], uses)


def test_runtimes_never_get_more_threads_than_the_process_has_cores(monkeypatch):
    """bench and regress without --threads: the runtime's default only where every core is usable."""
    from bsconv_export.kernel import machine
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 16)
    monkeypatch.setattr(machine, "usable_cores", lambda: 2)
    assert machine.default_threads() == 2
    monkeypatch.setattr(machine, "usable_cores", lambda: 16)
    assert machine.default_threads() is None
