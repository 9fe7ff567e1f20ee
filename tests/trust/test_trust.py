"""Trust at the edges: what a hostile bundle, a careless flag or bad data can and cannot do.

One test (or a few) per class: data loss, escape by path and by symlink, writes
through planted links, nothing-checked, the concurrent claim, bad npz kinds, NaN
weights, bounded sizes, leftovers, permissions, and no network.
"""
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bsconv_export.cli import app
from bsconv_export.exporter.export.run import export_bundle
from bsconv_export.exporter.check.run import CheckOptions
from bsconv_export.exporter.kit.options import ExportOptions
from bsconv_export.exporter.bundle.manifest_io import read_manifest
from bsconv_export.exporter.bundle.claim import OutClaim
from bsconv_export.models import UserInputError
from bsconv_export.models.checkpoint import DEFAULT_CHECKPOINT

runner = CliRunner()
ONNX_ONLY = ExportOptions(formats=("onnx",))


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_exit_2(r, *needles):
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()   # progress lines may come first; the error is one line
    assert [x for x in lines if x.startswith("error:")] == lines[-1:] and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


@pytest.fixture(scope="module")
def checked(tmp_path_factory, shipped):
    """A checked ONNX-only bundle of the shipped model."""
    out = tmp_path_factory.mktemp("trust") / "b"
    r = export_bundle(shipped, out, ONNX_ONLY, check=CheckOptions())
    assert r.ok
    return out


@pytest.fixture
def bundle(tmp_path, checked):
    dst = tmp_path / "b"
    shutil.copytree(checked, dst)
    return dst


def edit_manifest(bundle, fn):
    d = json.loads((bundle / "manifest.json").read_text())
    fn(d)
    (bundle / "manifest.json").write_text(json.dumps(d))


# --- data loss ---------------------------------------------------------------------------------

