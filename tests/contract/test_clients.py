"""The bundle as apps consume it (docs/bundle.md): the C++ ExecuTorch client, the JavaScript
onnxruntime client and ``bsconv-export predict``, each reading everything from the bundle.

On the shipped model: the 360 held-out digits written as PNG files (8×8 grey, so every client
resizes and repeats the grey channel), every client's top-1 identical to PyTorch's, its accuracy
PyTorch's, its logits within the fp32 rule of the float64 reference. Then a user network that is
not the digits (7 classes, 24×24, its own labels, mean, std and BGR order) on images of several
sizes and colour types. The clients are built by ``make clients`` (make test-all does it)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bsconv_export.exporter.check.run import torch_reference
from bsconv_export.exporter.check.verdict import compare, verdict
from bsconv_export.exporter.bundle.manifest_io import read_manifest
from bsconv_export.exporter.report.predict import read_png
from bsconv_export.kernel.pixels import resize_bilinear, to_input
from bsconv_export.exporter.kit.tolerances import DEFAULT_TOLERANCES
from bsconv_export.models.data import HOLDOUT_PATH
from bsconv_export.models.registry import InputSpec

ROOT = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parents[1]
CPP = ROOT / "clients" / "executorch-cpp" / "run"
JS = ROOT / "clients" / "onnxruntime-js" / "run"
CLI = str(Path(sys.executable).with_name("bsconv-export"))
#: (client, format) pairs: every runtime an app uses, on every file it can run
CLIENTS = [("cpp", "pte"), ("js", "onnx"), ("js", "ort"), ("python", "onnx"), ("python", "ort"), ("python", "pte")]


def built(client: str) -> str | None:
    """Why a client cannot run here (None: it can)."""
    if client == "cpp" and not (CPP.parent / "build" / "bsconv-run").exists():
        return "the C++ client is not built: run 'make clients'"
    if client == "js" and not (JS.parent / "node_modules" / "onnxruntime-node").is_dir():
        return "the JavaScript client's packages are not installed: run 'make clients'"
    return None


def command(client: str, bundle: Path, images: list, fmt: str | None) -> list[str]:
    fmt_args = ["--format", fmt] if fmt else []
    if client == "cpp":
        return [str(CPP), str(bundle), *map(str, images), *fmt_args]
    if client == "js":
        return [str(JS), str(bundle), *map(str, images), *fmt_args]
    return [CLI, "predict", str(bundle), *map(str, images), *fmt_args]


def run_client(client: str, bundle: Path, images: list, fmt: str | None = None) -> subprocess.CompletedProcess:
    reason = built(client)
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "ORT_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command(client, bundle, images, fmt), capture_output=True, text=True, timeout=600,
                          env=env, cwd=TESTS)


def predictions(client: str, bundle: Path, images: list, fmt: str) -> tuple[np.ndarray, list[dict]]:
    p = run_client(client, bundle, images, fmt)
    assert p.returncode == 0, p.stderr[-2000:]
    lines = [json.loads(line) for line in p.stdout.splitlines()]
    assert [d["image"] for d in lines] == [str(i) for i in images]
    return np.array([d["logits"] for d in lines], dtype=np.float64), lines


def assert_like_pytorch(client, fmt, logits, lines, ref, labels, truth=None):
    """Top-1 identical to PyTorch's, the JSON consistent, the logits within the fp32 rule."""
    assert logits.shape == ref.r64.shape, (client, fmt, logits.shape)
    torch_top1 = ref.r32.argmax(1)
    assert [d["index"] for d in lines] == list(logits.argmax(1))
    assert [d["label"] for d in lines] == [labels[i] for i in logits.argmax(1)]
    assert (logits.argmax(1) == torch_top1).all(), (client, fmt, np.flatnonzero(logits.argmax(1) != torch_top1))
    acc = ref_acc = None
    if truth is not None:
        acc, ref_acc = float(np.mean(logits.argmax(1) == truth)), float(np.mean(torch_top1 == truth))
        assert acc == ref_acc
    reason = verdict(logits, ref, compare(logits, ref.r64), DEFAULT_TOLERANCES["fp32"], acc, ref_acc)
    assert reason is None, (client, fmt, reason)


