"""Predict from a bundle alone: the Python reference client (``bsconv-export predict``).

It does what ``clients/executorch-cpp`` and ``clients/onnxruntime-js`` do, in the language the model was
exported with, and reads nothing but the bundle: the manifest names the model file, its record's sha256
must match the file, the bundle's check must have passed, and the labels and input spec come from the
bundle (see docs/bundle.md). Images are 8-bit PNG files, turned into the model's input by the contract's
one rule (:func:`kernel.pixels.to_input`), which the other clients implement line for line.
"""
from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ...kernel.errors import UserInputError
from ...kernel.pixels import to_input
from ...kernel.safe_io import read_regular

from ...kernel.contract import OUTPUT_NAME
from ..bundle.manifest import Manifest
from ..bundle.on_disk import inside
from ..bundle.manifest_io import read_manifest
from ..kit.records import path_sha256
from ..runners import RunnerUnavailable, infer_batched

#: an image larger than this (either side) is refused before its pixels are decoded
MAX_IMAGE_SIDE = 8192
#: a PNG file larger than this is refused before it is read (an 8192² RGB image compresses far below it)
MAX_PNG_BYTES = 256 << 20
#: images one call reads (each is decoded, run and released in turn)
MAX_IMAGES = 10_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: colour type → the bit depths the clients read (PNG spec 11.2.2 less 16 bits)
BIT_DEPTHS = {0: (1, 2, 4, 8), 2: (8,), 3: (1, 2, 4, 8), 4: (8,), 6: (8,)}


@dataclass(frozen=True)
class Prediction:
    image: str
    label: str
    index: int
    logits: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


def png_bytes(path: str | Path) -> bytes:
    """A PNG file's bytes, refused in one line unless it is the kind every client reads: a regular file (a
    FIFO never blocks), at most :data:`MAX_PNG_BYTES`, the PNG signature, an IHDR of 1..8192 pixels per side
    at 8 bits (1, 2 and 4 too for grey and palette images), and every chunk's CRC right. The same rule as
    the C++ and JavaScript clients (docs/bundle.md, *The pixel rule*)."""
    path = Path(path)
    try:
        data = read_regular(path, "image", max_bytes=MAX_PNG_BYTES)
    except UserInputError as e:
        if not os.path.lexists(path):
            raise UserInputError(f"{path}: no such image file") from None
        raise UserInputError(f"{path}: {str(e).split(str(path), 1)[-1].strip()}") from None
    if not data.startswith(PNG_SIGNATURE) or len(data) < 33 or data[12:16] != b"IHDR":
        raise UserInputError(f"{path}: not a PNG image; the clients read 8-bit PNG files")
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    if width == 0 or height == 0:
        raise UserInputError(f"{path}: a PNG with no pixels ({width}x{height}); save a real image")
    if max(width, height) > MAX_IMAGE_SIDE:
        raise UserInputError(f"{path}: {width}x{height} is larger than the {MAX_IMAGE_SIDE} pixels per side a "
                             "client decodes; scale it down first")
    if depth == 16:
        raise UserInputError(f"{path}: a 16-bit PNG; save it with 8 bits per channel")
    if depth not in BIT_DEPTHS.get(colour, ()):
        raise UserInputError(f"{path}: not a PNG image the clients read (colour type {colour}, {depth} bits)")
    pos = 8
    while pos < len(data):
        if pos + 12 > len(data):
            raise UserInputError(f"{path}: unreadable PNG (truncated); re-save it as an 8-bit PNG")
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        end = pos + 8 + length
        if end + 4 > len(data):
            raise UserInputError(f"{path}: unreadable PNG (truncated); re-save it as an 8-bit PNG")
        if zlib.crc32(data[pos + 4:end]) & 0xFFFFFFFF != struct.unpack(">I", data[end:end + 4])[0]:
            kind = data[pos + 4:pos + 8].decode("latin-1")
            raise UserInputError(f"{path}: unreadable PNG (CRC error in its {kind!r} chunk); re-save it as an "
                                 "8-bit PNG")
        if data[pos + 4:pos + 8] == b"IEND":
            break
        pos = end + 4
    return data


