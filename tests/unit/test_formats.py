"""The format table the plugins make: rows, runners, options declared once, the package's shape.

A third-party plugin, installed from outside the repository, is tested in test_plugins.py.
"""
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bsconv_export.exporter.formats import FORMATS, complete_options, plugins, reproduce_command, runners_for
from bsconv_export.exporter.kit.options import ExportOptions

REPO = Path(__file__).resolve().parents[2]


def test_every_row_is_verified_and_timed_by_registered_runners():
    timed = 0
    for f in FORMATS.values():
        assert runners_for(f.kind), f"{f.name}: no runner verifies kind {f.kind}"
        assert all(r in FORMATS for r in f.requires)
        if f.benchmark:   # a row bench times has a runner that times its kind
            assert runners_for(f.kind, purpose="time"), f"{f.name}: bench times it, but no runner times kind {f.kind}"
            timed += 1
    assert timed >= 5, "fewer rows are timed than the built-ins alone: the table is broken"


def test_options_are_validated_and_reproduced_from_the_table(tmp_path):
    from bsconv_export.models import UserInputError
    from bsconv_export.models.registry import InputSpec
    from bsconv_export.exporter.formats import validate_options
    spec = InputSpec(size=32, num_classes=10, labels=tuple("0123456789"))
    with pytest.raises(UserInputError, match="--keep-fp32 applies only to int8"):
        validate_options(complete_options(ExportOptions(formats=("onnx",), keep_fp32=("x",))), spec)
    with pytest.raises(UserInputError, match="--palettize-bits must be one of 1, 2, 3, 4, 6, 8, not 5"):
        validate_options(complete_options(ExportOptions(formats=("coreml-palette",), palettize_bits=5)), spec)
    with pytest.raises(UserInputError, match="unknown export option.*no_such"):
        complete_options(ExportOptions(formats=("onnx",), no_such=1))
    opts = complete_options(ExportOptions(formats=("onnx", "coreml-palette"), palettize_bits=4, coreml_precision="fp32"))
    validate_options(opts, spec)
    cmd = reproduce_command(["arch"], opts, tmp_path / "o", 32)
    assert "--palettize-bits 4" in cmd and "--keep-fp32" not in cmd and "--calibration" not in cmd


def test_the_wheel_installs_one_import_root(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "cli.py"):
        shutil.copy(REPO / name, src / name)
    for folder in ("kernel", "models", "exporter"):
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
    text = zipfile.ZipFile(wheel).read(entry).decode()
    assert "bsconv_export.cli:main" in text
    # the built-in formats are found the way a third-party plugin is: one entry point each
    assert "[bsconv_export.formats]" in text
    for p in plugins():
        assert f"{p.name} = {p.module}" in text
    assert {n.rsplit("/", 2)[-2] for n in names if n.startswith("bsconv_export/exporter/formats/")
            and n.endswith("/__init__.py")} >= {"pt2", "onnx", "coreml", "executorch"}


def test_help_does_not_import_heavy_backends():
    code = ("import sys; from bsconv_export.cli import app; from typer.testing import CliRunner; "
            "CliRunner().invoke(app, ['--help']); CliRunner().invoke(app, ['models']); "
            "CliRunner().invoke(app, ['export', '--help']); "
            "print(sorted(m for m in ('coremltools', 'onnxruntime', 'onnxsim', 'executorch', 'onnxscript', "
            "'torchao') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.stdout.strip() == "[]", p.stdout + p.stderr[-1000:]


def test_the_manifest_records_every_option_and_reads_the_schema_3_fields_as_options(shared_bundle):
    from bsconv_export.exporter.bundle.manifest_io import manifest_from_dict
    d = json.loads((shared_bundle("onnx-ort-coreml") / "manifest.json").read_text())
    assert d["schema_version"] == 4
    assert d["export"]["options"]["coreml_input"] == "tensor" and d["export"]["options"]["keep_fp32"] == []
    old = json.loads(json.dumps(d))
    old["schema_version"] = 3
    del old["export"]["options"]
    old["export"].update(opset=18, coreml_precision="fp16", coreml_input="image", simplify=False)
    m = manifest_from_dict(old)
    assert m.schema_version == 4 and m.export.options == {"opset": 18, "coreml_precision": "fp16",
                                                          "coreml_input": "image", "simplify": False}
    bad = json.loads(json.dumps(d))
    bad["export"]["options"]["opset"] = {"deep": [1]}
    with pytest.raises(Exception, match="option 'opset' must be a JSON scalar"):
        manifest_from_dict(bad)
