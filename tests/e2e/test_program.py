"""torch.export at the centre: the capture, model.pt2 and its safe loader, the ExecuTorch .pte.

The shipped model's bundle with every default format, checked, is built once per
run and shared with tests/e2e/test_export.py (conftest's ``shared_bundle``); the
tests here copy it before changing anything. ExecuTorch's lowering takes ~15 s
per model on 2 cores, so this module lowers the digits model three more times:
a fresh-process export for byte identity, a planted fault, and the int8 .pte.
"""
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from bsconv_export.exporter.export.run import export_bundle
from bsconv_export.exporter.kit.capture import capture_program
from bsconv_export.exporter.check.run import CheckOptions, run_check
from bsconv_export.exporter.kit.options import ExportOptions
from bsconv_export.exporter.bundle.manifest_io import read_manifest
from bsconv_export.exporter.kit.prepare import example_input, prepare_for_export
from bsconv_export.exporter.kit.records import Status
from bsconv_export.models.program import ProgramError, load_program
from helpers import rehash

# exports many formats or models: make test-all, not the fast tier
pytestmark = pytest.mark.slow

CLI = str(Path(sys.executable).with_name("bsconv-export"))


@pytest.fixture
def program_bundle(shared_bundle):
    return shared_bundle("every-format")   # the default formats (pt2, onnx, ort, coreml, pte), checked


def test_one_capture_feeds_every_format_and_each_passes(program_bundle):
    m = read_manifest(program_bundle)
    by = {a.format: a for a in m.artifacts}
    assert {"pt2", "onnx", "onnx-simplified", "pte"} <= set(by)
    assert by["onnx"].details["exporter"] == "dynamo" and by["onnx"].opset == 18
    pte = by["pte"].details
    assert pte["backend"] == "XnnpackBackend" and pte["delegates"] >= 1
    assert pte["delegated_ops"].get("aten.convolution.default", 0) >= 50   # every conv in XNNPACK
    assert pte["delegated_nodes"] > 10 * pte["outside_nodes"]
    assert by["pt2"].details["op_types"]["aten.conv2d.default"] >= 50
    runs = {(c.artifact, c.runner): c.status for c in m.check.records}
    assert runs[("pt2", "torch-export")] is Status.OK and runs[("pte", "executorch-xnnpack")] is Status.OK
    # the dynamo exporter's per-node stack traces (local paths) are not shipped
    model = onnx.load(program_bundle / "model.onnx")
    assert not any(n.metadata_props for n in model.graph.node)
    assert not any(n.op_type in ("BatchNormalization", "Identity", "Shape") for n in
                   onnx.load(program_bundle / "model.sim.onnx").graph.node)