# --- the contract's pixel rule, on its own (fast tier) -------------------------------------------

@pytest.mark.parametrize("shape", [(8, 8), (32, 32), (17, 40), (50, 9), (1, 1)])
def test_resize_is_pytorchs_bilinear_with_half_pixel_centres(shape):
    img = np.random.default_rng(0).random((*shape, 3))
    mine = resize_bilinear(img, 24)
    theirs = torch.nn.functional.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None], size=(24, 24),
                                             mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(mine, theirs, atol=1e-12)


def test_to_input_follows_the_spec():
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 255, 51
    spec = InputSpec(size=4, num_classes=2, normalization="mean_std", mean=(0.5, 0.5, 0.1), std=(0.5, 0.25, 0.2),
                     color_order="BGR")
    x = to_input(rgb, spec)
    assert x.dtype == np.float32 and x.shape == (1, 3, 4, 4)
    # BGR: channel 0 is blue (51/255 = 0.2), then (0.2 - 0.5) / 0.5; channel 2 is red: (1 - 0.1) / 0.2
    np.testing.assert_allclose(x[0, :, 0, 0], [(0.2 - 0.5) / 0.5, (0 - 0.5) / 0.25, (1 - 0.1) / 0.2], rtol=1e-6)
    grey = np.full((2, 2, 1), 255, np.uint8)
    x = to_input(grey, InputSpec(size=2, num_classes=2, value_range=(-1.0, 1.0)))
    assert (x == 1.0).all() and x.shape == (1, 3, 2, 2)   # grey repeated, [0, 1] mapped onto [-1, 1]


def test_read_png_expands_palettes_and_drops_alpha(tmp_path):
    Image.fromarray(np.full((3, 5, 4), 200, np.uint8), "RGBA").save(tmp_path / "a.png")
    Image.fromarray(np.full((3, 5), 7, np.uint8), "L").convert("P").save(tmp_path / "p.png")
    assert read_png(tmp_path / "a.png").shape == (3, 5, 3)
    p = read_png(tmp_path / "p.png")
    assert p.shape == (3, 5, 3) and (p == 7).all()


# --- the shipped model, the 360 held-out digits as PNG ---------------------------------------------

@pytest.fixture(scope="module")
def digits(tmp_path_factory, shared_bundle, shipped):
    """The shipped model's bundle (onnx, ort, pte), the held-out digits as 8×8 grey PNGs, PyTorch's answers."""
    bundle = shared_bundle("every-format")
    folder = tmp_path_factory.mktemp("digits-png")
    with np.load(HOLDOUT_PATH) as f:
        images, labels = f["images"], f["labels"]
    paths = []
    for i, img in enumerate(images):
        path = folder / f"{i:03d}_{labels[i]}.png"
        Image.fromarray(np.round(img.astype(np.float64) * 255 / 16).astype(np.uint8), "L").save(path)
        paths.append(path)
    spec = read_manifest(bundle).model.input_spec
    x = np.concatenate([to_input(read_png(p), spec) for p in paths])
    return bundle, paths, labels, torch_reference(shipped.model, x)


@pytest.mark.slow
@pytest.mark.parametrize("client,fmt", CLIENTS)
def test_clients_classify_the_held_out_digits_like_pytorch(digits, client, fmt):
    bundle, paths, truth, ref = digits
    logits, lines = predictions(client, bundle, paths, fmt)
    assert_like_pytorch(client, fmt, logits, lines, ref, [str(i) for i in range(10)], truth)
    assert round(float(np.mean(logits.argmax(1) == truth)) * 100, 2) == 99.44


# --- a user network that is not the digits -----------------------------------------------------------

