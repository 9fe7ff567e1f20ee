"""Any BSConv network: the reference's ResNets from its checkpoints, --model, --program, input specs."""
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bsconv_export.cli import app
from bsconv_export.exporter.formats import FORMATS
from bsconv_export.exporter.bundle.manifest_io import read_manifest

from test_zoo_check import realistic_statistics

# exports many formats or models: make test-all, not the fast tier
pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name("bsconv-export"))
FP32 = ",".join(f.name for f in FORMATS.values() if f.selectable and f.precision == "fp32")
runner = CliRunner()


@pytest.fixture
def in_tests(monkeypatch):
    """--model imports from the current folder, as a user's own module would be."""
    monkeypatch.chdir(TESTS)


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_passed(bundle: Path, formats: str):
    m = read_manifest(bundle)
    assert m.verdict == "passed", [(a.format, a.error) for a in m.artifacts if not a.ok]
    checked = {r.artifact for r in m.check.records if r.status.value == "ok"}
    assert set(formats.split(",")) <= checked, checked
    return m


# --- the reference's ResNets, from its own checkpoints -----------------------------------------

# the ImageNet ResNet-18 at 224 (~60 s) runs in make test-zoo; make test keeps the CIFAR WRN
@pytest.mark.parametrize("arch", ["cifar_wrn16_4_bsconvu", pytest.param("resnet18_bsconvs_p1d6", marks=pytest.mark.zoo)])
def test_reference_resnet_checkpoint_exports_to_every_fp32_format(tmp_path, arch):
    ref_pkg = pytest.importorskip("bsconv.pytorch")
    torch.manual_seed(0)
    ref = ref_pkg.get_model(arch, num_classes=10)
    realistic_statistics(ref, type("S", (), {"value_range": (0.0, 1.0),
                                             "shape": (3, 32, 32) if arch.startswith("cifar") else (3, 224, 224)})())
    ckpt = tmp_path / "ref.pth"
    torch.save({"model_state_dict": ref.state_dict()}, ckpt)
    r = cli("export", arch, "--checkpoint", ckpt, "--out", tmp_path / "b", "--formats", FP32)
    assert r.exit_code == 0, r.output
    m = assert_passed(tmp_path / "b", FP32)
    assert m.model.source.kind == "zoo" and m.model.checkpoint == str(ckpt)


# --- --model: the user's own network ----------------------------------------------------------

