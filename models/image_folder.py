"""A folder of the user's own images as model inputs: what ``check --data DIR``, ``evaluate --data DIR``
and ``export --calibration DIR`` read.

Two layouts: class subfolders named by the model's labels (``DIR/cat/1.jpg``, ``DIR/dog/2.png``: the
images are labelled, so accuracy can be measured), or a flat folder of images (agreement only). Images
are PNG, JPEG or WebP, decoded with Pillow and turned into inputs by the app contract's one pixel rule
(:mod:`kernel.pixels`), so a check on them sees exactly what an app would feed.

Everything in the folder is untrusted. Before any image is decoded: the folder holds at most
:data:`MAX_IMAGES` images and one level of subfolders; every entry is a regular file or a folder
(a link is followed only when it stays inside the folder); only images are there (hidden files such as
``.DS_Store`` are passed over); the inputs they make fit :data:`kernel.limits.MAX_DATA_BYTES`. Each
image is read bounded (:data:`MAX_IMAGE_BYTES`), must be what it says (a text file named ``.png`` is
refused) and declare at most :data:`MAX_IMAGE_SIDE` pixels a side before its pixels are decoded (a
decompression bomb is refused by its header). Every problem is one line naming the file and the fix.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from ..kernel.errors import UserInputError
from ..kernel.limits import MAX_DATA_BYTES
from ..kernel.pixels import to_input
from ..kernel.safe_io import read_regular

MAX_IMAGES = 10_000
MAX_IMAGE_BYTES = 64 << 20
MAX_IMAGE_SIDE = 8192
#: suffix → the Pillow format the file must turn out to be
SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
KINDS = "PNG, JPEG or WebP"


def load_image_folder(folder: str | Path, spec) -> tuple[np.ndarray, np.ndarray | None]:
    """The images of ``folder`` as inputs ``[N, C, size, size]`` for ``spec``, with labels (indices into
    the spec's labels) when the folder has class subfolders, else None. Sorted by class, then name."""
    files = scan_image_folder(folder, spec)
    x = np.empty((len(files), spec.channels, spec.size, spec.size), np.float32)
    for i, (path, _) in enumerate(files):   # one image decoded at a time
        x[i] = to_input(read_image(path, grey=spec.channels == 1), spec)[0]
    labelled = files[0][1] is not None
    return x, np.asarray([label for _, label in files], np.int64) if labelled else None


def scan_image_folder(folder: str | Path, spec) -> list[tuple[Path, int | None]]:
    """The images ``folder`` holds, each with its label's index (None in a flat folder), every rule on the
    folder's shape and size checked; nothing is decoded (an export checks ``--calibration DIR`` so,
    before any work)."""
    root = Path(folder)
    subfolders, loose = _listing(root, root)
    if subfolders:
        if loose:
            raise UserInputError(f"{loose[0]}: a folder with class subfolders takes images only inside them; "
                                 "move it into its class's folder, or out of the folder")
        index = {label: i for i, label in enumerate(spec.class_labels())}
        unknown = [p.name for p in subfolders if p.name not in index]
        if unknown:
            labels = list(index)
            raise UserInputError(f"{root}: subfolder {unknown[0]!r} is not one of the model's labels "
                                 f"({', '.join(labels[:10])}{', …' if len(labels) > 10 else ''}); name each "
                                 "subfolder by its class's label")
        files: list[tuple[Path, int | None]] = []
        for sub in sorted(subfolders, key=lambda p: index[p.name]):
            deeper, inner = _listing(sub, root, budget=MAX_IMAGES - len(files))
            if deeper:
                raise UserInputError(f"{deeper[0]}: class folders hold images, not folders; one level of "
                                     "subfolders, named by label")
            files += [(p, index[sub.name]) for p in inner]
    else:
        files = [(p, None) for p in loose]
    if not files:
        raise UserInputError(f"{root}: no images ({KINDS}) in the folder or its class subfolders")
    per_image = 4 * spec.channels * spec.size * spec.size
    if len(files) * per_image > MAX_DATA_BYTES:
        raise UserInputError(f"{root}: {len(files):,} images at {spec.size}x{spec.size} make "
                             f"{len(files) * per_image / 2**20:,.0f} MiB of inputs, over this tool's bound of "
                             f"{MAX_DATA_BYTES / 2**20:,.0f} MiB; use fewer images")
    return files


def _listing(folder: Path, root: Path, budget: int = MAX_IMAGES) -> tuple[list[Path], list[Path]]:
    """One folder's entries that count (hidden ones passed over), as (folders, image files), each sorted by
    name: every entry a folder or a regular file with an image suffix, links only inside ``root``, at most
    ``budget`` files."""
    folders: list[Path] = []
    files: list[Path] = []
    try:
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                path = Path(entry.path)
                if entry.is_symlink():
                    target = path.resolve()
                    if not target.is_relative_to(root.resolve()):
                        raise UserInputError(f"{path} is a link out of the folder (to {target}); copy the image "
                                             "into the folder instead")
                if entry.is_dir():
                    folders.append(path)
                    continue
                if not entry.is_file():
                    raise UserInputError(f"{path} is not a regular file; the folder holds images only")
                if path.suffix.lower() not in SUFFIXES:
                    raise UserInputError(f"{path} is not an image ({KINDS}, by its name); remove it from the folder")
                files.append(path)
                if len(files) > budget:
                    raise UserInputError(f"{root} holds more than {MAX_IMAGES:,} images, this tool's bound; "
                                         "use a sample of them")
    except NotADirectoryError:
        raise UserInputError(f"{folder} is not a folder of images") from None
    except PermissionError:
        raise UserInputError(f"{folder}: permission denied; make it readable") from None
    by_name = (lambda p: p.name)
    return sorted(folders, key=by_name), sorted(files, key=by_name)


def read_image(path: Path, *, grey: bool) -> np.ndarray:
    """One image as 8-bit pixels ``[H, W, 1|3]`` (grey for a 1-channel model, else RGB; alpha dropped),
    checked to be the kind its name says and bounded by its declared size before it is decoded."""
    from PIL import Image, UnidentifiedImageError
    data = read_regular(path, "the image", max_bytes=MAX_IMAGE_BYTES, follow_links=True)
    kind = SUFFIXES[path.suffix.lower()]
    try:
        with Image.open(io.BytesIO(data), formats=[kind]) as im:
            w, h = im.size
            if not (1 <= w <= MAX_IMAGE_SIDE and 1 <= h <= MAX_IMAGE_SIDE):
                raise UserInputError(f"{path} declares {w}x{h} pixels, over this tool's bound of "
                                     f"{MAX_IMAGE_SIDE} a side; resize it")
            pixels = np.asarray(im.convert("L" if grey else "RGB"), dtype=np.uint8)
    except UnidentifiedImageError:
        raise UserInputError(f"{path} is not a {kind} image, whatever its name says; remove it or re-save it as "
                             f"{KINDS}") from None
    except Image.DecompressionBombError:   # Pillow refuses such a header before we see its size
        raise UserInputError(f"{path} declares more than {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} pixels (a decompression "
                             "bomb, or an image far larger than a model's input); resize it") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UserInputError(f"{path}: unreadable {kind} ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__}); "
                             "re-save it") from None
    return pixels[:, :, None] if pixels.ndim == 2 else pixels