def test_force_never_deletes_a_folder_that_is_not_our_bundle(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    one_line_exit_2(invoke("export", "--out", mine, "--force", "--formats", "onnx"), "holds no manifest.json")
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_force_never_deletes_extra_files_in_a_bundle(tmp_path, bundle):
    (bundle / "notes.txt").write_text("mine")
    one_line_exit_2(invoke("export", "--out", bundle, "--force", "--formats", "onnx"), "notes.txt")
    assert (bundle / "notes.txt").exists() and (bundle / "model.onnx").exists()


def test_force_refuses_the_working_folder_and_its_parents(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("x")
    monkeypatch.chdir(work)
    for out in (".", str(work), "..", str(tmp_path)):
        r = invoke("export", "--out", out, "--force", "--formats", "onnx")
        assert r.exit_code == 2 and "Traceback" not in r.stderr, (out, r.output)
    assert (work / "keep.txt").exists()


def test_force_refuses_a_folder_holding_the_input_checkpoint(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    ckpt = d / "my.pt"
    shutil.copy(DEFAULT_CHECKPOINT, ckpt)
    one_line_exit_2(invoke("export", "--checkpoint", ckpt, "--out", d, "--force", "--formats", "onnx"), "input")
    assert ckpt.read_bytes() == DEFAULT_CHECKPOINT.read_bytes()


@pytest.mark.slow
def test_a_replacement_that_fails_its_check_keeps_the_old_bundle(tmp_path, bundle, shipped, monkeypatch):
    before = (bundle / "model.onnx").read_bytes()
    import copy
    broken = copy.deepcopy(shipped.model)
    with torch.no_grad():
        broken.classifier.conv.bias.add_(0.5)   # the original the new export is checked against differs
    from bsconv_export.exporter.export import run as b
    real = b.run_check
    monkeypatch.setattr(b, "run_check", lambda tmp, m, model, *a, **k: real(tmp, m, broken, *a, **k))
    r = export_bundle(shipped, bundle, ExportOptions(formats=("onnx",), force=True), check=CheckOptions())
    assert r.kept_old and not r.ok
    assert (bundle / "model.onnx").read_bytes() == before and read_manifest(bundle).passed
    assert sorted(p.name for p in bundle.parent.iterdir()) == ["b"]  # nothing left beside it


def test_force_with_no_check_cannot_replace_silently(bundle):
    one_line_exit_2(invoke("export", "--out", bundle, "--force", "--no-check", "--formats", "onnx"), "--replace-anyway")


def test_train_never_overwrites_without_force(tmp_path):
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"precious")
    one_line_exit_2(invoke("train", "--out", ckpt, "--epochs", "1"), "already exists")
    assert ckpt.read_bytes() == b"precious"
    r = invoke("train", "--epochs", "1")
    assert r.exit_code == 2 and "--out" in r.output  # no default that overwrites the shipped model


@pytest.mark.slow
def test_concurrent_exports_to_one_place_cannot_both_win(tmp_path, shipped):
    out = tmp_path / "b"
    with OutClaim(out, force=False):
        with pytest.raises(UserInputError, match="another export to .* is running"):
            export_bundle(shipped, out, ONNX_ONLY)
    assert not out.exists()
    export_bundle(shipped, out, ONNX_ONLY)  # the claim is released
    assert not (tmp_path / ".b.lock").exists()


# --- escape by path, by symlink, write-through -------------------------------------------------

@pytest.mark.parametrize("path", ["../outside.onnx", "/etc/passwd", "sub/../../outside.onnx"])
def test_check_refuses_artifact_paths_that_leave_the_bundle(tmp_path, bundle, path):
    (tmp_path / "outside.onnx").write_bytes((bundle / "model.onnx").read_bytes())
    edit_manifest(bundle, lambda d: d["artifacts"][0].update(path=path))
    one_line_exit_2(invoke("check", bundle), "leaves the bundle")


def test_check_refuses_symlinked_artifacts(tmp_path, bundle):
    outside = tmp_path / "outside.onnx"
    shutil.move(bundle / "model.onnx", outside)
    os.symlink(outside, bundle / "model.onnx")
    one_line_exit_2(invoke("check", bundle), "symbolic link")


@pytest.mark.slow
def test_mlpackage_items_must_stay_inside(tmp_path, shipped):
    out = tmp_path / "c"
    export_bundle(shipped, out, ExportOptions(formats=("coreml",)))
    man = out / "model.mlpackage" / "Manifest.json"
    d = json.loads(man.read_text())
    next(iter(d["itemInfoEntries"].values()))["path"] = "../../../outside"
    man.write_text(json.dumps(d))
    one_line_exit_2(invoke("check", out), "leaves the bundle")


def test_bench_and_report_never_write_through_planted_links(tmp_path, bundle):
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    for name in ("bench.json", "report.md"):
        os.symlink(victim, bundle / name)
    one_line_exit_2(invoke("bench", bundle, "--duration", "0.2", "--warmup", "1"), "bench.json")
    os.unlink(bundle / "bench.json")
    r = invoke("bench", bundle, "--duration", "0.2", "--warmup", "1")
    assert r.exit_code == 0, r.output
    one_line_exit_2(invoke("report", bundle), "report.md")
    assert victim.read_text() == "untouched" and (bundle / "report.md").is_symlink()
    os.unlink(bundle / "bench.json")
    os.symlink(victim, bundle / "bench.json")
    one_line_exit_2(invoke("report", bundle), "not a bench result")


# --- nothing checked is not passed -------------------------------------------------------------

def test_a_bundle_with_no_artifacts_fails_the_check(bundle):
    for name in ("model.onnx", "model.sim.onnx"):
        (bundle / name).unlink()
    edit_manifest(bundle, lambda d: d.update(artifacts=[]))
    r = invoke("check", bundle, "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["passed"] is False


def test_emptying_the_manifest_rows_hides_no_file(bundle):
    """The files decide what is checked: with every row gone the model files are still verified."""
    edit_manifest(bundle, lambda d: d.update(artifacts=[]))
    r = invoke("check", bundle, "--json")
    assert {x["artifact"] for x in json.loads(r.stdout)["results"]} == {"onnx", "onnx-simplified"}, r.output


def test_an_unknown_format_is_unverified_and_fails(bundle):
    from bsconv_export.exporter.kit.records import path_sha256
    shutil.copy(bundle / "model.onnx", bundle / "model.engine")   # a format no installed plugin writes
    edit_manifest(bundle, lambda d: d["artifacts"].append({**d["artifacts"][0], "format": "tensorrt",
                                                           "path": "model.engine",
                                                           "sha256": path_sha256(bundle / "model.engine")}))
    r = invoke("check", bundle, "--json")
    assert r.exit_code == 1
    rec = next(x for x in json.loads(r.stdout)["results"] if x["artifact"] == "model.engine")
    assert rec["status"] == "unverified" and "nothing can vouch for it" in rec["reason"]


def test_check_exits_1_on_a_bundle_whose_stages_failed(bundle):
    edit_manifest(bundle, lambda d: d["artifacts"].append({"format": "ort", "status": "failed", "error": "boom"}))
    r = invoke("check", bundle)
    assert r.exit_code == 1 and "failed at export" in r.stderr


def test_loose_user_tolerances_are_recorded_beside_the_verdict_not_over_it(bundle):
    edit_manifest(bundle, lambda d: d["artifacts"][0].update(sha256="0" * 64))  # a tampered file
    r = invoke("check", bundle, "--json")
    assert r.exit_code == 1 and "sha256 differs" in r.stdout
    assert read_manifest(bundle).verdict == "failed"
    r = invoke("check", bundle, "--atol", "100", "--rtol", "100")
    assert r.exit_code == 1  # the hash still does not match: no tolerance buys that
    m = read_manifest(bundle)
    assert m.verdict == "failed" and len(m.user_checks) == 1 and m.user_checks[0].options["atol"] == 100


def test_a_tampered_artifact_fails_and_is_named(bundle):
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[-1] ^= 1
    (bundle / "model.onnx").write_bytes(bytes(data))
    r = invoke("check", bundle, "--json")
    assert r.exit_code == 1 and "model.onnx changed since the export" in r.stdout


def test_renamed_input_or_output_fails_cleanly(bundle):
    import onnx
    from helpers import rehash
    path = bundle / "model.sim.onnx"
    model = onnx.load(path)
    for n in model.graph.node:
        n.input[:] = ["image" if i == "input" else i for i in n.input]
        n.output[:] = ["scores" if o == "logits" else o for o in n.output]
    model.graph.input[0].name = "image"
    model.graph.output[0].name = "scores"
    onnx.save(model, path)
    rehash(bundle)
    r = invoke("check", bundle, "--json")
    assert r.exit_code == 1 and "Traceback" not in r.output
    rec = next(x for x in json.loads(r.stdout)["results"] if x["artifact"] == "onnx-simplified")
    assert rec["status"] == "failed" and "['image']" in rec["reason"]


def test_labels_that_disagree_with_the_manifest_fail(bundle):
    import onnx
    from helpers import rehash
    path = bundle / "model.onnx"
    model = onnx.load(path)
    labels = next(p for p in model.metadata_props if p.key == "labels")
    swapped = [str(i) for i in range(10)]
    swapped[3], swapped[5] = "5", "3"
    labels.value = json.dumps(swapped)
    onnx.save(model, path)
    rehash(bundle)
    r = invoke("check", bundle, "--json")
    rec = next(x for x in json.loads(r.stdout)["results"] if x["artifact"] == "onnx")
    assert r.exit_code == 1 and rec["status"] == "failed" and "labels differ" in rec["reason"] and "index 3" in rec["reason"]


# --- bad input: one line, exit 2 ---------------------------------------------------------------

def _npz(tmp_path, **arrays):
    p = tmp_path / "d.npz"
    np.savez(p, **arrays)
    return p


GOOD = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)


@pytest.mark.parametrize("kind,make,needle", [
    ("uint8", lambda: {"input": (GOOD * 255).astype(np.uint8)}, "divide by 255"),
    ("0..255 floats", lambda: {"input": GOOD * 255}, "divide by 255"),
    ("nan", lambda: {"input": np.where(GOOD > 0.5, np.nan, GOOD).astype(np.float32)}, "NaN/Inf"),
    ("no samples", lambda: {"input": GOOD[:0]}, "no samples"),
    ("strings", lambda: {"input": np.array(["a", "b"])}, "dtype"),
    ("labels out of range", lambda: {"input": GOOD, "label": np.array([0, 1, 2, 12])}, "outside the model's 0..9"),
    ("wrong shape", lambda: {"input": GOOD[:, :, :16]}, "expected [N, 3, 32, 32]"),
    ("no input", lambda: {"x": GOOD}, "no array named 'input'"),
])
def test_bad_npz_data_is_one_line_exit_2(tmp_path, bundle, kind, make, needle):
    p = _npz(tmp_path, **make())
    for cmd in (["check", bundle, "--data", p], ["evaluate", "--data", p]):
        one_line_exit_2(invoke(*cmd), needle)


def test_npy_and_object_arrays_are_refused(tmp_path, bundle):
    npy = tmp_path / "d.npy"
    np.save(npy, GOOD)
    one_line_exit_2(invoke("check", bundle, "--data", npy), "not an .npz")
    obj = tmp_path / "o.npz"
    np.savez(obj, input=np.array([GOOD, None], dtype=object))
    one_line_exit_2(invoke("check", bundle, "--data", obj), "plain numeric")


def test_nan_weights_are_refused_with_the_tensor_name(tmp_path):
    sd = torch.load(DEFAULT_CHECKPOINT, weights_only=True)
    sd["state_dict"]["classifier.conv.weight"][0, 0] = float("nan")
    p = tmp_path / "nan.pt"
    torch.save(sd, p)
    one_line_exit_2(invoke("export", "--checkpoint", p, "--out", tmp_path / "o"), "classifier.conv.weight", "NaN")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args,needle", [
    (["--batch", "4"], "coreml takes batch 1 only"),
    (["--formats", "onnx", "--palettize-bits", "4"], "--palettize-bits applies only to coreml-palette"),
    (["--formats", "onnx", "--coreml-input", "image"], "--coreml-input applies only to coreml"),
])
def test_options_that_cannot_work_are_refused_before_work(tmp_path, args, needle):
    one_line_exit_2(invoke("export", "--out", tmp_path / "o", *args), needle)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("threads", ["0", "100000", "two"])
