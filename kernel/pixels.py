"""The app contract's pixel rule, in one place: 8-bit pixels to the model's float input, exactly as the
clients (C++, JavaScript) and ``predict`` compute it (docs/bundle.md): scale 0..255 to [0, 1], resize
(bilinear, half-pixel centres, no antialiasing), a grey image's channel repeated for a 3-channel model,
channels in the spec's colour order, [0, 1] mapped onto the value range, then mean/std per channel.
Every image this tool reads (``predict``, an image folder for ``--data`` or ``--calibration``) goes
through it.
"""
from __future__ import annotations

import numpy as np

from .errors import UserInputError


def resize_bilinear(img: np.ndarray, size: int, divisor: float = 1.0) -> np.ndarray:
    """``[H, W, C]`` → ``[size, size, C]``, bilinear with half-pixel centres and no antialiasing: PyTorch's
    ``interpolate(mode="bilinear", align_corners=False)``, of ``img / divisor``. Float64 throughout; the
    identity at the same size. Only the source rows and columns the taps read are converted (an 8192²
    image costs its taps, not 1.6 GB of float64), so the values are those of converting everything."""
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img.astype(np.float64) / divisor
    y0, y1, wy = _taps(h, size)
    x0, x1, wx = _taps(w, size)

    def at(rows, cols):
        return img[rows][:, cols].astype(np.float64) / divisor
    top = at(y0, x0) * (1 - wx)[None, :, None] + at(y0, x1) * wx[None, :, None]
    bottom = at(y1, x0) * (1 - wx)[None, :, None] + at(y1, x1) * wx[None, :, None]
    return top * (1 - wy)[:, None, None] + bottom * wy[:, None, None]


def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index: the two source indices and the second one's weight."""
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.floor(src).astype(np.int64)
    return i0, np.minimum(i0 + 1, n_in - 1), src - i0


def to_input(pixels: np.ndarray, spec) -> np.ndarray:
    """8-bit pixels ``[H, W, 1|3]`` → the model's float32 input ``[1, C, size, size]``, by the contract's rule:
    scale 0..255 to [0, 1]; resize to ``size`` (bilinear, half-pixel); a grey image gets its one channel
    repeated for a 3-channel model; channels in ``color_order``; map [0, 1] onto ``value_range``; with
    ``normalization == "mean_std"`` subtract ``mean`` and divide by ``std`` per channel."""
    c = pixels.shape[2]
    if spec.channels == 1 and c != 1:
        raise UserInputError(f"the model takes grey images (1 channel); this image has {c}: convert it to greyscale")
    if spec.channels not in (1, 3):
        raise UserInputError(f"the model takes {spec.channels} channels; clients read 1- or 3-channel images")
    x = resize_bilinear(pixels, spec.size, divisor=255.0)
    if spec.channels == 3 and c == 1:
        x = np.repeat(x, 3, axis=2)
    if spec.color_order == "BGR":
        x = x[:, :, ::-1]
    lo, hi = spec.value_range
    x = lo + (hi - lo) * x
    if spec.normalization == "mean_std":
        x = (x - np.asarray(spec.mean, dtype=np.float64)) / np.asarray(spec.std, dtype=np.float64)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)
