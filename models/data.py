"""The digits data set the shipped model is trained on, and ``.npz`` inputs.

scikit-learn bundles 1,797 handwritten digits as 8×8 grey images (values
0–16): no download. They become model inputs by bilinear upscaling to 32×32,
scaling to [0, 1] and repeating the grey channel as RGB. The held-out split
(20 %, stratified, seed 0) lives in ``models/data/digits_holdout.npz`` as the
raw 8×8 images, so every later stage checks against the same real samples.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import UserInputError

DATA_DIR = Path(__file__).parent / "data"
HOLDOUT_PATH = DATA_DIR / "digits_holdout.npz"
DIGIT_LABELS = tuple(str(i) for i in range(10))
SPLIT_SEED = 0
HOLDOUT_FRACTION = 0.2


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


def load_npz_inputs(path: str | Path, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """A user's ``.npz`` with ``input`` [N, C, H, W] float32 and optional ``label`` [N]."""
    path = Path(path)
    try:
        f = np.load(path)
    except (OSError, ValueError) as e:
        raise UserInputError(f"{path}: not a readable .npz file ({e})") from None
    with f:
        if "input" not in f:
            raise UserInputError(f"{path}: no array named 'input' (found {', '.join(f.files) or 'none'})")
        x = np.asarray(f["input"], dtype=np.float32)
        y = np.asarray(f["label"], dtype=np.int64) if "label" in f else None
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(shape):
        raise UserInputError(f"{path}: 'input' has shape {list(x.shape)}, expected [N, {', '.join(map(str, shape))}]")
    if y is not None and y.shape != (x.shape[0],):
        raise UserInputError(f"{path}: 'label' has shape {list(y.shape)}, expected [{x.shape[0]}]")
    return x, y