USER_LABELS = ["cat", "dog", "owl", "fox", "elk", "yak", "emu"]
USER_SPEC = {"size": 24, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "color_order": "BGR",
             "labels": USER_LABELS}


@pytest.fixture(scope="module")
def user_network(tmp_path_factory):
    """A 7-class BSConv network at 24×24 with its own labels, mean, std and colour order, exported by
    the CLI; images of several sizes and colour types; PyTorch's answers."""
    sys.path.insert(0, str(TESTS))
    import custom_models
    folder = tmp_path_factory.mktemp("user")
    (folder / "spec.json").write_text(json.dumps(USER_SPEC))
    bundle = folder / "bundle"
    p = subprocess.run([CLI, "export", "--model", "custom_models:tiny", "--model-arg", "num_classes=7",
                        "--input-spec", str(folder / "spec.json"), "--formats", "onnx,ort,pte", "--out", str(bundle)],
                       capture_output=True, text=True, timeout=600, cwd=TESTS,
                       env={**os.environ, "ORT_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    rng = np.random.default_rng(1)
    paths = []
    for i, (h, w) in enumerate([(24, 24)] * 10 + [(31, 17), (48, 48), (8, 8), (100, 3)]):
        # smooth images (a random field upscaled): what the network reads is not just noise
        small = rng.integers(0, 256, size=(max(2, h // 4), max(2, w // 4), 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(small, "RGB").resize((w, h), Image.BILINEAR))
        paths.append(folder / f"rgb_{i}.png")
        Image.fromarray(img, "RGB").save(paths[-1])
    Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8), "L").save(folder / "grey.png")
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8), "RGB").convert(
        "P", palette=Image.ADAPTIVE).save(folder / "palette.png")
    Image.fromarray(rng.integers(0, 256, (20, 30, 4), dtype=np.uint8), "RGBA").save(folder / "alpha.png")
    paths += [folder / "grey.png", folder / "palette.png", folder / "alpha.png"]
    spec = read_manifest(bundle).model.input_spec
    x = np.concatenate([to_input(read_png(p), spec) for p in paths])
    model = custom_models.tiny(num_classes=7)
    return bundle, paths, torch_reference(model, x)


@pytest.mark.slow
@pytest.mark.parametrize("client,fmt", CLIENTS)
def test_clients_read_a_user_networks_contract_from_the_bundle(user_network, client, fmt):
    bundle, paths, ref = user_network
    m = read_manifest(bundle)
    assert m.verdict == "passed" and m.model.labels == USER_LABELS and m.model.input_spec.color_order == "BGR"
    logits, lines = predictions(client, bundle, paths, fmt)
    assert_like_pytorch(client, fmt, logits, lines, ref, USER_LABELS)
    assert {d["label"] for d in lines} <= set(USER_LABELS)


# --- what a client refuses: one line on stderr, exit 2 ----------------------------------------------

def _failed(bundle: Path) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    m["check"]["results"][0]["status"], m["check"]["passed"], m["verdict"], m["passed"] = "failed", False, "failed", False
    (bundle / "manifest.json").write_text(json.dumps(m))


def _changed(bundle: Path, model: str) -> None:
    with open(bundle / model, "ab") as f:
        f.write(b"\0")


@pytest.mark.slow
@pytest.mark.parametrize("client,fmt,model", [("cpp", "pte", "model.pte"), ("js", "onnx", "model.onnx"),
                                              ("python", "onnx", "model.onnx")])
def test_clients_refuse_bad_input_in_one_line(digits, tmp_path, client, fmt, model):
    bundle, paths, _, _ = digits
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    (tmp_path / "text.png").write_text("not a png")
    Image.fromarray(np.full((4, 4), 300, np.uint16)).save(tmp_path / "deep.png")
    Image.fromarray(np.zeros((1, 9000), np.uint8), "L").save(tmp_path / "wide.png")
    cases = [(copy, [tmp_path / "missing.png"], "no such image file"),
             (copy, [tmp_path / "text.png"], "not a PNG image"),
             (copy, [tmp_path / "deep.png"], "16-bit PNG"),
             (copy, [tmp_path / "wide.png"], "per side"),
             (tmp_path / "nowhere", paths[:1], "not a bundle"),
             (copy, paths[:1], "--format" if client != "cpp" else None)]
    for bundle_dir, images, message in cases:
        fmt_used = "tflite" if message == "--format" else fmt
        if message is None:
            continue
        p = run_client(client, bundle_dir, images, fmt_used)
        assert p.returncode == 2, (message, p.stdout[-500:], p.stderr[-2000:])
        assert len(p.stderr.strip().splitlines()) == 1 and message in p.stderr, (message, p.stderr)
        assert p.stdout == ""
    _changed(copy, model)
    p = run_client(client, copy, paths[:1], fmt)
    assert p.returncode == 2 and "changed since the export" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    shutil.rmtree(copy)
    shutil.copytree(bundle, copy)
    _failed(copy)
    p = run_client(client, copy, paths[:1], fmt)
    assert p.returncode == 2 and "did not pass" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


# --- one PNG corpus, one answer from every client (issue 38) ---------------------------------------

def _chunk(kind: bytes, data: bytes, crc_ok: bool = True) -> bytes:
    import struct
    import zlib
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc if crc_ok else crc ^ 1)


