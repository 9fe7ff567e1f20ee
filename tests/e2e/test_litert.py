"""LiteRT (.tflite): converted from the bundle's model.pt2 in the converter's own environment,
given the app's contract and TFLITE_METADATA, verified and timed by the LiteRT interpreter.

Tests that convert need the converter environment (``make setup-litert``, 2.1 GB): they are
in ``make test-all``, which makes it first; without it they skip, saying so. The missing
environment, the time limit and the network guard are tested without it.
"""
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bsconv_export.cli import app
from bsconv_export.exporter.export.run import export_bundle
from bsconv_export.exporter.check.run import CheckOptions
from bsconv_export.exporter.formats.litert import converter
from bsconv_export.exporter.formats.litert.quantized import tflite_precision
from bsconv_export.exporter.formats.litert.runner import LiteRtBuiltinRunner, LiteRtRunner, from_tensor, to_tensor
from bsconv_export.exporter.formats.litert.tflite_file import (model_metadata, read_model_metadata, short_tensor_name,
                                                               short_tensor_names)
from bsconv_export.exporter.kit.options import ExportOptions
from bsconv_export.models.checkpoint import resolve_model
from bsconv_export.models.registry import InputSpec
from helpers import rehash
from zoo_sample import representative

needs_converter = pytest.mark.skipif(converter.missing_reason() is not None,
                                     reason=f"{converter.missing_reason()}: make setup-litert")
BSCONV_EXPORT = Path(sys.executable).with_name("bsconv-export")


@pytest.fixture(scope="module")
def tflite_bundle(tmp_path_factory, shipped):
    out = tmp_path_factory.mktemp("litert") / "b"
    r = export_bundle(shipped, out, ExportOptions(formats=("onnx", "tflite", "tflite-int8")), check=CheckOptions())
    assert r.ok, ([a.error for a in r.records], r.manifest.check and
                  [(c.artifact, c.runner, c.reason) for c in r.manifest.check.records])
    return out