def test_threads_beyond_the_cores_are_refused(bundle, threads):
    one_line_exit_2(invoke("bench", bundle, "--threads", threads), "usable cores")


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d["model"]["input_spec"].update(size=100000), "outside 1..4096"),
    (lambda d: d["export"].update(input_shape=[1, 3, 100000, 100000]), "beyond this tool's bounds"),
    (lambda d: d["model"].update(num_classes="ten"), "must be int"),
    (lambda d: d.update(artifacts={"a": 1}), "must be list"),
    (lambda d: d.update(schema_version=99), "upgrade bsconv-export"),
    (lambda d: d["artifacts"][0].update(status="great"), "unknown"),
])
def test_malformed_or_huge_manifests_are_bad_input(bundle, mutate, needle):
    edit_manifest(bundle, mutate)
    one_line_exit_2(invoke("check", bundle), needle)


def test_malformed_bench_results_are_bad_input(tmp_path, bundle):
    bad = tmp_path / "bench.json"
    bad.write_text(json.dumps({"results": [{"status": "ok", "provider": "cpu", "batch": 1, "samples_ms": "fast"}]}))
    one_line_exit_2(invoke("regress", "--baseline", bad, "--candidate", bundle, "--duration", "1"),
                    "not a bsconv-export-bench/1 result")
    bad.write_text(json.dumps({"schema": "bsconv-export-bench/1", "machine": {}, "results": [
        {"artifact": "onnx", "status": "ok", "provider": "cpu", "batch": 1, "samples_ms": "fast",
         "latency": {"p50_ms": 1, "p90_ms": 1, "p99_ms": 1, "throughput_per_s": 1}}]}))
    one_line_exit_2(invoke("regress", "--baseline", bad, "--candidate", bundle, "--duration", "1"),
                    "'samples_ms' must be a list")
    bad.write_text(json.dumps({"schema": "bsconv-export-bench/1", "machine": {}, "results": []}))
    one_line_exit_2(invoke("regress", "--baseline", bad, "--candidate", bundle, "--duration", "1"), "no batch-1")
    bad.write_text("{")
    one_line_exit_2(invoke("regress", "--baseline", bad, "--candidate", bundle, "--duration", "1"), "not valid JSON")


