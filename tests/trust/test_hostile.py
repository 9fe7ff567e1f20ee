"""Trust, second pass: what a forged manifest, a changed bundle or a hostile file can make the tool do.

Each test reproduces one finding of the second hostile-input audit through the real CLI:
ownership proven by content (``--force``, leftovers, the lock, bench/report outputs), verdicts
re-verified against the bytes, bounded reads (deep JSON, npz headers and deflate bombs, sizes
from flags), regular files only, and one line for every bad flag. The last test is the property
the findings stand for: no command, with any flags, removes or changes a file the user owns.
"""
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from typer.testing import CliRunner

from bsconv_export.cli import app
from bsconv_export.exporter.bundle.manifest import BUILD_MARKER

runner = CliRunner()
CLI = os.path.join(os.path.dirname(sys.executable), "bsconv-export")
FAST_BENCH = ("--iters", "5", "--warmup", "1")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line(r, code, *needles):
    assert r.exit_code == code, r.output
    lines = [x for x in r.stderr.strip().splitlines() if x.startswith("error:")]
    assert len(lines) <= 1 and "Traceback" not in r.output, r.output
    for n in needles:
        assert n in r.output, r.output


@pytest.fixture
def bundle(tmp_path, shared_bundle):
    dst = tmp_path / "b"
    shutil.copytree(shared_bundle("onnx-ort-coreml"), dst)
    return dst


@pytest.fixture
def light_bundle(tmp_path, shared_bundle):
    """For the fuzzers, which check the bundle once per mutation: its files all run on onnxruntime
    (.onnx, simplified, fp16, int8), without the CoreML interpreter's pass over every check input."""
    dst = tmp_path / "light"
    shutil.copytree(shared_bundle("reduced"), dst)
    return dst


def snapshot(paths):
    """sha256 of every file under ``paths`` (links recorded as their target), to prove nothing changed."""
    out = {}
    for root in paths:
        items = [root] if root.is_file() or root.is_symlink() else sorted(root.rglob("*"))
        for p in items:
            if p.is_symlink():
                out[str(p)] = "link:" + os.readlink(p)
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def manifest(bundle):
    return json.loads((bundle / "manifest.json").read_text())


def write_manifest(bundle, d):
    (bundle / "manifest.json").write_text(json.dumps(d))


# --- 1. --force: ownership by content ------------------------------------------------------------

def test_a_forged_manifest_cannot_make_force_delete_a_users_folder(tmp_path, bundle):
    user = tmp_path / "user"
    (user / "Photos").mkdir(parents=True)
    (user / "Photos" / "holiday.jpg").write_bytes(b"\xff\xd8 a photo")
    (user / "notes.txt").write_text("notes")
    forged = manifest(bundle)
    forged["artifacts"] = [dict(forged["artifacts"][0], path="Photos/holiday.jpg", details={"readme": "notes.txt"})]
    del forged["files"]                                  # the old trust rule: names alone
    write_manifest(user, forged)
    before = snapshot([user])
    one_line(invoke("export", "--out", user, "--formats", "onnx", "--force"), 2, "cannot prove")
    # the same names recorded with hashes that are not these files' bytes
    forged["files"] = {"Photos": {"sha256": "0" * 64, "bytes": 1}, "notes.txt": {"sha256": "1" * 64, "bytes": 5}}
    write_manifest(user, forged)
    before = snapshot([user])
    one_line(invoke("export", "--out", user, "--formats", "onnx", "--force"), 2, "Photos", "notes.txt")
    assert snapshot([user]) == before


def test_a_recorded_file_with_other_bytes_is_the_users(bundle):
    (bundle / "model.sim.onnx").write_bytes(b"my own model, same name")
    one_line(invoke("export", "--out", bundle, "--formats", "onnx", "--force"), 2, "model.sim.onnx")
    assert (bundle / "model.sim.onnx").read_bytes() == b"my own model, same name"


@pytest.mark.slow
def test_force_rechecks_ownership_just_before_replacing(tmp_path, shipped, monkeypatch):
    """A file the user drops into the old bundle while the new one is built is not deleted."""
    from bsconv_export.exporter.export import run as bundle_mod
    from bsconv_export.exporter.kit.options import ExportOptions
    out = tmp_path / "b"
    bundle_mod.export_bundle(shipped, out, ExportOptions(formats=("onnx",), simplify=False), check=None)
    real = bundle_mod.build_manifest

    def user_writes_meanwhile(*a, **k):
        (out / "draft.txt").write_text("written during the export")
        return real(*a, **k)

    monkeypatch.setattr(bundle_mod, "build_manifest", user_writes_meanwhile)
    one_line(invoke("export", "--out", out, "--formats", "onnx", "--no-simplify", "--force", "--no-check",
                    "--replace-anyway"), 2, "draft.txt")
    assert (out / "draft.txt").read_text() == "written during the export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]     # the new build was removed


