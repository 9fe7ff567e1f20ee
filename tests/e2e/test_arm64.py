"""The check on the kernels phones run: every artifact with an aarch64 runtime checked on its ARM64
build under QEMU (``check --on arm64``), the kit that makes it possible (``setup arm64``), and fp16
judged honestly where the CPU computes in fp16 (docs/arm64.md).

The slow tests need the kit (``make setup-arm64``; ``make test-all`` makes it)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bsconv_export.cli import app
from bsconv_export.exporter.arm64 import kit
from bsconv_export.exporter.formats import tolerance_for
from bsconv_export.exporter.kit.tolerances import FP16_ARITHMETIC_CPUS

TESTS = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name("bsconv-export"))
ENV = {**os.environ, "ORT_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}
def _kit_missing() -> str | None:
    """Why the ARM64 kit cannot run here (None: it can)."""
    try:
        return None if kit.find_kit() is not None else f"no ARM64 kit here: run '{kit.SETUP_COMMAND}'"
    except Exception as e:  # noqa: BLE001 - a kit that is not what it was made with: skipped, and why
        return str(e)


needs_kit = pytest.mark.skipif(_kit_missing() is not None, reason=_kit_missing() or "")


def test_without_the_kit_the_check_says_the_command_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("BSCONV_EXPORT_CACHE", str(tmp_path / "empty-cache"))
    for args in (["check", str(tmp_path), "--on", "arm64"], ["export", "--out", str(tmp_path / "b"), "--on", "arm64"]):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 2, r.output
        assert r.output.strip().count("\n") == 0 and f"run '{kit.SETUP_COMMAND}'" in r.output, r.output
    assert not (tmp_path / "b").exists() and not (tmp_path / "empty-cache").exists()   # nothing downloaded


def test_on_names_a_target_it_knows():
    r = CliRunner().invoke(app, ["check", "somewhere", "--on", "x86"])
    assert r.exit_code == 2 and "the targets are arm64 and arm64:CPU" in r.output


def test_fp16_is_judged_by_the_arithmetic_the_cpu_has():
    host, a53, a76 = tolerance_for("fp16"), tolerance_for("fp16", "arm64:cortex-a53"), tolerance_for("fp16", "arm64:cortex-a76")
    assert host == a53 and a76 != host and "cortex-a76" in FP16_ARITHMETIC_CPUS
    assert (a76.min_cosine, a76.min_top1_agreement, a76.max_accuracy_drop) == (
        host.min_cosine, host.min_top1_agreement, host.max_accuracy_drop)   # the label gates are the same
    assert tolerance_for("fp32", "arm64:cortex-a76") == tolerance_for("fp32")


@pytest.mark.slow
def test_the_kit_builds_from_its_pins_and_refuses_a_changed_file(tmp_path, monkeypatch):
    monkeypatch.setenv("BSCONV_EXPORT_CACHE", str(tmp_path / "cache"))
    lock = json.loads(kit.LOCK.read_text())
    lock["sysroot"][3]["sha256"] = "0" * 64
    bad = tmp_path / "kit.lock.json"
    bad.write_text(json.dumps(lock))
    monkeypatch.setattr(kit, "LOCK", bad)
    with pytest.raises(Exception, match="is not the pinned file"):
        kit.setup()
    assert not any((tmp_path / "cache").iterdir())   # nothing half-made is left
    # a pin Debian's pool no longer has (here: a version that never existed) is replaced by the package's
    # current file, proven through Debian's signed index
    lock = json.loads((kit.HERE / "kit.lock.json").read_text())
    lock["sysroot"][5]["url"] = lock["sysroot"][5]["url"].replace("_3.4.4-1_", "_0.0-0_")
    gone = tmp_path / "gone.lock.json"
    gone.write_text(json.dumps(lock))
    monkeypatch.setattr(kit, "LOCK", gone)
    said = []
    from bsconv_export.exporter.formats import arm64_parts
    folder = kit.setup(said.append, arm64_parts())
    assert any("libffi8: the pinned file is gone" in s and "signed debian/dists/bookworm" in s for s in said), said
    made = kit.find_kit()
    assert made is not None and made.root == folder and "cortex-a76" in made.cpus()
    from bsconv_export.exporter.formats.executorch.arm64 import part_dir
    if shutil.which("aarch64-linux-gnu-g++"):   # the ExecuTorch runner, cross-compiled into the kit
        assert (part_dir(folder) / "pte-runner").is_file()
    assert kit.setup() == folder   # idempotent: nothing to do the second time


@pytest.fixture(scope="module")
def arm_bundle(tmp_path_factory):
    """The shipped model with every format that has an aarch64 runtime, exported and checked on the
    Cortex-A76. Its fp32 kernels are the A53's too (plain NEON); where the two CPUs' kernels differ —
    fp16 arithmetic, int8 dot products — both run in test_a_fault_only_arm_kernels_expose_is_caught,
    on a 16-pixel model: 402 inputs through the shipped model cost ~25 s per file and CPU under QEMU."""
    out = tmp_path_factory.mktemp("arm") / "bundle"
    formats = "onnx,ort,int8,fp16,pte" + (",tflite,tflite-int8" if _litert_ready() else "")
    p = subprocess.run([CLI, "export", "--out", str(out), "--formats", formats, "--on", "arm64:cortex-a76"],
                       capture_output=True, text=True, timeout=3000, env=ENV)
    return out, p, formats


def _litert_ready() -> bool:
    from bsconv_export.exporter.formats.litert import converter
    return converter.env_python() is not None


@pytest.mark.slow
@needs_kit
def test_the_shipped_bundle_passes_on_the_a76(arm_bundle):
    out, p, formats = arm_bundle
    assert p.returncode == 0, p.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["verdict"] == "passed"
    records = {(r["artifact"], r["target"]): r for r in m["check"]["results"]}
    expected = ["onnx", "onnx-simplified", "ort", "int8", "fp16", "pte"] + (["tflite", "tflite-int8"] if "tflite" in formats else [])
    assert not [t for (_, t) in records if t not in ("host", "arm64:cortex-a76")]   # the CPU named, no other
    for artifact in expected:
        r = records[(artifact, "arm64:cortex-a76")]
        assert r["status"] == "ok" and "cortex-a76" in r["runner"] and "arm64" in r["runner"], r
        host_agreement = records[(artifact, "host")]["metrics"]["top1_agreement"]
        assert r["metrics"]["top1_agreement"] == (1.0 if r["precision"] == "fp32" else host_agreement)
        assert r["accuracy"] >= r["reference_accuracy"] - 0.005   # real held-out digits, on ARM
    # native fp16 kernels really ran on the A76: its error is not x86's fp32-accumulating path's
    host = records[("fp16", "host")]["metrics"]["max_abs"]
    assert records[("fp16", "arm64:cortex-a76")]["metrics"]["max_abs"] > 1.5 * host


@pytest.mark.slow
@needs_kit
def test_a_fault_only_arm_kernels_expose_is_caught(tmp_path):
    """An fp16 network whose cancelling sums overflow only where fp16 arithmetic accumulates in fp16:
    the host and the Cortex-A53 pass it, the Cortex-A76 fails it, so the check fails. ``--on arm64``
    alone means both CPUs; every other file runs on both and passes (int8 on the A53's kernels without
    dot products and the A76's with them)."""
    out = tmp_path / "b"
    p = subprocess.run([CLI, "export", "--model", "custom_models:fp16_overflow", "--input-size", "16",
                        "--formats", "onnx,fp16,int8", "--calibration", "random", "--out", str(out), "--on", "arm64"],
                       capture_output=True, text=True, timeout=1200, env=ENV, cwd=TESTS)
    assert p.returncode == 1, p.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    by = {(r["artifact"], r["target"]): r for r in m["check"]["results"]}
    assert by[("fp16", "host")]["status"] == "ok" and by[("fp16", "arm64:cortex-a53")]["status"] == "ok"
    assert by[("fp16", "arm64:cortex-a76")]["status"] == "failed"
    for artifact in ("onnx", "onnx-simplified", "int8"):
        for cpu in ("cortex-a53", "cortex-a76"):
            r = by[(artifact, f"arm64:{cpu}")]
            assert r["status"] == "ok" and cpu in r["runner"], r
    assert m["verdict"] == "failed"
    # a plain re-check on the host alone passes it again: only the ARM kernels see the fault
    p = subprocess.run([CLI, "check", str(out), "--model", "custom_models:fp16_overflow"], capture_output=True,
                       text=True, timeout=600, env=ENV, cwd=TESTS)
    assert p.returncode == 0, p.stderr[-2000:]


@pytest.mark.slow
@needs_kit
@pytest.mark.parametrize("script,words", [("import sys; sys.exit(3)", "exited with status 3"),
                                          ("import time; time.sleep(120)", "gave no answer within 5 s")])
def test_a_worker_that_dies_or_hangs_is_a_failed_record(tmp_path, shared_bundle, monkeypatch, script, words):
    """The emulated runtime crashing or hanging is a failed record with its reason, never a hang."""
    import bsconv_export.exporter.arm64 as arm64
    from bsconv_export.exporter.formats.onnx.arm64 import OnnxArm64Runner
    worker = tmp_path / "worker.py"
    worker.write_text(script + "\n")
    monkeypatch.setattr(OnnxArm64Runner, "worker", worker)
    monkeypatch.setattr(arm64, "LOAD_TIMEOUT_S", 5)
    bundle = tmp_path / "b"
    shutil.copytree(shared_bundle("onnx-ort-coreml"), bundle)
    r = CliRunner().invoke(app, ["check", str(bundle), "--on", "arm64:cortex-a53", "--json"])
    assert r.exit_code == 1, r.output
    arm = [x for x in json.loads(r.stdout)["results"] if x["target"] == "arm64:cortex-a53" and x["runner"] != "-"]
    assert arm and all(x["status"] == "failed" and words in x["reason"] for x in arm), arm