def test_the_missing_converter_is_one_line_and_the_command_to_fix_it(tmp_path):
    env = {**os.environ, "BSCONV_EXPORT_CACHE": str(tmp_path / "empty-cache"), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([str(BSCONV_EXPORT), "export", "--formats", "tflite", "--out", str(tmp_path / "b")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 2 and "bsconv-export setup litert" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert not (tmp_path / "b").exists()


def test_a_converter_that_hangs_is_killed_at_its_time_limit(tmp_path, monkeypatch):
    from bsconv_export.kernel.kit_files import record_files
    monkeypatch.setenv("BSCONV_EXPORT_CACHE", str(tmp_path / "cache"))
    env = converter.env_dir()     # a converter environment (recorded, so it may run) whose Python hangs
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").write_text("#!/bin/sh\nsleep 60\n")
    (env / "bin" / "python").chmod(0o755)
    (env / converter.READY).write_text("made")
    record_files(env)
    with pytest.raises(converter.ConversionFailed, match="did not finish within 1 s"):
        converter.convert(tmp_path / "model.pt2", tmp_path / "out.tflite", (1, 3, 32, 32), timeout=1)


def test_the_conversion_script_refuses_every_connection_but_the_loopbacks(tmp_path):
    """The guard refuses a host outside its allowed list before any system call: shown here with the
    loopback itself left off the list, so no test ever addresses anything but 127.0.0.1."""
    code = ("import runpy, socket, sys; sys.argv = ['x']; "
            f"m = runpy.run_path({str(converter.SCRIPT)!r}, run_name='not_main'); m['_refuse_network'](()); "
            "s = socket.socket(); "
            "\ntry:\n    s.connect(('127.0.0.1', 9)); print('connected')\n"
            "except OSError as e:\n    print('refused', e)\n"
            "print(socket.socket().connect_ex(('127.0.0.1', 9)))")
    p = subprocess.run(["strace", "-f", "-e", "trace=connect", sys.executable, "-c", code] if shutil.which("strace")
                       else [sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.stdout.splitlines()[0].startswith("refused") and "makes no network connections" in p.stdout
    assert p.stdout.splitlines()[1] == "111"
    if shutil.which("strace"):   # refused before the system call: connect() never ran on that socket
        assert "sin_port=htons(9)" not in p.stderr, p.stderr[-1000:]


def test_tflite_metadata_reads_back_what_it_wrote():
    buf = model_metadata("arch", "desc", "1", [0.0] * 3, [255.0] * 3, (0.0, 1.0), 3)
    meta = read_model_metadata(buf)
    assert meta == {"name": "arch", "inputs": ["input"], "outputs": ["logits"], "mean": [0.0] * 3,
                    "std": [255.0] * 3, "max": [1.0] * 3, "min": [0.0] * 3, "label_file": "labels.txt"}
    with pytest.raises(ValueError, match="not a ModelMetadata"):
        read_model_metadata(b"\x00" * 16)


@pytest.mark.parametrize("spec", [
    InputSpec(size=4, num_classes=2),
    InputSpec(size=4, num_classes=2, value_range=(-1.0, 1.0), normalization="none"),
    InputSpec(size=4, num_classes=2, normalization="mean_std", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    InputSpec(size=4, num_classes=2, normalization="mean_std", mean=(120.0, 110.0, 100.0), std=(60.0, 58.0, 57.0),
              value_range=(0.0, 255.0), color_order="BGR")])
def test_tflite_normalization_is_the_clients_pixel_rule(spec):
    """Android's tooling normalises (pixel - mean) / std from TFLITE_METADATA: that must give what the
    clients feed (kernel.pixels.to_input), mean/std specs included."""
    from bsconv_export.kernel.contract import pixel_normalization
    from bsconv_export.exporter.report.predict import to_input
    pixels = np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    mean, std = pixel_normalization(spec)
    rgb = pixels[:, :, ::-1] if spec.color_order == "BGR" else pixels
    tooling = (rgb.astype(np.float64) - np.asarray(mean)) / np.asarray(std)
    np.testing.assert_allclose(to_input(pixels, spec)[0].transpose(1, 2, 0), tooling, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@needs_converter
def test_the_shipped_model_converts_and_passes_with_its_contract(tflite_bundle):
    manifest = json.loads((tflite_bundle / "manifest.json").read_text())
    checks = {(c["artifact"], c["runner"]): c for c in manifest["check"]["results"]}
    for runner in ("litert-xnnpack", "litert-builtin"):
        c = checks[("tflite", runner)]
        assert c["status"] == "ok" and c["metrics"]["top1_agreement"] == 1.0, c
    rec = next(a for a in manifest["artifacts"] if a["format"] == "tflite")
    assert {"CONV_2D", "DEPTHWISE_CONV_2D"} <= set(rec["details"]["op_types"])
    assert manifest["tools"]["ai-edge-litert"] != "not installed"
    # what an app reads, read back by the LiteRT interpreter
    with LiteRtRunner(tflite_bundle / "model.tflite") as r:
        assert r.input_names == ["input"] and r.output_names == ["logits"]
        assert r.labels() == manifest["model"]["labels"]
        assert json.loads(r.metadata()["input_spec"]) == manifest["model"]["input_spec"]
        meta = r._model_metadata()
        assert meta["std"] == [255.0] * 3 and meta["mean"] == [0.0] * 3 and meta["label_file"] == "labels.txt"
        sig = r.interpreter.get_signature_list()
        assert sig == {"serving_default": {"inputs": ["input"], "outputs": ["logits"]}}


@pytest.mark.slow
@needs_converter
def test_a_changed_weight_in_the_tflite_is_caught(tflite_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(tflite_bundle, bundle)
    from ai_edge_litert import schema_py_generated as schema
    data = bytearray((bundle / "model.tflite").read_bytes())
    model = schema.Model.GetRootAs(data, 0)
    graph = model.Subgraphs(0)
    # the largest float32 constant (a convolution's weights): one value multiplied by 3
    biggest = max((graph.Tensors(i) for i in range(graph.TensorsLength())),
                  key=lambda t: model.Buffers(t.Buffer()).DataLength() if t.Type() == schema.TensorType.FLOAT32 else 0)
    buf = model.Buffers(biggest.Buffer())
    start = buf.Offset() or (buf._tab.Vector(buf._tab.Offset(4)))
    value = struct.unpack_from("<f", data, start)[0]
    struct.pack_into("<f", data, start, value * 3 + 0.5)
    (bundle / "model.tflite").write_bytes(bytes(data))
    rehash(bundle)
    r = CliRunner().invoke(app, ["check", str(bundle), "--json"])
    report = json.loads(r.stdout)
    failed = [c for c in report["results"] if c["artifact"] == "tflite" and c["status"] == "failed"]
    assert r.exit_code == 1 and {c["runner"] for c in failed} == {"litert-xnnpack", "litert-builtin"}


@pytest.mark.slow
@needs_converter
def test_labels_in_the_tflite_that_disagree_with_the_manifest_fail(tflite_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(tflite_bundle, bundle)
    path = bundle / "model.tflite"
    data = path.read_bytes()
    flatbuffer = data[:data.rfind(b"PK\x03\x04")]   # the packed label file is the zip at the end
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("labels.txt", "\n".join(f"digit {i}" for i in range(10)) + "\n")
    path.write_bytes(flatbuffer + archive.getvalue())
    rehash(bundle)
    r = CliRunner().invoke(app, ["check", str(bundle)])
    assert r.exit_code == 1 and "labels differ from the manifest's at index 0" in r.output


@pytest.mark.slow
@needs_converter
def test_the_converter_makes_no_network_connection(tmp_path, shipped):
    """strace every connect() of the export (the converter subprocess included): loopback or a
    local socket only."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    trace = tmp_path / "trace"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ORT_DISABLE_TELEMETRY": "1"}
    p = subprocess.run(["strace", "-f", "-e", "trace=connect,sendto", "-o", str(trace), str(BSCONV_EXPORT),
                        "export", "--formats", "tflite", "--no-check", "--out", str(tmp_path / "b")],
                       capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    addresses = re.findall(r'sin6?_addr=(?:inet_addr|inet_pton)\((?:AF_INET6, )?"([^"]+)"', trace.read_text())
    assert all(a in ("127.0.0.1", "::1") for a in addresses), sorted(set(addresses))


def _families() -> list[str]:
    """One model per family of the test-all sample: its BSConv-U variant (BSConv-S and plain convert
    with the same ops)."""
    chosen: dict[str, str] = {}
    for name in representative():
        key = re.sub(r"_(bsconvu|bsconvs_p1d6)$", "", name)
        if key not in chosen or name.endswith("_bsconvu"):
            chosen[key] = name
    return sorted(chosen.values())


@pytest.mark.slow
@needs_converter
@pytest.mark.parametrize("arch", _families())
def test_every_zoo_family_converts_and_passes(tmp_path, arch):
    loaded = resolve_model(arch)
    # the default 32 samples: with 4, the median-sample rule is decided by the 6 edge cases, whose own
    # fp32 noise is near zero (an untrained V3-large's XNNPACK rounding then looks systematic)
    r = export_bundle(loaded, tmp_path / "b", ExportOptions(formats=("tflite",)), check=CheckOptions())
    assert r.ok, ([a.error for a in r.records], [(c.runner, c.reason) for c in r.manifest.check.records])


@pytest.mark.slow
@needs_converter
def test_the_int8_tflite_has_float_io_is_smaller_and_passes_the_int8_gate(tflite_bundle):
    manifest = json.loads((tflite_bundle / "manifest.json").read_text())
    rec = next(a for a in manifest["artifacts"] if a["format"] == "tflite-int8")
    assert rec["details"]["io"] == "float" and "io_quantization" not in rec["details"]
    assert rec["details"]["float_ops"] == {}     # every operator of the shipped model runs in int8
    ratio = (tflite_bundle / "model.int8.tflite").stat().st_size / (tflite_bundle / "model.tflite").stat().st_size
    assert ratio == pytest.approx(rec["details"]["bytes_ratio_to_fp32"], abs=1e-3) and ratio <= 0.45, ratio
    checks = {(c["artifact"], c["runner"]): c for c in manifest["check"]["results"]}
    for runner in ("litert-xnnpack", "litert-builtin"):
        c = checks[("tflite-int8", runner)]
        assert c["status"] == "ok" and c["precision"] == "int8", c
        assert abs(c["metrics"]["slope"] - 1) <= 0.05 and c["metrics"]["top1_agreement"] >= 0.99, c
    with LiteRtRunner(tflite_bundle / "model.int8.tflite") as r:
        ins, outs = r.interpreter.get_input_details(), r.interpreter.get_output_details()
        assert ins[0]["dtype"] == np.float32 and outs[0]["dtype"] == np.float32
        assert r.input_names == ["input"] and r.output_names == ["logits"]
        assert r.labels() == manifest["model"]["labels"] and r.metadata()["precision"] == "int8"
        kinds = {d["dtype"] for d in r.interpreter.get_tensor_details()}
        assert np.int8 in kinds
    # the file is what it is: the int8 file in the fp32 row's place fails by its content
    assert tflite_precision(tflite_bundle / "model.int8.tflite")[0] == "int8"
    assert tflite_precision(tflite_bundle / "model.tflite")[0] == "fp32"


@pytest.mark.slow
@needs_converter
def test_an_int8_tflite_planted_in_the_fp32_rows_place_fails_by_its_content(tflite_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(tflite_bundle, bundle)
    shutil.copyfile(bundle / "model.int8.tflite", bundle / "model.tflite")
    rehash(bundle)
    r = CliRunner().invoke(app, ["check", str(bundle), "--json"])
    report = json.loads(r.stdout)
    reasons = " ".join(c.get("reason") or "" for c in report["results"] if c["artifact"] == "tflite")
    assert r.exit_code == 1 and "holds int8 arithmetic, but the tflite format is fp32" in reasons, reasons


@pytest.mark.slow
@needs_converter
def test_int8_io_is_an_option_with_its_scale_and_zero_point_recorded(tmp_path, shipped):
    out = tmp_path / "b"
    r = export_bundle(shipped, out, ExportOptions(formats=("tflite", "tflite-int8"), tflite_int8_io="int8"), check=CheckOptions())
    assert r.ok, [(c.artifact, c.runner, c.reason) for c in r.manifest.check.records]
    rec = next(a for a in r.manifest.artifacts if a.format == "tflite-int8")
    params = rec.details["io_quantization"]
    with LiteRtRunner(out / "model.int8.tflite") as runner:
        detail = runner.interpreter.get_input_details()[0]
        assert detail["dtype"] == np.int8
        assert params["input"] == {"dtype": "int8", "scale": pytest.approx(detail["quantization"][0]),
                                   "zero_point": detail["quantization"][1]}
        assert json.loads(runner.metadata()["io_quantization"]) == params
    checks = [c for c in r.manifest.check.records if c.artifact == "tflite-int8"]
    assert {c.runner for c in checks} == {"litert-xnnpack", "litert-builtin"} and all(c.status.value == "ok" for c in checks)
    assert "--tflite-int8-io int8" in r.manifest.command


def test_require_delegated_fails_an_int8_tflite_with_float_operators_and_names_them(tmp_path):
    from types import SimpleNamespace
    from bsconv_export.exporter.formats import FORMATS
    from bsconv_export.exporter.kit.context import _delegated_or_failed
    from bsconv_export.exporter.kit.records import ArtifactRecord, Status
    (tmp_path / "model.int8.tflite").write_bytes(b"x")
    record = ArtifactRecord(format="tflite-int8", status=Status.OK, path="model.int8.tflite",
                            details={"float_ops": {"HARD_SWISH": 20, "DEQUANTIZE": 1}})
    ctx = SimpleNamespace(options=SimpleNamespace(require_delegated=("tflite-int8",)), workdir=tmp_path)
    failed = _delegated_or_failed(FORMATS["tflite-int8"], record, ctx)
    assert failed.status is Status.FAILED and "21 operator(s)" in failed.error and "HARD_SWISH ×20" in failed.error
    assert not (tmp_path / "model.int8.tflite").exists()
    clean = ArtifactRecord(format="tflite-int8", status=Status.OK, path="model.int8.tflite", details={"float_ops": {}})
    assert _delegated_or_failed(FORMATS["tflite-int8"], clean, ctx) is None


def test_short_tensor_names_keep_the_layer_path_and_stay_unique():
    long = ("bsconv_export.models.mobilenet.MobileNet/torch.nn.modules.container.Sequential_backbone/"
            "bsconv_export.models.layers.ConvBlock_final_conv/torch.nn.modules.conv.Conv2d_conv;1;;"
            "bsconv_export.models.mobilenet.MobileNet/torch.nn.modules.batchnorm.BatchNorm2d_bn")
    assert short_tensor_name(long) == "backbone.final_conv.conv:1"
    assert short_tensor_name("logits_dequant") == "logits_dequant"
    assert len(short_tensor_name("x" * 1000)) == 96
    names = short_tensor_names([long, long, "a", "a#2", "a"])
    assert len(set(names)) == 5 and all(n for n in names)


def test_what_a_tflite_holds_is_read_without_trusting_its_lengths(tmp_path):
    """A file that is not a model reads as unknown (its runner then says why); one whose tensor vector
    claims 2**31 - 1 entries too, at once: never a loop over a length the file states."""
    import time

    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"\x00" * 64)
    assert tflite_precision(garbage) == (None, None)
    model, graph, tensor = schema.ModelT(), schema.SubGraphT(), schema.TensorT()
    tensor.shape, tensor.type, tensor.name = [1], schema.TensorType.INT8, b"x"
    graph.tensors, graph.inputs, graph.outputs, graph.operators = [tensor], [0], [0], []
    model.version, model.subgraphs, model.buffers, model.operatorCodes = 3, [graph], [schema.BufferT()], []
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    data = bytearray(builder.Output())
    honest = tmp_path / "honest.tflite"
    honest.write_bytes(bytes(data))
    assert tflite_precision(honest) == ("int8", None)
    # the tensors vector moved past the model, into 32 MiB of zeros, claiming 2**31 - 1 entries: every
    # entry a reader visits is in bounds (a zero offset), so only a bound on the length stops the loop
    table = schema.Model.GetRootAs(data, 0).Subgraphs(0)._tab
    field = table.Pos + table.Offset(4)
    length_at = (len(data) + 3) // 4 * 4
    data = data + bytes(length_at - len(data)) + bytes(32 << 20)
    struct.pack_into("<I", data, field, length_at - field)
    struct.pack_into("<I", data, length_at, 2 ** 31 - 1)
    lying = tmp_path / "lying.tflite"
    lying.write_bytes(bytes(data))
    t0 = time.perf_counter()
    assert tflite_precision(lying) == (None, None) and time.perf_counter() - t0 < 5


def test_an_integer_input_is_fed_as_an_app_feeds_it():
    detail = {"dtype": np.int8, "quantization": (1 / 255, -128)}
    x = np.array([0.0, 0.25, 1.0, 2.0, -1.0], dtype=np.float32)
    assert to_tensor(x, detail).tolist() == [-128, -64, 127, 127, -128]
    y = from_tensor(np.array([-29, 0, 127], dtype=np.int8), {"dtype": np.int8, "quantization": (0.5, -29)})
    assert y.dtype == np.float32 and y.tolist() == [0.0, 14.5, 78.0]


def test_the_runner_kinds_are_registered():
    from bsconv_export.exporter.formats import runners_for
    assert [c.name for c in runners_for("tflite")] == [LiteRtRunner.name, LiteRtBuiltinRunner.name]
