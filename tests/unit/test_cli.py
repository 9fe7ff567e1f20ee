import json

import pytest
import torch
from typer.testing import CliRunner

from bsconv_export.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, list(args))


def test_help_lists_commands():
    r = invoke("--help")
    assert r.exit_code == 0
    for cmd in ("models", "info", "train", "export", "evaluate"):
        assert cmd in r.output


def test_models_json():
    r = invoke("models", "*v3_small_w1_*", "--json")
    assert r.exit_code == 0
    names = [m["name"] for m in json.loads(r.stdout)["models"]]
    assert names == ["cifar_mobilenetv3_small_w1_bsconvs_p1d6", "cifar_mobilenetv3_small_w1_bsconvu",
                     "mobilenetv3_small_w1_bsconvs_p1d6", "mobilenetv3_small_w1_bsconvu"]


def test_info_json_on_shipped_model_and_on_an_arch():
    r = invoke("info", "--json")
    assert r.exit_code == 0
    d = json.loads(r.stdout)
    assert d["arch"] == "cifar_mobilenetv2_w1d4_bsconvs_p1d6" and d["params"] > 0 and d["macs"] > 0
    assert d["checkpoint_sha256"] and d["layers"]
    r = invoke("info", "mobilenetv2_w1_bsconvs_p1d6", "--input-size", "224", "--json")
    d = json.loads(r.stdout)
    assert d["params"] == 3505966 and 300e6 < d["macs"] < 320e6


def test_evaluate_reports_accuracy():
    r = invoke("evaluate", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["top1"] >= 0.95


def test_evaluate_uses_the_digits_only_for_a_model_that_takes_them():
    """An ImageNet model on the held-out digits would get a meaningless accuracy: refused."""
    r = invoke("evaluate", "mobilenetv1_w1d4_bsconvu")
    assert r.exit_code == 2 and "pass labelled data with --data" in r.stderr, r.output


def test_export_cli_writes_a_bundle_and_prints_the_table(tmp_path):
    r = invoke("export", "--out", str(tmp_path / "b"), "--formats", "onnx,ort")
    assert r.exit_code == 0, r.output
    assert "onnx-simplified" in r.stdout and "reproduce: bsconv-export export" in r.stdout
    r = invoke("export", "--out", str(tmp_path / "b"), "--formats", "onnx", "--json")
    assert r.exit_code == 2 and "already exists" in r.stderr


@pytest.mark.parametrize("args,message", [
    (["export", "--formats", "onnx,tensorrt"], "unknown format tensorrt"),
    (["export", "--input-size", "4"], "smaller than"),
    (["export", "--opset", "99"], "--opset 99 is out of range"),
    (["export", "mobilenetv9_w1"], "unknown architecture"),
    (["export", "--checkpoint", "missing.pt"], "does not exist"),
    (["export", "--dynamic-batch"], "coreml takes batch 1 only"),
    (["export", "--coreml-precision", "int4"], "--coreml-precision must be one of"),
    (["info", "mobilenetv2_w1_bsconvz"], "did you mean"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "o"
    if args[0] == "export":
        args = args + ["--out", str(out)]
    r = invoke(*args)
    assert r.exit_code == 2, r.output
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_unwritable_out_and_arch_mismatch(tmp_path):
    r = invoke("export", "--out", str(tmp_path / "no" / "such" / "dir"))
    assert r.exit_code == 2 and "does not exist; create it first" in r.stderr
    from bsconv_export.models.checkpoint import DEFAULT_CHECKPOINT
    r = invoke("export", "cifar_mobilenetv1_w1", "--checkpoint", str(DEFAULT_CHECKPOINT), "--out", str(tmp_path / "x"))
    assert r.exit_code == 2 and "was saved for" in r.stderr
    raw = tmp_path / "raw.pt"
    torch.save(torch.load(DEFAULT_CHECKPOINT, weights_only=True)["state_dict"], raw)
    r = invoke("export", "cifar_mobilenetv1_w1", "--checkpoint", str(raw), "--out", str(tmp_path / "y"))
    assert r.exit_code == 2 and "does not fit cifar_mobilenetv1_w1" in r.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_failed_stage_gives_exit_1(tmp_path, monkeypatch):
    import onnxsim
    monkeypatch.setattr(onnxsim, "simplify", lambda *a, **k: (a[0], False))
    r = invoke("export", "--out", str(tmp_path / "b"), "--formats", "onnx")
    assert r.exit_code == 1 and "failed" in r.stdout
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["passed"] is False


def test_check_cli_passes_a_good_bundle_and_fails_a_broken_one(tmp_path):
    import onnx
    from onnx import numpy_helper
    r = invoke("export", "--out", str(tmp_path / "b"), "--formats", "onnx", "--no-check")
    assert r.exit_code == 0 and json.loads((tmp_path / "b" / "manifest.json").read_text())["check"] is None
    r = invoke("check", str(tmp_path / "b"), "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["passed"] is True and {x["artifact"] for x in report["results"]} == {"onnx", "onnx-simplified"}
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["check"]["passed"] is True
    path = tmp_path / "b" / "model.sim.onnx"
    model = onnx.load(path)
    init = model.graph.initializer[0]
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.1, init.name))
    onnx.save(model, path)
    r = invoke("check", str(tmp_path / "b"))
    assert r.exit_code == 1 and "FAILED" in r.stdout and "onnx-simplified" in r.stdout
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["passed"] is False


def test_check_cli_bad_input(tmp_path):
    r = invoke("check", str(tmp_path))
    assert r.exit_code == 2 and "is not a bundle" in r.stderr


def test_the_check_table_names_only_the_gates_it_applied():
    """A record never judged (its stage failed, no file) has no gate: the tolerances line names none
    for it (it once printed the row's default precision with nothing after it)."""
    from bsconv_export.exporter.kit.records import CheckRecord, CheckReport, Status
    from bsconv_export.exporter.report.views import check_view
    report = CheckReport(inputs="x", samples=2, records=[
        CheckRecord(artifact="coreml-palette", runner="-", status=Status.FAILED, reason="no file",
                    precision="palette-6bit"),
        CheckRecord(artifact="onnx", runner="onnxruntime-cpu", status=Status.OK, tolerance="|a-r64| <= 1e-5")])
    line = next(n for n in check_view(report).notes if n.startswith("tolerances: "))
    assert line == "tolerances: fp32 |a-r64| <= 1e-5"
