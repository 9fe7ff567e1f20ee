"""The digits data set the shipped model is trained on, and ``.npz`` inputs.

scikit-learn bundles 1,797 handwritten digits as 8×8 grey images (values
0–16): no download. They become model inputs by bilinear upscaling to 32×32,
scaling to [0, 1] and repeating the grey channel as RGB. The held-out split
(20 %, stratified, seed 0) lives in ``models/data/digits_holdout.npz`` as the
raw 8×8 images, so every later stage checks against the same real samples.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..kernel.errors import UserInputError
from ..kernel.limits import MAX_DATA_BYTES, MAX_SAMPLES
from ..kernel.safe_io import open_regular

DATA_DIR = Path(__file__).parent / "data"
HOLDOUT_PATH = DATA_DIR / "digits_holdout.npz"
DIGIT_LABELS = tuple(str(i) for i in range(10))
SPLIT_SEED = 0
HOLDOUT_FRACTION = 0.2


def is_digits_model(spec) -> bool:
    """The one rule for "the shipped digits data applies to this model": its labels are the
    ten digits and it takes 3-channel input (the held-out check data, the default int8
    calibration and ``evaluate``'s default data all follow it)."""
    return tuple(spec.class_labels()) == DIGIT_LABELS and spec.channels == 3


def digits_to_input(images: np.ndarray, size: int = 32) -> np.ndarray:
    """[N, 8, 8] values 0–16 → float32 [N, 3, size, size] in [0, 1]."""
    x = torch.from_numpy(np.asarray(images, dtype=np.float32) / 16.0)[:, None]
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.clamp_(0.0, 1.0).repeat(1, 3, 1, 1).numpy()


def split_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_images, train_labels, holdout_images, holdout_labels), deterministic."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    images = d.images.astype(np.uint8)
    x_train, x_hold, y_train, y_hold = train_test_split(
        images, d.target.astype(np.int64), test_size=HOLDOUT_FRACTION, random_state=SPLIT_SEED,
        stratify=d.target)
    return x_train, y_train, x_hold, y_hold


def write_holdout(path: Path = HOLDOUT_PATH) -> Path:
    _, _, xh, yh = split_digits()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, images=xh, labels=yh)
    return path


