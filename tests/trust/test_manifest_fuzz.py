"""Found by outside checks (issue 34): the reader accepted what the writer refuses, an empty manifest
passed, ``make clients`` failed inside CMake. And the sweep of that class: every key of an artifact row
and of a check record removed, null, or of the wrong type, through the six commands that read a
manifest — one line or a failed record, never a traceback, never a manifest written invalid."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from bsconv_export.cli import app
from bsconv_export.exporter.bundle.manifest_io import _schema_validator

from test_hostile import bundle, light_bundle  # noqa: F401 - fixtures

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def manifest(b):
    return json.loads((b / "manifest.json").read_text())


def put(b, d):
    (b / "manifest.json").write_text(json.dumps(d))


def test_a_row_without_its_hash_is_one_line_and_the_manifest_is_not_rewritten(bundle):
    d = manifest(bundle)
    del d["artifacts"][1]["sha256"]
    put(bundle, d)
    before = (bundle / "manifest.json").read_bytes()
    r = invoke("check", bundle)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "artifacts/1/sha256" in r.output and "re-export" in r.output
    assert (bundle / "manifest.json").read_bytes() == before


@pytest.mark.slow
def test_a_manifest_that_lists_nothing_fails_naming_each_model_file(bundle):
    d = manifest(bundle)
    d["artifacts"] = []
    put(bundle, d)
    r = invoke("check", bundle, "--json")
    assert r.exit_code == 1, r.output
    failed = [c for c in json.loads(r.stdout)["results"] if c["status"] == "failed"]
    for name in ("model.onnx", "model.ort", "model.mlpackage"):
        assert any(name in (c["reason"] or "") and "no ok" in c["reason"] for c in failed), (name, failed)


def test_make_clients_says_what_is_missing_before_cmake(tmp_path):
    """Without cmake, g++ or node on the PATH: one line naming them and clients/install-deps, from make."""
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("make", "bash", "sh"):
        (fake / tool).symlink_to(shutil.which(tool))
    r = subprocess.run(["make", "-s", "clients"], cwd=ROOT, env={"PATH": str(fake), "HOME": str(tmp_path)},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    lines = [x for x in r.stderr.splitlines() if "install-deps" in x]
    assert len(lines) == 1 and "cmake" in lines[0], r.stderr
    assert "CMake Error" not in r.stderr + r.stdout and "nlohmann" not in r.stdout


WRONG = {str: 7, int: "7", float: "x", bool: "yes", list: {"a": 1}, dict: [1], type(None): ["x"]}


def _mutations(row: dict):
    """Every field removed, made null (where it is not null already) and given a value of another type."""
    for key, value in row.items():
        yield key, "removed", None
        if value is not None:
            yield key, "null", None
        yield key, "wrong type", WRONG.get(type(value), 3.5)


def _apply(d: dict, key: str, how: str, value):
    if how == "removed":
        del d[key]
    else:
        d[key] = value


@pytest.mark.slow
@pytest.mark.parametrize("section", ["artifact", "check record"])
def test_every_field_removed_null_or_mistyped_is_never_a_traceback(tmp_path, light_bundle, section):
    bundle = light_bundle   # onnxruntime files only: the check below runs once per removed key
    from bsconv_export.exporter.sweep.plan import Job
    from bsconv_export.exporter.sweep.run import already_passed
    image = tmp_path / "digit.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8), "RGB").save(image)
    base = manifest(bundle)
    row_of = (lambda d: d["artifacts"][0]) if section == "artifact" else (lambda d: d["check"]["results"][0])
    accepted = []
    for key, how, value in _mutations(row_of(base)):
        d = json.loads(json.dumps(base))
        _apply(row_of(d), key, how, value)
        assert d != base, (key, how)   # every mutation changes the manifest: none is silently a no-op
        put(bundle, d)
        written = (bundle / "manifest.json").read_bytes()
        commands = [("report", bundle, "--out", tmp_path / "r.md"), ("predict", bundle, image),
                    ("regress", "--baseline", bundle, "--candidate", bundle, "--duration", "1"),
                    ("bench", bundle, "--iters", "3", "--warmup", "1", "--out", tmp_path / "b.json")]
        if how == "removed" and (section == "artifact" or key == "artifact"):
            # the check runs every runner (and replaces the check records): once per artifact key
            commands.append(("check", bundle))
        refused_at_read = True
        for args in commands:
            r = invoke(*args)
            assert "Traceback" not in r.output, (key, how, args, r.output)
            assert r.exception is None or isinstance(r.exception, SystemExit), (key, how, args, repr(r.exception))
            assert r.exit_code in (0, 1, 2), (key, how, args, r.exit_code, r.output)
            refused_at_read &= r.exit_code == 2
            now = (bundle / "manifest.json").read_bytes()
            if now != written:    # a command that rewrote it wrote a valid one
                assert not list(_schema_validator().iter_errors(json.loads(now))), (key, how, args)
                written = now
            if refused_at_read and args[0] == "report":
                break             # the reader refused it: every command does the same, in one line
        put(bundle, d)
        assert already_passed(Job(index=0, out=str(bundle), model={}, options={"formats": ("onnx",)})) in (
            None, "passed before with the same inputs")
        if not refused_at_read:
            accepted.append((key, how))
    # what the schema refuses is refused at once; a wrong type is never read as something else
    assert not [a for a in accepted if a[1] == "wrong type"], accepted