def _png(width, height, depth, colour, rows: bytes, extra=(), bad_crc: bytes | None = None,
         truncate: bool = False) -> bytes:
    """A PNG written by hand (filter 0 on every row), so every colour type and bit depth can be made."""
    import struct
    import zlib
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    chunks = [(b"IHDR", ihdr), *extra, (b"IDAT", zlib.compress(rows)), (b"IEND", b"")]
    out = b"\x89PNG\r\n\x1a\n" + b"".join(_chunk(k, d, crc_ok=k != bad_crc) for k, d in chunks)
    return out[:-20] if truncate else out


def _rows(height, row_bytes, rng):
    return b"".join(b"\0" + rng.integers(0, 256, row_bytes, dtype=np.uint8).tobytes() for _ in range(height))


def png_corpus(folder: Path) -> dict[str, str | None]:
    """name → None (every client runs it, with the same logits) or the refusal every client gives (exit 2)."""
    rng = np.random.default_rng(7)
    files = {
        "grey-1bit.png": (_png(16, 16, 1, 0, _rows(16, 2, rng)), None),
        "grey-2bit.png": (_png(16, 16, 2, 0, _rows(16, 4, rng)), None),
        "grey-4bit.png": (_png(16, 16, 4, 0, _rows(16, 8, rng)), None),
        "grey-trns.png": (_png(12, 12, 8, 0, bytes(b for _ in range(12) for b in (0, *[100] * 6, *[200] * 6))[:12 * 13],
                               extra=[(b"tRNS", b"\x00\x64")]), None),
        "palette-trns.png": (_png(12, 12, 8, 3, b"".join(b"\0" + bytes(rng.integers(0, 4, 12, dtype=np.uint8))
                                                         for _ in range(12)),
                                  extra=[(b"PLTE", bytes([255, 0, 0, 0, 255, 0, 0, 0, 255, 250, 250, 10])),
                                         (b"tRNS", bytes([0, 128, 255, 20]))]), None),
        "palette-2bit.png": (_png(16, 8, 2, 3, _rows(8, 4, rng),
                                  extra=[(b"PLTE", bytes([10, 20, 30, 200, 100, 0, 0, 90, 180, 255, 255, 255]))]), None),
        "rgb.png": (_png(20, 14, 8, 2, _rows(14, 60, rng)), None),
        "rgba.png": (_png(9, 11, 8, 6, _rows(11, 36, rng)), None),
        "grey-alpha.png": (_png(10, 10, 8, 4, _rows(10, 20, rng)), None),
        "deep.png": (_png(4, 4, 16, 0, _rows(4, 8, rng)), "16-bit PNG"),
        "bad-crc-idat.png": (_png(8, 8, 8, 2, _rows(8, 24, rng), bad_crc=b"IDAT"), "CRC error"),
        "bad-crc-text.png": (_png(8, 8, 8, 2, _rows(8, 24, rng), extra=[(b"tEXt", b"k\0v")], bad_crc=b"tEXt"),
                             "CRC error"),
        "zero-width.png": (_png(0, 8, 8, 0, b""), "no pixels"),
        "bomb.png": (_png(30000, 30000, 8, 0, b"\0" * 64), "per side"),
        "truncated.png": (_png(8, 8, 8, 2, _rows(8, 24, rng), truncate=True), "truncated"),
        "odd-depth.png": (_png(8, 8, 4, 2, _rows(8, 12, rng)), "colour type 2, 4 bits"),
        "text.png": (b"not a png at all", "not a PNG image"),
    }
    out = {}
    for name, (data, refusal) in files.items():
        (folder / name).write_bytes(data)
        out[name] = refusal
    os.mkfifo(folder / "fifo.png")
    out["fifo.png"] = "not a regular file"
    return out