def read_png(path: str | Path) -> np.ndarray:
    """An 8-bit PNG as uint8 ``[H, W, C]``, C = 1 (grey) or 3 (RGB): a palette is expanded, alpha dropped,
    grey of 1, 2 or 4 bits scaled to 0..255. Anything else is one :class:`UserInputError` naming the file."""
    from PIL import Image, UnidentifiedImageError
    path = Path(path)
    data = png_bytes(path)
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
            mode = "L" if im.mode in ("1", "L", "LA") else "RGB"   # a palette becomes RGB, as libpng expands it
            pixels = np.asarray(im.convert(mode), dtype=np.uint8)
    except UnidentifiedImageError:
        raise UserInputError(f"{path}: not a PNG image; the clients read 8-bit PNG files") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserInputError(f"{path}: unreadable PNG ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})"
                             "; re-save it as an 8-bit PNG") from None
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def model_file(bundle: Path, manifest: Manifest, fmt: str | None) -> tuple[str, Path]:
    """The format to run and its file, as the manifest names it, after the bundle's own claims are held
    against it: the check passed, the artifact was built, the file's sha256 is the manifest's."""
    # may I run this bundle? The file's verdict says passed and its rows agree (every client's rule)
    claimed = manifest.claimed_verdict or manifest.verdict
    if manifest.verdict != "passed" or claimed != "passed":
        why = f"{claimed}, but its rows disagree" if claimed == "passed" else claimed
        raise UserInputError(f"{bundle}: its check did not pass (verdict: {why}); a client refuses it. "
                             f"Run 'bsconv-export check {bundle}' to see why, and re-export")
    built = {a.format: a for a in manifest.artifacts if a.ok and a.path}
    if fmt is None:
        fmt = next((f for f in built if _app_format(f)), None)
        if fmt is None:
            raise UserInputError(f"{bundle} holds no fp32 model file a runtime here runs; pass --format "
                                 f"(built: {', '.join(built) or 'nothing'})")
    if fmt not in built:
        raise UserInputError(f"{bundle} has no {fmt} model (built: {', '.join(built) or 'nothing'}); "
                             "pick one of those with --format")
    record = built[fmt]
    path = inside(bundle, record.path)
    if path_sha256(path) != record.sha256:
        raise UserInputError(f"{path} changed since the export (its sha256 differs from the manifest's); "
                             "re-export the bundle")
    return fmt, path


def _app_format(name: str) -> bool:
    """A format an app runs at full precision with a runtime installed here (one ``bench`` times: not
    the program file, which only PyTorch reads)."""
    from ..formats import FORMATS, runners_for
    fmt = FORMATS.get(name)
    return (fmt is not None and fmt.benchmark and fmt.precision == "fp32"
            and bool(runners_for(fmt.kind, purpose="time")))


def predict(bundle: str | Path, images: list[str | Path], fmt: str | None = None,
            threads: int = 1) -> list[Prediction]:
    """Run each image through the bundle's model file and return its label, index and logits."""
    from ..formats import FORMATS, runners_for
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    fmt, path = model_file(bundle, manifest, fmt)
    spec, labels = manifest.model.input_spec, manifest.model.labels
    if len(images) > MAX_IMAGES:
        raise UserInputError(f"{len(images):,} images, over the {MAX_IMAGES:,} one call reads; split them up")
    for p in images:    # every file's header and CRCs checked before any runs; pixels decoded one at a time
        png_bytes(p)
    kind = FORMATS[fmt].kind if fmt in FORMATS else None
    runners = runners_for(kind, purpose="time") if kind else []
    if not runners:
        raise UserInputError(f"no runtime for {fmt} files is installed here; install its plugin or pick "
                             "another --format")
    runner = runners[0](path, threads=threads, spinning=False)
    reason = runner.unavailable_reason()
    if reason:
        raise UserInputError(f"cannot run {path.name} here: {reason}")
    runner.input_spec = spec
    out: list[Prediction] = []
    try:
        with runner:
            file_labels = runner.labels()
            if file_labels is not None and list(file_labels) != list(labels):
                raise UserInputError(f"{path.name} carries other labels than the manifest; re-export the bundle")
            for image in images:
                name, x = str(image), to_input(read_png(image), spec)
                logits = np.asarray(infer_batched(runner, x)[OUTPUT_NAME], dtype=np.float64)[0]
                index = int(np.argmax(logits))
                out.append(Prediction(image=name, label=labels[index], index=index,
                                      logits=[float(v) for v in logits]))
    except RunnerUnavailable as e:
        raise UserInputError(f"cannot run {path.name} here: {e}") from None
    return out