def test_fresh_process_export_is_byte_identical_and_json_stays_clean(program_bundle, tmp_path):
    out = tmp_path / "again"
    p = subprocess.run([CLI, "export", "--out", str(out), "--formats", "onnx,pte", "--no-check", "--json"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    json.loads(p.stdout)   # nothing but the one object on stdout
    for name in ("model.onnx", "model.sim.onnx", "model.pte"):
        assert (out / name).read_bytes() == (program_bundle / name).read_bytes(), name
    assert "torchao" not in p.stderr and "cpuinfo" not in p.stderr and "LeafSpec" not in p.stderr


def test_capture_static_and_dynamic_batch(shipped):
    model = prepare_for_export(shipped.model)
    x = example_input(3, 32, 1)
    static = capture_program(model, x, dynamic_batch=False).program
    assert tuple(static.graph_signature.user_inputs) and not static.range_constraints
    dynamic = capture_program(model, x, dynamic_batch=True).program
    (bound,) = dynamic.range_constraints.values()
    assert (bound.lower, bound.upper) == (1, 1024)
    x3 = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(dynamic.module()(x3), model(x3), atol=1e-5, rtol=0)
    # nothing of the exporting machine (stack traces, example inputs) rides along
    assert dynamic.example_inputs is None
    assert not any("stack_trace" in n.meta for n in dynamic.graph.nodes)


def test_dynamic_batch_bundle_runs_any_batch_at_a_custom_size(tmp_path, shipped):
    r = export_bundle(shipped, tmp_path / "d", ExportOptions(formats=("pt2", "onnx", "ort"), dynamic_batch=True,
                                                             input_size=48), check=CheckOptions())
    assert r.ok, [a.error for a in r.records]
    model = onnx.load(tmp_path / "d" / "model.onnx")
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    program, _ = load_program(tmp_path / "d" / "model.pt2")
    x = torch.rand(5, 3, 48, 48)
    with torch.no_grad():
        ref = shipped.model(x)
    torch.testing.assert_close(program.module()(x), ref, atol=1e-4, rtol=0)
    import onnxruntime as ort
    for name in ("model.onnx", "model.sim.onnx", "model.ort"):
        got = ort.InferenceSession(str(tmp_path / "d" / name), providers=["CPUExecutionProvider"]).run(
            None, {"input": x.numpy()})[0]
        np.testing.assert_allclose(got, ref.numpy(), atol=1e-4, rtol=0, err_msg=name)


def test_a_weight_changed_before_lowering_is_caught_in_the_pte(program_bundle, tmp_path, shipped):
    from bsconv_export.exporter.formats.executorch.export import lower_to_pte
    bad = prepare_for_export(shipped.model)
    with torch.no_grad():
        bad.classifier.conv.bias[3] += 0.002   # the size of fault the audit's small plants had
    buffer, _ = lower_to_pte(capture_program(bad, example_input(3, 32, 1), dynamic_batch=False).program)
    bundle = tmp_path / "f"
    shutil.copytree(program_bundle, bundle)
    (bundle / "model.pte").write_bytes(buffer)
    rehash(bundle)
    report = run_check(bundle, read_manifest(bundle), shipped.model, CheckOptions())
    status = {(c.artifact, c.runner): c.status for c in report.records}
    assert status[("pte", "executorch-xnnpack")] is Status.FAILED
    assert status[("onnx", "onnxruntime-cpu")] is Status.OK and not report.passed


def test_a_damaged_pte_is_a_failed_record_not_a_crash(program_bundle, tmp_path, shipped):
    bundle = tmp_path / "t"
    shutil.copytree(program_bundle, bundle)
    data = (bundle / "model.pte").read_bytes()
    (bundle / "model.pte").write_bytes(data[: len(data) // 3])
    rehash(bundle)
    report = run_check(bundle, read_manifest(bundle), shipped.model, CheckOptions())
    pte = next(c for c in report.records if c.artifact == "pte")
    assert pte.status is Status.FAILED and pte.reason


def test_opset_below_18_needs_the_named_legacy_option(tmp_path, shipped):
    from bsconv_export.kernel.errors import UserInputError
    with pytest.raises(UserInputError, match="--legacy-exporter"):
        export_bundle(shipped, tmp_path / "o", ExportOptions(formats=("onnx",), opset=13))
    r = export_bundle(shipped, tmp_path / "l", ExportOptions(formats=("onnx",), opset=13, legacy_exporter=True),
                      check=CheckOptions())
    assert r.ok and r.records[0].details["exporter"] == "torchscript" and r.records[0].opset == 13
    assert "--legacy-exporter" in r.manifest.command and "pt2" not in {a.format for a in r.records}


def test_an_executorch_that_does_not_load_fails_the_stage_loudly(tmp_path, shipped, monkeypatch):
    import builtins
    real = builtins.__import__

    def broken(name, *a, **k):
        if name.startswith("executorch"):
            raise ImportError("undefined symbol: _ZN3c104impl (simulated ABI mismatch)")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", broken)
    r = export_bundle(shipped, tmp_path / "e", ExportOptions(formats=("onnx", "pte")))
    pte = next(a for a in r.records if a.format == "pte")
    assert pte.status is Status.FAILED and "does not load beside torch" in pte.error
    assert "constraints.txt" in pte.error and not r.ok


# --- the .pt2 loader: planted payloads --------------------------------------------------------

class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _rewrite(src: Path, dst: Path, edit) -> Path:
    with zipfile.ZipFile(src) as z:
        entries = {i.filename: z.read(i) for i in z.infolist()}
    root = next(iter(entries)).split("/")[0]
    edit(root, entries)
    with zipfile.ZipFile(dst, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return dst


def _edit_json(entries, name, fn):
    d = json.loads(entries[name])
    fn(d)
    entries[name] = json.dumps(d).encode()


def test_torch_export_load_itself_runs_a_planted_pickle(program_bundle, tmp_path):
    """Why the project has its own loader: the plain one executes the payload."""
    marker = tmp_path / "ran"

    def plant(root, e):
        _edit_json(e, f"{root}/data/weights/model_weights_config.json",
                   lambda d: d["config"][next(iter(d["config"]))].update(use_pickle=True))
        first = json.loads(e[f"{root}/data/weights/model_weights_config.json"])["config"]
        e[f"{root}/data/weights/{next(iter(first.values()))['path_name']}"] = pickle.dumps(_Payload(marker))
    evil = _rewrite(program_bundle / "model.pt2", tmp_path / "evil.pt2", plant)
    code = f"import torch\ntry:\n    torch.export.load({str(evil)!r})\nexcept Exception:\n    pass\n"
    subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ProgramError, match="pickle"):
        load_program(evil)
    assert not marker.exists()


@pytest.mark.parametrize("plant, message", [
    ("target", "does not load"),
    ("expr", "not a size symbol"),
    ("custom_obj", "custom"),
    ("aoti", "AOTInductor"),
    ("name", "not an identifier"),
    ("treespec", "are not loaded"),
])
def test_planted_programs_are_refused_without_running(program_bundle, tmp_path, plant, message):
    marker = tmp_path / "ran"
    cmd = f"touch {marker}"

    def edit(root, e):
        model = f"{root}/models/model.json"
        if plant == "target":
            def fn(d):
                n = d["graph_module"]["graph"]["nodes"][0]
                n["target"] = "torch.os.system"
                n["inputs"] = [{"name": "command", "arg": {"as_string": cmd}, "kind": 1}]
            _edit_json(e, model, fn)
        elif plant == "expr":
            _edit_json(e, model, lambda d: d["range_constraints"].update(
                {f"__import__('os').system('{cmd}')": {"min_val": 1, "max_val": 2}}))
        elif plant == "custom_obj":
            _edit_json(e, f"{root}/data/constants/model_constants_config.json",
                       lambda d: d["config"].update({"c": {"path_name": "custom_obj_0", "use_pickle": False}}))
        elif plant == "aoti":
            e[f"{root}/data/aotinductor/model/model.so"] = b"\x7fELF"
        elif plant == "name":
            _edit_json(e, model, lambda d: d["graph_module"]["graph"]["nodes"][0]["outputs"][0]["as_tensor"]
                       .update(name=f"x; __import__('os').system('{cmd}')"))
        elif plant == "treespec":
            def fn(d):
                sig = d["graph_module"]["module_call_graph"][0]["signature"]
                sig["in_spec"] = sig["in_spec"].replace("builtins.tuple", "os.system", 1)
            _edit_json(e, model, fn)
    evil = _rewrite(program_bundle / "model.pt2", tmp_path / f"{plant}.pt2", edit)
    with pytest.raises(ProgramError, match=message):
        load_program(evil)
    assert not marker.exists()


def test_guard_code_from_the_file_is_never_compiled(program_bundle, tmp_path):
    marker = tmp_path / "ran"
    evil = _rewrite(program_bundle / "model.pt2", tmp_path / "g.pt2", lambda root, e: _edit_json(
        e, f"{root}/models/model.json",
        lambda d: d.update(guards_code=[f"__import__('os').system('touch {marker}') or True"])))
    program, digest = load_program(evil)
    program.module()(torch.rand(1, 3, 32, 32))
    assert not marker.exists() and len(digest) == 64


def test_a_planted_pt2_in_a_bundle_fails_its_check_record(program_bundle, tmp_path, shipped):
    bundle = tmp_path / "b"
    shutil.copytree(program_bundle, bundle)
    marker = tmp_path / "ran"
    _rewrite(program_bundle / "model.pt2", bundle / "model.pt2", lambda root, e: _edit_json(
        e, f"{root}/models/model.json", lambda d: d["graph_module"]["graph"]["nodes"][0].update(
            target="torch.os.system")))
    rehash(bundle)
    report = run_check(bundle, read_manifest(bundle), shipped.model, CheckOptions())
    pt2 = next(c for c in report.records if c.artifact == "pt2")
    assert pt2.status is Status.FAILED and "torch.os.system" in pt2.reason and not marker.exists()


@pytest.mark.parametrize("content, message", [
    (b"not a zip", "not a zip archive"),
    (b"", "not a zip archive"),
])
def test_a_file_that_is_no_program_is_one_clear_error(tmp_path, content, message):
    p = tmp_path / "x.pt2"
    p.write_bytes(content)
    with pytest.raises(ProgramError, match=message):
        load_program(p)
    with pytest.raises(ProgramError, match="does not exist"):
        load_program(tmp_path / "missing.pt2")


def test_bench_pairs_the_pte_with_a_non_spinning_onnxruntime(program_bundle, tmp_path):
    from bsconv_export.exporter.bench.bench import PAIRED_ORT_OPTIONS, BenchOptions, run_bench
    bundle = tmp_path / "b"
    shutil.copytree(program_bundle, bundle)
    res = run_bench(bundle, BenchOptions(iters=6, warmup=1))
    (pair,) = res["paired"]
    assert pair["status"] == "ok" and pair["artifact"] == "pte" and pair["baseline"] == "onnx-simplified"
    assert pair["pairs"] >= 6 and pair["ratio_ci95"][0] <= pair["ratio_median"] <= pair["ratio_ci95"][1]
    assert PAIRED_ORT_OPTIONS == {"session.intra_op.allow_spinning": "0"}
    assert pair["baseline_spinning"]["ratio_on_over_off"] > 0


def test_the_int8_pte_is_quantised_in_xnnpack_and_passes_the_int8_gate(tmp_path, shipped):
    r = export_bundle(shipped, tmp_path / "q", ExportOptions(formats=("pte-int8",)), check=CheckOptions())
    assert r.ok, r.manifest.check and [(c.artifact, c.runner, c.reason) for c in r.manifest.check.records]
    by = {a.format: a for a in read_manifest(tmp_path / "q").artifacts}
    d = by["pte-int8"].details
    assert d["precision"] == "int8" and "training split" in d["calibration"]
    # the quantise/dequantise pairs went into the delegate with the convolutions: XNNPACK runs int8
    assert any("quantize_per_tensor" in op for op in d["delegated_ops"]) and d["delegated_nodes"] > 10 * d["outside_nodes"]
    fp32_weight_bytes = 4 * sum(p.numel() for p in shipped.model.parameters())
    assert by["pte-int8"].bytes < 0.4 * fp32_weight_bytes
    c = next(c for c in r.manifest.check.records if c.artifact == "pte-int8")
    assert c.status is Status.OK and "top-1 agreement" in c.tolerance and c.metrics["top1_agreement"] >= 0.99


@pytest.mark.slow
def test_require_delegated_fails_a_pte_with_a_fallback_and_names_the_operators(tmp_path):
    """--require-delegated pte: the shipped model's program leaves two squeezes to ExecuTorch's portable
    kernels, so the file fails, naming them, and leaves the bundle; a format that records no delegation,
    or one not built, is refused before any work."""
    from typer.testing import CliRunner

    from bsconv_export.cli import app
    runner = CliRunner()
    out = tmp_path / "b"
    r = runner.invoke(app, ["export", "--out", str(out), "--formats", "pte", "--require-delegated", "pte",
                            "--jobs", "1", "--json"])
    assert r.exit_code == 1, r.output
    pte = next(a for a in json.loads(r.stdout)["artifacts"] if a["format"] == "pte")
    assert pte["status"] == "failed" and "aten.squeeze_copy.dims ×2" in pte["error"], pte
    assert "--require-delegated pte" in json.loads(r.stdout)["command"]
    assert not (out / "model.pte").exists()
    for args, says in ((["--formats", "onnx", "--require-delegated", "onnx"], "records no delegation"),
                       (["--formats", "onnx", "--require-delegated", "pte"], "not among the formats")):
        r = runner.invoke(app, ["export", "--out", str(tmp_path / "x"), *args])
        assert r.exit_code == 2 and says in r.output and not (tmp_path / "x").exists(), r.output