def test_regress_on_a_missing_provider_is_bad_input(bundle):
    import onnxruntime as ort
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    one_line_exit_2(invoke("regress", "--baseline", bundle, "--candidate", bundle, "--provider", "cuda",
                           "--duration", "1"), "CUDAExecutionProvider is not available")


def test_out_onto_a_file_a_missing_folder_or_a_symlink(tmp_path, bundle):
    f = tmp_path / "file"
    f.write_text("x")
    one_line_exit_2(invoke("export", "--out", f, "--force", "--formats", "onnx"), "not a directory")
    one_line_exit_2(invoke("export", "--out", tmp_path / "no" / "b", "--formats", "onnx"), "does not exist")
    os.symlink(bundle, tmp_path / "link")
    one_line_exit_2(invoke("export", "--out", tmp_path / "link", "--force", "--formats", "onnx"), "symbolic link")


def test_a_full_disk_is_one_line_not_a_traceback(bundle, monkeypatch):
    import errno

    from bsconv_export.exporter.bundle import manifest_io as man

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(bundle / "manifest.json"))

    monkeypatch.setattr(man, "write_bundle_file", full)
    one_line_exit_2(invoke("check", bundle), "No space left on device")


@pytest.mark.slow
def test_a_bad_input_found_inside_a_stage_is_exit_2(tmp_path):
    cal = tmp_path / "cal.npz"
    np.savez(cal, input=np.random.default_rng(0).random((4, 3, 16, 16), dtype=np.float32))
    one_line_exit_2(invoke("export", "--formats", "int8", "--calibration", cal, "--out", tmp_path / "o"),
                    "expected [N, 3, 32, 32]")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cal.npz"]


# --- leftovers, permissions ---------------------------------------------------------------------