@pytest.mark.slow
def test_a_file_arriving_during_the_final_rename_is_kept_with_the_old_bundle(tmp_path, shipped, monkeypatch):
    from pathlib import Path

    from bsconv_export.exporter.bundle import claim as outdir
    from bsconv_export.exporter.export.run import export_bundle
    from bsconv_export.exporter.kit.options import ExportOptions
    out = tmp_path / "b"
    export_bundle(shipped, out, ExportOptions(formats=("onnx",), simplify=False))
    before = snapshot([out])
    real = outdir.os.replace

    def replace(src, dst):
        if Path(src) == out:   # the moment after the last check, before the rename
            (out / "late.txt").write_text("arrived just now")
        return real(src, dst)

    monkeypatch.setattr(outdir.os, "replace", replace)
    one_line(invoke("export", "--out", out, "--formats", "onnx", "--no-simplify", "--force"), 2, "late.txt")
    assert (out / "late.txt").read_text() == "arrived just now"
    after = snapshot([out])
    del after[str(out / "late.txt")]
    assert after == before and sorted(os.listdir(tmp_path)) == ["b"]


# --- 2. leftovers and the lock: only what this tool made ------------------------------------------

def test_leftover_cleanup_removes_only_folders_this_tool_made(tmp_path, shipped):
    from bsconv_export.exporter.export.run import export_bundle
    from bsconv_export.exporter.kit.options import ExportOptions
    drafts = tmp_path / ".lv.building-drafts"
    drafts.mkdir()
    (drafts / "chapter1.txt").write_text("chapter one")
    forged = tmp_path / ".lv.old-mine"                     # a marker that names another folder
    forged.mkdir()
    (forged / BUILD_MARKER).write_text("bsconv-export build folder .lv.building-other\n")
    (forged / "keep.txt").write_text("mine")
    ours = tmp_path / ".lv.building-k1ll3d"                 # what a killed run leaves
    ours.mkdir()
    (ours / BUILD_MARKER).write_text(f"bsconv-export build folder {ours.name}\n")
    (ours / "model.onnx").write_text("half")
    export_bundle(shipped, tmp_path / "lv", ExportOptions(formats=("onnx",), simplify=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lv.building-drafts", ".lv.old-mine", "lv"]
    assert (drafts / "chapter1.txt").read_text() == "chapter one" and (forged / "keep.txt").exists()
    assert BUILD_MARKER not in os.listdir(tmp_path / "lv")


def test_a_users_file_at_the_lock_name_is_refused_not_removed(tmp_path):
    (tmp_path / ".lv.lock").write_text("my lock notes")
    one_line(invoke("export", "--out", tmp_path / "lv", "--formats", "onnx"), 2, "not a lock file")
    assert (tmp_path / ".lv.lock").read_text() == "my lock notes"
    assert sorted(os.listdir(tmp_path)) == [".lv.lock"]


def test_bench_and_report_never_replace_a_users_file_in_the_bundle(bundle):
    (bundle / "bench.json").write_text('{"mine": true}')
    (bundle / "report.md").write_text("my report")
    one_line(invoke("bench", bundle, *FAST_BENCH), 2, "bench.json", "not written by bsconv-export")
    (bundle / "bench.json").rename(bundle.parent / "bench.json")
    one_line(invoke("report", bundle), 2, "report.md", "not written by bsconv-export")
    assert (bundle.parent / "bench.json").read_text() == '{"mine": true}'
    assert (bundle / "report.md").read_text() == "my report"


def test_bench_never_writes_over_an_artifact_and_refuses_before_timing(bundle):
    before = snapshot([bundle])
    r = invoke("bench", bundle, *FAST_BENCH, "--out", bundle / "model.onnx")
    one_line(r, 2, "the bundle's own artifact")
    assert "p50" not in r.stderr and snapshot([bundle]) == before


def test_report_refuses_a_users_plot_before_writing_anything(bundle):
    assert invoke("bench", bundle, *FAST_BENCH).exit_code == 0
    (bundle / "report_latency.png").write_bytes(b"my picture")
    before = snapshot([bundle])
    one_line(invoke("report", bundle), 2, "report_latency.png")
    assert snapshot([bundle]) == before and not (bundle / "report.md").exists()


# --- 3. a verdict is about bytes: report, bench and regress re-verify -------------------------------

def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


def test_report_bench_and_regress_refuse_to_vouch_for_a_changed_artifact(bundle):
    assert invoke("report", bundle).exit_code == 0
    flip_a_byte(bundle / "model.sim.onnx")
    r = invoke("report", bundle)
    assert r.exit_code == 1 and "files changed since the export: model.sim.onnx" in r.stderr, r.output
    text = (bundle / "report.md").read_text()
    assert "recorded verdict passed, but files changed since: model.sim.onnx" in text
    assert "(verdict: passed)" not in text
    one_line(invoke("bench", bundle, *FAST_BENCH), 1, "files changed since the export (model.sim.onnx)")
    one_line(invoke("regress", "--baseline", bundle, "--candidate", bundle, "--duration", "1"), 1, "model.sim.onnx")


def test_a_changed_side_file_is_a_changed_bundle(bundle):
    """Files the manifest records beside the artifacts (ORT's operator config) count too."""
    with open(bundle / "model.required_operators.config", "a") as f:
        f.write("# edited\n")
    one_line(invoke("report", bundle), 1, "model.required_operators.config")


# --- 4-9. bounded reads, regular files, no tracebacks -----------------------------------------------

@pytest.mark.parametrize("command", ["check", "bench", "report", "regress"])
def test_deeply_nested_json_is_one_line(tmp_path, bundle, command):
    deep = "[" * 5000 + "]" * 5000
    if command == "regress":
        (tmp_path / "bench.json").write_text(deep)
        one_line(invoke("regress", "--baseline", tmp_path / "bench.json", "--candidate", bundle), 2, "levels deep")
        return
    (bundle / "manifest.json").write_text(deep)
    one_line(invoke(command, bundle), 2, "levels deep")


def test_a_deep_bench_json_in_the_bundle_is_one_line(bundle):
    (bundle / "bench.json").write_text("{\"a\":" * 3000 + "1" + "}" * 3000)
    one_line(invoke("report", bundle), 2, "levels deep")


def npz_with_header(path, shape, payload=b"", compress=False):
    """An npz whose 'input' member declares ``shape`` but holds only ``payload`` (a hostile header)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        z.writestr("input.npy", buf.getvalue() + payload)


@pytest.mark.parametrize("command", ["evaluate", "check"])
def test_an_npz_header_cannot_make_the_tool_allocate(tmp_path, bundle, command):
    npz_with_header(tmp_path / "huge.npz", (10**9, 3, 32, 32))
    assert (tmp_path / "huge.npz").stat().st_size < 1000
    args = ("evaluate", "--data", tmp_path / "huge.npz") if command == "evaluate" else \
        ("check", bundle, "--data", tmp_path / "huge.npz")
    one_line(invoke(*args), 2, "declares 1,000,000,000 samples")


def test_a_deflate_bomb_is_bounded_by_its_header_before_decompression(tmp_path):
    # 2.4 GB of zeros declared (200,000 digits-sized samples): refused from the header, nothing inflated
    npz_with_header(tmp_path / "bomb.npz", (200_000, 3, 32, 32), b"\0" * (1 << 20), compress=True)
    one_line(invoke("evaluate", "--data", tmp_path / "bomb.npz"), 2, "over this tool's bound")
    # under the sample bound but over the byte bound: 1.1 GiB of float64
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (48_000, 3, 32, 32)})
    with zipfile.ZipFile(tmp_path / "bomb2.npz", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("input.npy", buf.getvalue() + b"\0" * (1 << 20))
    one_line(invoke("evaluate", "--data", tmp_path / "bomb2.npz"), 2, "GiB of data")
    # a header that promises more than the member holds is truncated, not a traceback
    npz_with_header(tmp_path / "short.npz", (4, 3, 32, 32), b"\0" * 100)
    one_line(invoke("evaluate", "--data", tmp_path / "short.npz"), 2, "truncated")


@pytest.mark.parametrize("args, needle", [
    (("info", "--input-size", "100000"), "outside 1..4096"),
    (("export", "--out", "{tmp}/o", "--batch", "1000000"), "outside 1..1024"),
    (("export", "--out", "{tmp}/o", "--input-size", "4096", "--batch", "8"), "over this tool's bound"),
    (("bench", "{bundle}", "--batch", "1000000"), "outside 1..1024"),
])
def test_sizes_from_flags_share_one_bound(tmp_path, bundle, args, needle):
    one_line(invoke(*[a.format(tmp=tmp_path, bundle=bundle) for a in args]), 2, needle)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_fifo_is_never_opened_for_reading(tmp_path, bundle):
    """A pipe at an artifact path, as --data or as a checkpoint: refused at once, never a hang."""
    os.unlink(bundle / "model.sim.onnx")
    os.mkfifo(bundle / "model.sim.onnx")
    os.mkfifo(tmp_path / "data.npz")
    os.mkfifo(tmp_path / "ckpt.pt")
    for args, needle in ((["check", bundle], "not a regular file"),
                         (["evaluate", "--data", tmp_path / "data.npz"], "not a regular file"),
                         (["info", "--checkpoint", tmp_path / "ckpt.pt"], "not a regular file")):
        p = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_an_ok_artifact_without_a_path_is_bad_input(bundle):
    d = manifest(bundle)
    d["artifacts"][0]["path"] = None
    write_manifest(bundle, d)
    for command in ("check", "bench", "report"):
        one_line(invoke(command, bundle), 2, "names no file")


def test_bench_that_times_nothing_fails(bundle):
    before = snapshot([bundle])
    r = invoke("bench", bundle, "--providers", "bogus", *FAST_BENCH)
    assert r.exit_code == 1 and "nothing was timed" in r.stderr and "bogus" in r.stderr, r.output
    assert snapshot([bundle]) == before       # no bench.json of nothing


# --- low: one line for every bad flag, nothing accepted silently ------------------------------------

@pytest.mark.parametrize("args, needle", [
    (("export", "--out", "{tmp}/o", "--batch", "0"), "--batch"),
    (("check", "{bundle}", "--samples", "-1"), "--samples"),
    (("bench", "{bundle}", "--duration", "nan"), "--duration"),
    (("regress", "--baseline", "{bundle}", "--candidate", "{bundle}", "--max-slowdown", "-1"), "--max-slowdown"),
    (("regress", "--baseline", "{bundle}", "--candidate", "{bundle}", "--confidence", "nan"), "--confidence"),
    (("train", "--out", "{tmp}/m.pt", "--epochs", "0"), "--epochs"),
    (("train", "--out", "{tmp}/m.pt", "--lr", "nan"), "--lr"),
    (("export", "--out", "{tmp}/o", "--formats", "onnx,onnx"), "more than once"),
    (("export", "--out", "{tmp}/o", "--formats", "ONNX"), "lower-case"),
    (("export", "--out", "{tmp}/o", "--batch", "8", "--dynamic-batch"), "exclude each other"),
    (("bench", "{bundle}", "--duration", "1", "--iters", "5"), "exclude each other"),
    (("nosuchcommand",), "No such command"),
])
def test_bad_flags_are_one_line_exit_2(tmp_path, bundle, args, needle):
    r = invoke(*[a.format(tmp=tmp_path, bundle=bundle) for a in args])
    one_line(r, 2, needle)
    assert "╭" not in r.output                 # not click's box
    assert not (tmp_path / "o").exists()


def test_a_text_file_named_pt_is_not_called_a_pickle(tmp_path):
    (tmp_path / "notes.pt").write_text("config: these are my notes\n")
    r = invoke("info", "--checkpoint", tmp_path / "notes.pt")
    one_line(r, 2, "not a torch.save checkpoint", "starts with text")
    assert "pickle would run code" not in r.stderr


def test_a_nan_in_a_manifest_is_refused(bundle):
    text = (bundle / "manifest.json").read_text()
    d = json.loads(text)
    d["model"]["input_spec"]["value_range"] = [0, 1]
    text = json.dumps(d).replace('"value_range": [0, 1]', '"value_range": [NaN, 1]')
    (bundle / "manifest.json").write_text(text)
    one_line(invoke("check", bundle), 2, "NaN")


def test_a_full_disk_names_the_bundle(tmp_path, monkeypatch):
    import errno

    from bsconv_export.exporter.export import run as bundle_mod

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")   # as converters raise it: no file name

    monkeypatch.setattr(bundle_mod, "write_manifest", full)
    out = tmp_path / "o"
    r = invoke("export", "--out", out, "--formats", "onnx", "--no-simplify", "--no-check")
    one_line(r, 2, "No space left on device", str(out))
    assert r.stderr.strip().splitlines()[-1].startswith("error:")
    assert os.listdir(tmp_path) == []


# --- the property: nothing the user owns is removed or changed ----------------------------------------

USER_INSIDE = {   # files a user may put into a bundle, including under names a manifest records
    "extra": {"mine.txt": b"my notes"},
    "recorded-name": {"model.sim.onnx": b"my own onnx file"},
    "output-names": {"bench.json": b'{"mine": 1}', "report.md": b"# mine", "report_latency.png": b"\x89PNG mine"},
}


@pytest.mark.parametrize("inside", sorted(USER_INSIDE))
def test_no_command_removes_or_changes_a_users_file(tmp_path, bundle, inside):
    beside = {".b.building-drafts/chapter1.txt": b"chapter", ".b.old-archive/x.bin": b"old", "b.txt": b"beside"}
    for rel, data in {**beside, **{f"b/{k}": v for k, v in USER_INSIDE[inside].items()}}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    owned = [tmp_path / rel for rel in beside] + [bundle / name for name in USER_INSIDE[inside]]
    before = snapshot(owned)
    data = tmp_path / "d.npz"
    np.savez(data, input=np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32))
    commands = [
        ("export", "--out", bundle, "--formats", "onnx", "--force"),
        ("export", "--out", bundle, "--formats", "onnx", "--force", "--no-check", "--replace-anyway"),
        ("export", "--out", bundle, "--formats", "onnx"),
        ("check", bundle), ("check", bundle, "--data", data, "--atol", "1"),
        ("bench", bundle, *FAST_BENCH), ("bench", bundle, "--providers", "bogus", *FAST_BENCH),
        ("report", bundle), ("report", bundle, "--format", "html"),
        ("regress", "--baseline", bundle, "--candidate", bundle, "--duration", "1"),
    ]
    for args in commands:
        r = invoke(*args)
        assert "Traceback" not in r.output, (args, r.output)
        assert snapshot(owned) == before, (args, r.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({".b.building-drafts", ".b.old-archive", "b",
                                                                  "b.txt", "d.npz"})


@pytest.mark.parametrize("mutate, command, needle", [
    (lambda d: d["export"].update(formats=[True, "onnx"]), "check", "list of format names"),
    (lambda d: d["check"]["results"][0].update(metrics={}), "report", None),
])
def test_manifest_fields_of_the_wrong_shape_are_one_line_or_shown_as_missing(bundle, mutate, command, needle):
    """Found by fuzzing the manifest: a non-string format name (a sort across types), a stored check
    record without its metrics (a KeyError in the report)."""
    d = manifest(bundle)
    mutate(d)
    write_manifest(bundle, d)
    r = invoke(command, bundle)
    if needle:
        one_line(r, 2, needle)
    else:
        assert r.exit_code == 0 and "Traceback" not in r.output, r.output


def _paths(d, prefix=()):
    items = d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else ()
    for k, v in items:
        yield prefix + (k,)
        yield from _paths(v, prefix + (k,))


@pytest.mark.slow
def test_a_fuzzed_manifest_never_gives_a_traceback(tmp_path, light_bundle):
    """Seeded mutations of a real manifest (wrong types, huge or negative numbers, paths out of the
    bundle, missing keys): report and check answer with exit 0, 1 or 2, never a traceback."""
    import copy
    import random
    base = manifest(light_bundle)
    every = list(_paths(base))
    values = [None, -1, 0, 10**12, 1.5, "x", "", [], {}, [1, 2], {"a": 1}, True, "../../etc/passwd", "model.onnx"]
    rng = random.Random(0)
    for trial in range(25):
        d = copy.deepcopy(base)
        for _ in range(rng.randint(1, 3)):
            path = rng.choice(every)
            try:
                target = d
                for k in path[:-1]:
                    target = target[k]
                if rng.random() < 0.15 and isinstance(target, dict):
                    target.pop(path[-1], None)
                else:
                    target[path[-1]] = rng.choice(values)
            except (KeyError, IndexError, TypeError):
                pass
        b = tmp_path / f"f{trial}"
        shutil.copytree(light_bundle, b)
        write_manifest(b, d)
        for command in ("report", "check"):
            r = invoke(command, b)
            assert r.exit_code in (0, 1, 2) and "Traceback" not in r.output, (trial, command, r.output[-2000:])
            assert r.exception is None or isinstance(r.exception, SystemExit), (trial, command, repr(r.exception))
        shutil.rmtree(b)