def test_entry_point_model_exports_checks_and_reproduces(tmp_path, in_tests):
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"digit {i}\n" for i in range(10)))
    out = tmp_path / "b"
    r = cli("export", "--model", "custom_models:tiny", "--model-arg", "width=4", "--input-size", 32,
            "--labels", labels, "--out", out, "--formats", FP32, "--json")
    assert r.exit_code == 0, r.output
    m = assert_passed(out, FP32)
    assert m.model.source.to_dict() == {"kind": "entry_point", "entry_point": "custom_models:tiny",
                                        "model_args": {"width": "4"}}
    assert m.model.input_spec.labels[3] == "digit 3" and m.model.num_classes == 10
    assert "--model custom_models:tiny --model-arg width=4" in m.command and "--labels" in m.command
    # a bundle never imports the code it names: check asks for --model, then runs it
    r = cli("check", out)
    assert r.exit_code == 2 and "pass --model custom_models:tiny" in r.output
    r = cli("check", out, "--model", "custom_models:tiny")
    assert r.exit_code == 0, r.output
    # the reproduce command, run in a fresh process, rebuilds the same ONNX file
    again = tmp_path / "again"
    cmd = m.command.replace(str(out), str(again)).replace("bsconv-export", CLI, 1).replace(FP32, "onnx")
    p = subprocess.run(cmd, shell=True, cwd=TESTS, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert (again / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()


def test_entry_point_weights_from_a_checkpoint(tmp_path, in_tests):
    import custom_models
    trained = custom_models.tiny(width=4, seed=7)
    ckpt = tmp_path / "w.pt"
    torch.save(trained.state_dict(), ckpt)
    r = cli("evaluate", "--model", "custom_models:tiny", "--model-arg", "width=4", "--checkpoint", ckpt,
            "--input-size", 8, "--json")
    assert r.exit_code == 2 and "pass labelled data with --data" in r.output   # not a digits model
    data = tmp_path / "d.npz"
    np.savez(data, input=np.random.default_rng(0).random((4, 3, 8, 8), dtype=np.float32), label=np.arange(4))
    r = cli("evaluate", "--model", "custom_models:tiny", "--model-arg", "width=4", "--checkpoint", ckpt,
            "--input-size", 8, "--data", data, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["samples"] == 4, r.output
    # the weights are the checkpoint's (seed 7), not the factory's (seed 0)
    x = torch.rand(4, 3, 8, 8)
    from bsconv_export.models.loaders import resolve_request
    from bsconv_export.models.request import ModelRequest, SpecOptions
    loaded = resolve_request(ModelRequest(entry_point="custom_models:tiny", model_args=("width=4",),
                                          checkpoint=ckpt, spec=SpecOptions(input_size=8)))
    torch.testing.assert_close(loaded.model(x), trained(x))
    r = cli("info", "--model", "custom_models:tiny", "--checkpoint", ckpt, "--input-size", 8)
    assert r.exit_code == 2 and "does not fit" in r.output      # width 8 model, width 4 weights


@pytest.mark.parametrize("args, message", [
    ([], "pass --input-spec spec.json, or --input-size"),
    (["--input-size", "32", "--model-arg", "width"], "is not key=value"),
    (["--input-size", "32", "--model-arg", "depth=3"], "check --model-arg"),
    (["--input-size", "32", "--mean", "0.5"], "both mean and std"),
    (["--input-size", "32", "--mean", "0.5,0.5", "--std", "1,1"], "1 or 3 numbers"),
])
def test_entry_point_bad_input_is_one_line_exit_2(in_tests, args, message):
    r = cli("info", "--model", "custom_models:tiny", *args)
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("entry, message", [
    ("no_such_module:f", "cannot import no_such_module"),
    ("custom_models:missing", "has no 'missing'"),
    ("custom_models:not_a_module", "not a torch.nn.Module"),
    ("custom_models", "is not package.module:factory"),
])
def test_bad_entry_points_are_one_line_errors(in_tests, entry, message):
    r = cli("info", "--model", entry, "--input-size", 32)
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output


def test_input_spec_file(tmp_path, in_tests):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"size": 16, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                                "labels": [f"c{i}" for i in range(10)], "color_order": "BGR"}))
    r = cli("info", "--model", "custom_models:tiny", "--input-spec", spec, "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["input_spec"]["normalization"] == "mean_std" and d["input_spec"]["size"] == 16
    assert d["input_spec"]["color_order"] == "BGR" and d["input_spec"]["labels"][0] == "c0"
    assert d["convolutions"]["counts"] == {"plain kxk": 1, "BSConv-U": 1, "BSConv-S": 1}
    assert d["source"] == {"kind": "entry_point", "entry_point": "custom_models:tiny", "model_args": {}}
    for content, message in [("{", "not valid JSON"), ('{"size": 16, "colour": "RGB"}', "unknown key 'colour'"),
                             ("[1]", "not an object"), ('{"size": 16, "labels": ["a"]}', "1 labels given for 10"),
                             ('{"size": NaN}', "NaN is not a JSON number"),
                             ('{"size": 16, "channels": 1}', "does not run on a [1, 1, 16, 16] input")]:
        spec.write_text(content)
        r = cli("info", "--model", "custom_models:tiny", "--input-spec", spec)
        assert r.exit_code == 2 and message in r.output, (content, r.output)


def test_a_zoo_model_keeps_its_own_spec():
    r = cli("info", "cifar_resnet20", "--mean", "0.5", "--std", "0.2")
    assert r.exit_code == 2 and "has its own input spec" in r.output
    r = cli("info", "cifar_resnet20", "--model", "x:y")
    assert r.exit_code == 2 and "pass only one" in r.output


# --- --program: an ExportedProgram file -------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_program(tmp_path_factory):
    sys.path.insert(0, str(TESTS))
    import custom_models
    model = custom_models.tiny(width=4)
    d = tmp_path_factory.mktemp("programs")
    torch.export.save(torch.export.export(model, (torch.rand(1, 3, 32, 32),)), d / "tiny.pt2")
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.export.save(torch.export.export(model, (torch.rand(2, 3, 32, 32),), dynamic_shapes=({0: batch},)),
                      d / "tiny_dyn.pt2")
    return d, model


def test_program_exports_to_every_fp32_format_and_checks(tmp_path, tiny_program):
    d, model = tiny_program
    out = tmp_path / "b"
    r = cli("export", "--program", d / "tiny.pt2", "--input-size", 32, "--out", out, "--formats", FP32)
    assert r.exit_code == 0, r.output
    m = assert_passed(out, FP32)
    assert m.model.source.kind == "program" and len(m.model.source.program_sha256) == 64
    assert m.model.params == sum(p.numel() for p in model.parameters())
    assert cli("check", out).exit_code == 0
    r = cli("export", "--program", d / "tiny.pt2", "--input-size", 32, "--out", tmp_path / "c", "--dynamic-batch",
            "--formats", "onnx")
    assert r.exit_code == 2 and "fixed batch of 1" in r.output


def test_dynamic_program_is_the_bundles_program(tmp_path, tiny_program):
    d, model = tiny_program
    out = tmp_path / "b"
    r = cli("export", "--program", d / "tiny_dyn.pt2", "--input-size", 32, "--dynamic-batch", "--out", out,
            "--formats", "pt2,onnx")
    assert r.exit_code == 0, r.output
    assert_passed(out, "pt2,onnx")
    import onnxruntime as ort
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((5, 3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(sess.run(None, {"input": x})[0], model(torch.from_numpy(x)).detach().numpy(),
                               atol=1e-5)


def test_a_malicious_program_is_refused_without_running(tmp_path, tiny_program):
    d, _ = tiny_program
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with zipfile.ZipFile(d / "tiny.pt2") as z:
        entries = {i.filename: z.read(i) for i in z.infolist()}
    cfg_name = next(n for n in entries if n.endswith("data/weights/model_weights_config.json"))
    cfg = json.loads(entries[cfg_name])
    first = next(iter(cfg["config"].values()))
    first["use_pickle"] = True
    entries[cfg_name] = json.dumps(cfg).encode()
    entries[cfg_name.replace("model_weights_config.json", first["path_name"])] = pickle.dumps(Payload())
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(evil, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    for command in (["info"], ["export", "--out", tmp_path / "b"]):
        r = cli(*command, "--program", evil, "--input-size", 32)
        assert r.exit_code == 2 and "pickle" in r.output and "Traceback" not in r.output
    assert not marker.exists() and not (tmp_path / "b").exists()


def test_program_without_a_spec_or_with_a_wrong_size(tiny_program):
    d, _ = tiny_program
    r = cli("info", "--program", d / "tiny.pt2")
    assert r.exit_code == 2 and "--input-spec" in r.output
    r = cli("info", "--program", d / "tiny.pt2", "--input-size", 64)
    assert r.exit_code == 2 and "takes 32x32" in r.output
    r = cli("info", "--program", d / "tiny.pt2", "--input-size", 32, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["convolutions"]["from"] == "graph"
