"""The format table and the runner registry: one row and one class make a new format.

A toy format, registered here and nowhere else, is exported, checked, benchmarked
and listed by the CLI. Its runner also shows what happens when a runner breaks
the contract (wrong output shape): a failed record naming both shapes.
"""
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bsconv_export.cli import app
from bsconv_export.exporter.bench import BenchOptions, run_bench
from bsconv_export.exporter.bundle import export_bundle
from bsconv_export.exporter.check import CheckOptions
from bsconv_export.exporter.context import ExportOptions
from bsconv_export.exporter.formats import FORMATS, Format, plan, reproduce_command
from bsconv_export.exporter.records import ArtifactRecord, Status
from bsconv_export.exporter.runners import Runner, register_runner, runners_for, unregister_runner

REPO = Path(__file__).resolve().parents[1]


def export_toy(ctx):
    """The toy format: the best ONNX file, under another name."""
    source_name, src = ctx.onnx_source()
    shutil.copyfile(src, ctx.workdir / "model.toy")
    return ArtifactRecord(format="toy", status=Status.OK, path="model.toy", details={"source": source_name})


class ToyRunner(Runner):
    name = "toy-runner"
    kinds = ("toy",)
    squash = False   # set to break the output contract

    def load(self):
        import onnxruntime as ort
        self.session = ort.InferenceSession(self.path.read_bytes(), providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.input_shape = tuple(self.session.get_inputs()[0].shape)
        self.fixed_batch = self.input_shape[0]
        return self

    def infer(self, inputs):
        (y,) = self.session.run(None, inputs)
        return {"logits": y[:, :3] if self.squash else y}


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(FORMATS, "toy", Format("toy", export_toy, "model.toy", "toy", "a test format",
                                               requires=("onnx",)))
    register_runner(ToyRunner)
    yield
    unregister_runner(ToyRunner)
    ToyRunner.squash = False


def test_a_new_format_is_one_row_and_one_runner(tmp_path, toy, shipped):
    assert [f.name for f in plan(ExportOptions(formats=("toy",)))] == ["onnx", "onnx-simplified", "toy"]
    r = export_bundle(shipped, tmp_path / "b", ExportOptions(formats=("toy",)), check=CheckOptions())
    assert r.ok, r.manifest.check
    toy_checks = [c for c in r.manifest.check.records if c.artifact == "toy"]
    assert [(c.runner, c.status) for c in toy_checks] == [("toy-runner", Status.OK)]
    assert toy_checks[0].metrics["max_abs"] < 1e-4
    bench = run_bench(tmp_path / "b", BenchOptions(warmup=1, duration=0.2, window=5))
    assert ("toy", "ok") in {(row["artifact"], row["status"]) for row in bench["results"]}
    listed = json.loads(CliRunner().invoke(app, ["formats", "--json"]).stdout)["formats"]
    row = next(f for f in listed if f["name"] == "toy")
    assert row["verified_by"] == ["toy-runner"] and row["requires"] == ["onnx"]
    assert "--formats toy" in r.manifest.command


@pytest.mark.slow
def test_a_runner_that_breaks_the_output_contract_is_a_failed_record(tmp_path, toy, shipped):
    ToyRunner.squash = True
    r = export_bundle(shipped, tmp_path / "b", ExportOptions(formats=("toy",)), check=CheckOptions())
    rec = next(c for c in r.manifest.check.records if c.artifact == "toy")
    assert not r.ok and rec.status is Status.FAILED
    assert "'logits' has shape [402, 3], PyTorch's has [402, 10]" in rec.reason


@pytest.mark.slow
def test_an_artifact_no_runner_can_load_is_unverified(tmp_path, monkeypatch, shipped):
    monkeypatch.setitem(FORMATS, "toy", Format("toy", export_toy, "model.toy", "nobody-loads-this", "orphan",
                                               requires=("onnx",)))
    r = export_bundle(shipped, tmp_path / "b", ExportOptions(formats=("toy",)), check=CheckOptions())
    rec = next(c for c in r.manifest.check.records if c.artifact == "toy")
    assert rec.status is Status.UNVERIFIED and not r.ok and r.manifest.verdict == "failed"


def test_every_row_is_verified_and_timed_by_registered_runners():
    for f in FORMATS.values():
        assert runners_for(f.kind), f"{f.name}: no runner verifies kind {f.kind}"
        assert all(r in FORMATS for r in f.requires)


def test_options_are_validated_and_reproduced_from_the_table(tmp_path):
    from bsconv_export.models import UserInputError
    from bsconv_export.models.registry import InputSpec
    from bsconv_export.exporter.formats import validate_options
    spec = InputSpec(size=32, num_classes=10, labels=tuple("0123456789"))
    with pytest.raises(UserInputError, match="--keep-fp32 applies only to int8"):
        validate_options(ExportOptions(formats=("onnx",), keep_fp32=("x",)), spec)
    opts = ExportOptions(formats=("onnx", "coreml-fp16"), palettize_bits=4, coreml_precision="fp32")
    validate_options(opts, spec)
    cmd = reproduce_command(["arch"], opts, tmp_path / "o", 32)
    assert "--palettize-bits 4" in cmd and "--keep-fp32" not in cmd and "--calibration" not in cmd


def test_the_wheel_installs_one_import_root(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "cli.py"):
        shutil.copy(REPO / name, src / name)
    for folder in ("models", "exporter"):
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"bsconv_export"}
    assert "bsconv_export/cli.py" in names and "bsconv_export/models/checkpoints/" \
        "digits_cifar_mobilenetv2_w1d4_bsconvs_p1d6.pt" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "bsconv_export.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_help_does_not_import_heavy_backends():
    code = ("import sys; from bsconv_export.cli import app; from typer.testing import CliRunner; "
            "CliRunner().invoke(app, ['--help']); CliRunner().invoke(app, ['models']); "
            "CliRunner().invoke(app, ['export', '--help']); "
            "print(sorted(m for m in ('coremltools', 'onnxruntime', 'onnxsim', 'executorch', 'onnxscript', "
            "'torchao') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.stdout.strip() == "[]", p.stdout + p.stderr[-1000:]