def load_holdout(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """The shipped held-out digits as model inputs and labels."""
    with np.load(HOLDOUT_PATH) as f:
        return digits_to_input(f["images"], size), f["labels"].astype(np.int64)


MAX_NPZ_BYTES = 4 << 30
RANGE_SLACK = 1e-3   # values this far outside the spec's range are still accepted (rounding)
NPZ_FIX = "save one with numpy.savez(path, input=x, label=y)"


def load_inputs(path: str | Path, spec) -> tuple[np.ndarray, np.ndarray | None]:
    """A user's data for ``--data`` / ``--calibration``: a folder of images (:mod:`models.image_folder`,
    labelled when it has class subfolders) or an ``.npz`` (:func:`load_npz_inputs`)."""
    if Path(path).is_dir():
        from .image_folder import load_image_folder
        x, y = load_image_folder(path, spec)
        return validate_inputs(x, y, spec, str(path))
    return load_npz_inputs(path, spec)


def load_npz_inputs(path: str | Path, spec) -> tuple[np.ndarray, np.ndarray | None]:
    """A user's ``.npz`` with ``input`` [N, C, H, W] and optional ``label`` [N], validated
    against ``spec`` (an :class:`InputSpec`): the one check for ``--data``,
    ``--calibration`` and ``evaluate --data``. Shapes come from each array's header and are
    bounded (:mod:`models.limits`) before anything is allocated or decompressed, so neither a
    header that declares 10⁹ samples nor a deflate bomb costs more than the bound."""
    path = Path(path)
    fd = open_regular(path, "the data file", max_bytes=MAX_NPZ_BYTES)
    with os.fdopen(fd, "rb") as fh:
        if fh.read(6) == b"\x93NUMPY":
            raise UserInputError(f"{path} is a single .npy array, not an .npz; save it with numpy.savez(path, input=x)")
        fh.seek(0)
        try:
            with zipfile.ZipFile(fh) as z:
                members = {n[:-4]: n for n in z.namelist() if n.endswith(".npy")}
                if "input" not in members:
                    raise UserInputError(f"{path}: no array named 'input' (found {', '.join(sorted(members)) or 'none'})")
                x = _read_member(z, members["input"], path, "input")
                y = _read_member(z, members["label"], path, "label") if "label" in members else None
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
            if isinstance(e, UserInputError):
                raise
            raise UserInputError(f"{path}: not a readable .npz file ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__}); "
                                 f"{NPZ_FIX}") from None
    return validate_inputs(x, y, spec, str(path))


def _read_member(z: zipfile.ZipFile, member: str, path: Path, key: str) -> np.ndarray:
    """One array of an npz, its header read first and its size bounded before the data is read."""
    with z.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        if dtype.hasobject:
            raise UserInputError(f"{path}: '{key}' holds Python objects, which would need pickle; store plain numeric arrays")
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if shape and shape[0] > MAX_SAMPLES:
            raise UserInputError(f"{path}: '{key}' declares {shape[0]:,} samples, over this tool's bound of "
                                 f"{MAX_SAMPLES:,}; pass fewer samples")
        nbytes = n * dtype.itemsize
        if nbytes > MAX_DATA_BYTES:
            raise UserInputError(f"{path}: '{key}' declares {nbytes / 2**30:.2f} GiB of data, over this tool's "
                                 f"bound of {MAX_DATA_BYTES >> 30} GiB; pass fewer samples")
        data = bytearray(nbytes)   # decompression stops here, whatever the zip directory claims
        view, got = memoryview(data), 0
        while got < nbytes:
            n_read = f.readinto(view[got:])
            if not n_read:
                raise UserInputError(f"{path}: '{key}' is truncated ({got:,} of {nbytes:,} bytes); {NPZ_FIX}")
            got += n_read
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def validate_inputs(x: np.ndarray, y: np.ndarray | None, spec, source: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Inputs the model can take, as float32, and labels as int64; else one clear error."""
    shape = tuple(spec.shape)
    lo, hi = spec.value_range
    if x.dtype == np.uint8 or (x.dtype.kind in "iu" and x.size and x.max() > hi):
        raise UserInputError(f"{source}: 'input' holds {x.dtype} values (0..255 pixels?) but the model takes "
                             f"floats in [{lo:g}, {hi:g}]; divide by 255 (or map onto that range) first")
    if x.dtype.kind not in "fiu":
        raise UserInputError(f"{source}: 'input' has dtype {x.dtype}; it must be a float array")
    if x.ndim != 4 or tuple(x.shape[1:]) != shape:
        raise UserInputError(f"{source}: 'input' has shape {list(x.shape)}, expected [N, {', '.join(map(str, shape))}]")
    if len(x) < 1:
        raise UserInputError(f"{source}: 'input' holds no samples; give at least one")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise UserInputError(f"{source}: 'input' holds {int((~np.isfinite(x)).sum())} NaN/Inf values; clean them first")
    slack = RANGE_SLACK * (hi - lo)
    if x.min() < lo - slack or x.max() > hi + slack:
        hint = "; divide by 255" if x.max() > 1.5 and hi <= 1 else ""
        raise UserInputError(f"{source}: 'input' spans [{x.min():g}, {x.max():g}] but the model takes "
                             f"[{lo:g}, {hi:g}]{hint}")
    if y is not None:
        if y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0)):
            raise UserInputError(f"{source}: 'label' has dtype {y.dtype}; it must hold class indices")
        if y.shape != (len(x),):
            raise UserInputError(f"{source}: 'label' has shape {list(y.shape)}, expected [{len(x)}]")
        y = y.astype(np.int64)
        if y.min() < 0 or y.max() >= spec.num_classes:
            raise UserInputError(f"{source}: 'label' values span {y.min()}..{y.max()}, outside the model's "
                                 f"0..{spec.num_classes - 1}")
    return x, y