@pytest.mark.slow
def test_leftovers_of_a_killed_run_are_cleaned_by_the_next_export(tmp_path, shipped):
    from bsconv_export.exporter.bundle.manifest import BUILD_MARKER
    for name in (".b.building-abc123", ".b.old-xyz"):   # as a killed run leaves them: marked
        (tmp_path / name).mkdir()
        (tmp_path / name / BUILD_MARKER).write_text(f"bsconv-export build folder {name}\n")
    (tmp_path / ".b.building-abc123" / "model.onnx").write_text("half")
    export_bundle(shipped, tmp_path / "b", ONNX_ONLY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


@pytest.mark.slow
def test_sigterm_leaves_nothing_behind(tmp_path):
    import signal
    import time
    cli = os.path.join(os.path.dirname(sys.executable), "bsconv-export")
    p = subprocess.Popen([cli, "export", "--out", str(tmp_path / "b"), "--formats", "onnx,coreml"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".b.building-*")) and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    assert list(tmp_path.glob(".b.building-*")), "the export never started building"
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=120) == 143, p.stderr.read()[-2000:]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_sigterm_with_stages_side_by_side_leaves_nothing_behind(tmp_path):
    """SIGTERM while workers run stages: no bundle, no build folder, no worker left running."""
    import signal
    import time
    cli = os.path.join(os.path.dirname(sys.executable), "bsconv-export")
    p = subprocess.Popen([cli, "export", "--out", str(tmp_path / "b"), "--formats", "onnx,coreml,pte", "--jobs", "2"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def workers() -> list[int]:
        pids = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
        return [int(x) for x in pids if b"spawn_main" in _cmdline(int(x))]

    deadline = time.time() + 180
    seen: list[int] = []
    while time.time() < deadline and p.poll() is None and not (seen and list(tmp_path.glob(".b.building-*/model.onnx"))):
        seen = workers() or seen
        time.sleep(0.1)
    assert seen, "no stage worker started"
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=180) == 143, p.stderr.read()[-2000:]
    assert list(tmp_path.iterdir()) == []
    time.sleep(1)
    assert [w for w in seen if _cmdline(w)] == []


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.slow
def test_bundles_get_the_users_umask(tmp_path, shipped):
    old = os.umask(0o022)
    try:
        export_bundle(shipped, tmp_path / "b", ExportOptions(formats=("onnx", "coreml")))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o755
    for p in (tmp_path / "b").rglob("*"):
        assert stat.S_IMODE(p.stat().st_mode) == (0o755 if p.is_dir() else 0o644), p


# --- no network ----------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed (.ci/run installs it)")
def test_export_check_and_bench_make_no_network_connection(tmp_path):
    log = tmp_path / "strace.log"
    out = tmp_path / "b"
    cli = shutil.which("bsconv-export") or os.path.join(os.path.dirname(sys.executable), "bsconv-export")
    # stages side by side: the spawned workers are traced too (-f)
    script = f"{cli} export --out {out} --formats onnx,ort,coreml --jobs 2 && {cli} bench {out} --duration 0.2 --warmup 1"
    p = subprocess.run(["strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=connect", "-o", str(log), "sh", "-c", script],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    calls = [line for line in log.read_text().splitlines() if "AF_INET" in line]
    outside = [c for c in calls if "127.0.0.1" not in c and "::1" not in c]
    assert outside == [], outside[:5]


@pytest.mark.parametrize("field,value", [("arch", 7), ("num_classes", "ten"), ("input_spec", [1, 2]),
                                         ("input_spec", {"size": "big", "num_classes": 10})])
def test_checkpoint_headers_of_the_wrong_type_are_bad_input(tmp_path, field, value):
    ckpt = torch.load(DEFAULT_CHECKPOINT, weights_only=True)
    ckpt[field] = value
    p = tmp_path / "h.pt"
    torch.save(ckpt, p)
    one_line_exit_2(invoke("info", "--checkpoint", p), "header")
    from safetensors.torch import save_file
    st = tmp_path / "h.safetensors"
    save_file({k: v.contiguous() for k, v in ckpt["state_dict"].items()}, st, metadata={"bsconv_export": "{"})
    one_line_exit_2(invoke("info", "--checkpoint", st), "not valid JSON")


def test_a_bundle_cannot_loosen_its_own_gate(bundle):
    """Precision comes from the format table, never from the artifact's details in the manifest."""
    edit_manifest(bundle, lambda d: [a["details"].update(precision="int8") for a in d["artifacts"]])
    r = invoke("check", bundle, "--json")
    assert r.exit_code == 0, r.output
    assert {x["precision"] for x in json.loads(r.stdout)["results"]} == {"fp32"}
