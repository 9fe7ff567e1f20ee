import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from bsconv_export.exporter.export.run import export_bundle
from bsconv_export.exporter.formats import FORMATS, default_formats
from bsconv_export.exporter.bundle.manifest_io import read_manifest
from bsconv_export.exporter.kit.options import ExportOptions
from bsconv_export.models.checkpoint import resolve_model

# exports many formats or models: make test-all, not the fast tier
pytestmark = pytest.mark.slow

SHAPE_OPS = {"Shape", "Gather", "Unsqueeze", "Concat", "Reshape", "Slice", "ConstantOfShape", "Cast"}


def _run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"] and [o.name for o in sess.get_outputs()] == ["logits"]
    return sess.run(None, {"input": x})[0]


def _torch(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def validate_bundle(root, loaded, formats=None):
    m = read_manifest(root)
    assert m.schema_version == 4 and m.verdict in ("passed", "unverified")
    assert m.model.arch == loaded.arch and m.model.num_classes == loaded.input_spec.num_classes
    assert m.model.params == sum(p.numel() for p in loaded.model.parameters()) and m.model.macs > 0
    assert len(m.model.labels) == loaded.input_spec.num_classes
    assert m.command.startswith("bsconv-export export") and "torch" in m.tools
    by_fmt = {a.format: a for a in m.artifacts}
    expected = {"onnx", "onnx-simplified"} | set(formats or m.export.formats)
    assert set(by_fmt) == expected
    from bsconv_export.exporter.kit.records import path_sha256
    for a in m.artifacts:
        assert a.ok, a
        assert (root / a.path).exists() and a.bytes > 0
        assert a.sha256 == path_sha256(root / a.path)
    sim = onnx.load(root / by_fmt["onnx-simplified"].path)
    ops = {n.op_type for n in sim.graph.node}
    assert not ops & ({"BatchNormalization", "Identity"} | SHAPE_OPS), ops
    meta = {p.key: p.value for p in sim.metadata_props}
    assert meta["arch"] == loaded.arch and json.loads(meta["labels"]) == m.model.labels
    assert meta["checkpoint_sha256"] == (loaded.sha256 or "untrained")
    size = m.export.input_shape[2]
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    ref = _torch(loaded.model, x)
    scale = max(1.0, float(np.abs(ref).max()))
    for fmt in ("onnx", "onnx-simplified", "ort"):
        if fmt in by_fmt:
            np.testing.assert_allclose(_run(root / by_fmt[fmt].path, x), ref, atol=1e-4 * scale, rtol=0)
    if "coreml" in by_fmt:
        c = by_fmt["coreml"]
        assert c.deployment_target == "iOS16" and c.details["outputs"] == ["classLabel", "logits"]
        assert (root / c.path / "Manifest.json").exists()
    if "pte" in by_fmt:
        from bsconv_export.exporter.formats.executorch.runner import ExecuTorchRunner
        with ExecuTorchRunner(root / by_fmt["pte"].path) as r:
            np.testing.assert_allclose(r.infer({"input": x})["logits"], ref, atol=1e-4 * scale, rtol=0)
        assert by_fmt["pte"].details["delegated_nodes"] > by_fmt["pte"].details["outside_nodes"]
    if "pt2" in by_fmt:
        assert by_fmt["pt2"].details["op_types"].get("aten.conv2d.default", 0) > 0
    if "ort" in by_fmt:
        assert (root / "model.required_operators.config").exists() and (root / "mobile_usability.txt").exists()
        assert set(by_fmt["ort"].details["mobile_usability"]) == {"NNAPI", "CoreML NeuralNetwork", "CoreML MLProgram"}
    return m


@pytest.fixture
def shipped_bundle(shared_bundle):
    return shared_bundle("every-format")   # exported with the default formats and checked


def test_shipped_model_exports_to_every_format(shipped_bundle, shipped):
    m = validate_bundle(shipped_bundle, shipped)
    assert set(m.export.formats) == set(default_formats())
    assert m.model.trained is True and m.model.labels == [str(i) for i in range(10)]
    assert m.verdict == "passed"
    assert {p.name for p in shipped_bundle.parent.iterdir()} == {"bundle"}  # no building leftovers


def test_ort_format_runs_the_held_out_digits_like_torch(shipped_bundle, shipped):
    from bsconv_export.models.data import load_holdout
    x, y = load_holdout()
    got = _run(shipped_bundle / "model.ort", x[:1])
    np.testing.assert_allclose(got, _torch(shipped.model, x[:1]), atol=1e-4)


# Structure (no BN/Identity/shape nodes, metadata, hashes) on one model per family; that every
# family exports and passes the check at native size is tests/e2e/test_zoo_check.py's job.
SPREAD = ["mobilenetv1_w1d4_bsconvu", "cifar_mobilenetv2_w1d2_bsconvs_p1d6", "cifar_mobilenetv3_large_w1d2_bsconvu",
          "mobilenetv3_small_w7d20_bsconvs_p1d6"]


# ExecuTorch's lowering costs ~15 s a model, so make test lowers one V3 here (its squeeze-excitation
# blocks leave layout copies outside XNNPACK) and the digits V2 in tests/e2e/test_program.py.
WITH_PTE = {"mobilenetv3_small_w7d20_bsconvs_p1d6"}


@pytest.mark.parametrize("arch", SPREAD)
def test_zoo_spread_exports_to_every_format(tmp_path, arch):
    loaded = resolve_model(arch)
    with torch.no_grad():  # non-trivial BN statistics, so folding is exercised
        for name, buf in loaded.model.named_buffers():
            if name.endswith("running_mean"):
                buf.uniform_(-0.1, 0.1)
    formats = default_formats() if arch in WITH_PTE else tuple(f for f in default_formats() if f != "pte")
    result = export_bundle(loaded, tmp_path / "b", ExportOptions(formats=formats))
    assert all(r.ok for r in result.records), [r.error for r in result.records]
    m = validate_bundle(tmp_path / "b", loaded)
    assert m.verdict == "unverified"  # exported without the check: not passed


# Byte identity across exports: tests/e2e/test_program.py (a fresh process against the shared bundle).
# Dynamic batch at a custom size: tests/e2e/test_program.py::test_dynamic_batch_bundle_runs_any_batch.


def test_coreml_fp16_and_image_input(tmp_path, shipped):
    r = export_bundle(shipped, tmp_path / "c", ExportOptions(formats=("coreml",), coreml_precision="fp16",
                                                              coreml_input="image"))
    assert all(x.ok for x in r.records), [x.error for x in r.records]
    c = r.manifest.artifacts[0]
    assert c.details["precision"] == "fp16" and c.details["input_kind"] == "image"
    assert "cast" in c.details["op_types"]


def test_coreml_image_input_folds_mean_and_std_and_passes_its_check(tmp_path):
    """A mean/std network as an image input: ImageType's scale and bias are the contract's pixel rule
    (exporter.contract.pixel_normalization), and the check feeds the pixels that rule maps to its
    inputs; a std that differs per channel (one ImageType scale cannot hold it) is refused up front."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import custom_models
    from bsconv_export.exporter.check.run import CheckOptions
    from bsconv_export.kernel.errors import UserInputError
    from bsconv_export.models.registry import InputSpec
    spec = InputSpec(size=16, num_classes=10, normalization="mean_std", mean=(0.5, 0.4, 0.3), std=(0.25, 0.25, 0.25),
                     color_order="BGR")
    loaded = _custom(custom_models.tiny(width=4), spec)
    r = export_bundle(loaded, tmp_path / "c", ExportOptions(formats=("coreml",), coreml_input="image"),
                      check=CheckOptions())
    assert r.ok, [(c.artifact, c.runner, c.reason) for c in r.manifest.check.records]
    uneven = _custom(custom_models.tiny(width=4), InputSpec(size=16, num_classes=10, normalization="mean_std",
                                                           mean=(0.5, 0.4, 0.3), std=(0.229, 0.224, 0.225)))
    with pytest.raises(UserInputError, match="std differs per channel"):
        export_bundle(uneven, tmp_path / "d", ExportOptions(formats=("coreml",), coreml_input="image"))
    assert not (tmp_path / "d").exists()


def _custom(model, spec):
    """A LoadedCheckpoint of an in-memory network with ``spec`` (what --model gives the pipeline)."""
    from bsconv_export.models.checkpoint import LoadedCheckpoint
    from bsconv_export.models.source import EntryPointSource
    model.input_spec = spec
    return LoadedCheckpoint(model=model, arch="custom_models:tiny", path=Path(""), sha256="", input_spec=spec,
                            source=EntryPointSource(entry_point="custom_models:tiny", model_args=()),
                            spec_args=())


def test_a_failing_stage_is_recorded_and_the_others_still_run(tmp_path, shipped, monkeypatch):
    import onnxsim

    def broken(*a, **k):
        raise RuntimeError("simulated onnxsim crash")

    monkeypatch.setattr(onnxsim, "simplify", broken)
    r = export_bundle(shipped, tmp_path / "f", ExportOptions(formats=("onnx", "ort")))
    by = {x.format: x for x in r.records}
    assert not r.ok and r.manifest.verdict == "failed"
    assert by["onnx-simplified"].status.value == "failed" and "simulated onnxsim crash" in by["onnx-simplified"].error
    assert by["onnx"].ok and by["ort"].ok and by["ort"].details["source"] == "onnx"


def test_interrupt_leaves_nothing_behind(tmp_path, shipped, monkeypatch):
    def interrupted(ctx):
        raise KeyboardInterrupt

    from dataclasses import replace
    from bsconv_export.exporter.formats import registry
    monkeypatch.setitem(registry().formats, "ort", replace(FORMATS["ort"], stage=interrupted))
    with pytest.raises(KeyboardInterrupt):
        export_bundle(shipped, tmp_path / "out", ExportOptions(formats=("onnx", "ort")))
    assert list(tmp_path.iterdir()) == []


def test_existing_bundle_needs_force_and_is_replaced_whole(tmp_path, shipped):
    out = tmp_path / "b"
    export_bundle(shipped, out, ExportOptions(formats=("onnx", "coreml")))
    from bsconv_export.models import UserInputError
    with pytest.raises(UserInputError, match="already exists; pass --force"):
        export_bundle(shipped, out, ExportOptions(formats=("onnx",)))
    export_bundle(shipped, out, ExportOptions(formats=("onnx",), force=True, replace_anyway=True))
    assert not (out / "model.mlpackage").exists() and (out / "model.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_what_to_ship_lists_each_platforms_verified_files_with_size_latency_and_gate(shared_bundle):
    """The "what to ship" table: per platform (the rows' own ``platforms``), every verified app file,
    its size against the largest, its latency against the fp32 baseline (paired where bench paired it)
    and how much of its gate it uses; the smallest and fastest marked."""
    from bsconv_export.exporter.bench.result import SCHEMA, BenchResult
    from bsconv_export.exporter.bundle.manifest_io import read_manifest
    from bsconv_export.exporter.report.views import ship_view
    manifest = read_manifest(shared_bundle("every-format"))
    lat = {"p50_ms": 1.0, "p90_ms": 1.1, "p99_ms": 1.2, "throughput_per_s": 1000.0}
    bench = BenchResult.from_dict({
        "schema": SCHEMA, "machine": {"cpu": "test"}, "target": "b",
        "results": [{"artifact": "onnx-simplified", "runner": "onnxruntime", "provider": "cpu", "batch": 1,
                     "status": "ok", "latency": lat},
                    {"artifact": "ort", "runner": "ort-format", "provider": "cpu", "batch": 1, "status": "ok",
                     "latency": {**lat, "p50_ms": 2.0}}],
        "paired": [{"artifact": "pte", "runner": "executorch-xnnpack", "baseline": "onnx-simplified", "batch": 1,
                    "status": "ok", "ratio_median": 0.5, "ratio_ci95": [0.45, 0.55], "pairs": 40}]})
    view = ship_view(manifest, bench)
    rows = {(r[0], r[1]): r for r in view.rows}
    assert {p for p, _ in rows} == {"android", "ios"} and ("android", "coreml") not in rows
    assert rows[("android", "pte")][5] == "0.50" and "fastest" in rows[("android", "pte")][7]
    assert rows[("android", "ort")][5] == "2.00 (unpaired)"
    assert rows[("ios", "coreml")][5] == "not timed here"
    assert all(r[6].endswith("%") for r in view.rows)            # every verified file's gate use is known
    smallest = min((r for r in view.rows if r[0] == "ios"), key=lambda r: float(r[3].split()[0]))
    assert "smallest" in smallest[7]