@pytest.mark.slow
def test_every_client_reads_one_png_corpus_alike(digits, tmp_path):
    """The same PNG files through predict (onnx), the JS client (onnx) and the C++ client (pte): each file
    gives every client's logits equal within fp32 noise, or the same refusal, exit 2, in one line."""
    bundle = digits[0]
    corpus = png_corpus(tmp_path)
    clients = [("python", "onnx"), ("js", "onnx"), ("cpp", "pte")]
    for client, _ in clients:
        reason = built(client)
        if reason:
            pytest.skip(reason)
    env = {**os.environ, "ORT_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}
    for name, refusal in corpus.items():
        logits = {}
        for client, fmt in clients:
            p = subprocess.run(command(client, bundle, [tmp_path / name], fmt), capture_output=True, text=True,
                               timeout=120, env=env, cwd=TESTS)
            if refusal is None:
                assert p.returncode == 0, (name, client, p.stderr[-800:])
                logits[client] = np.array(json.loads(p.stdout)["logits"])
            else:
                assert p.returncode == 2 and refusal in p.stderr, (name, client, p.returncode, p.stderr[-800:])
                assert len(p.stderr.strip().splitlines()) == 1 and p.stdout == "", (name, client, p.stderr)
        if refusal is None:
            for client in ("js", "cpp"):
                np.testing.assert_allclose(logits[client], logits["python"], atol=2e-4, rtol=1e-4,
                                           err_msg=f"{name}: {client}")


@pytest.mark.slow
@pytest.mark.parametrize("client,fmt", [("python", "onnx"), ("js", "onnx"), ("cpp", "pte")])
def test_every_client_answers_may_i_run_this_bundle_alike(digits, tmp_path, client, fmt):
    """A stored verdict that its rows contradict, either way, and a zero std: refused by every client."""
    bundle = digits[0]
    image = tmp_path / "x.png"
    Image.fromarray(np.full((8, 8), 90, np.uint8), "L").save(image)
    edits = {
        "failed row, verdict says passed": lambda m: m["check"]["results"][0].update(status="failed"),
        "rows pass, verdict says failed": lambda m: m.update(verdict="failed", passed=False),
        "std of zero": lambda m: m["model"]["input_spec"].update(std=[0.0, 0.0, 0.0],
                                                                 normalization="mean_std", mean=[0.5, 0.5, 0.5]),
    }
    for what, edit in edits.items():
        copy = tmp_path / "b"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(bundle, copy)
        m = json.loads((copy / "manifest.json").read_text())
        edit(m)
        (copy / "manifest.json").write_text(json.dumps(m))
        p = run_client(client, copy, [image], fmt)
        assert p.returncode == 2 and p.stdout == "", (what, p.returncode, p.stdout[-300:], p.stderr[-800:])
        assert len(p.stderr.strip().splitlines()) == 1, (what, p.stderr)
