"""Bounds on what this tool allocates from: one definition for every flag, reader and file.

A size that a flag, a manifest, a checkpoint header or an npz header names is
checked here before anything is allocated from it, so a typo (``--input-size
100000``) or a hostile file (a 328-byte npz that declares 10⁹ samples) is one
line naming the bound, never an out-of-memory traceback or minutes of work.
"""
from __future__ import annotations

import math

from .errors import UserInputError

MAX_INPUT_SIZE = 4096                 # pixels per side
MAX_CHANNELS = 16
MAX_CLASSES = 100_000
MAX_BATCH = 1024                      # also the largest batch a dynamic-batch artifact is built for
MAX_INPUT_ELEMENTS = 1 << 26          # one input tensor: 64 M float32 values, 256 MiB
MAX_SAMPLES = 100_000                 # rows of a --data/--calibration file
MAX_DATA_BYTES = 1 << 30              # a --data/--calibration array, uncompressed


def check_input_size(size: int, flag: str = "--input-size") -> int:
    if not 1 <= size <= MAX_INPUT_SIZE:
        raise UserInputError(f"{flag} {size} is outside 1..{MAX_INPUT_SIZE}, this tool's bound; "
                             "give the model's input side in pixels")
    return size


def check_batch(batch: int, flag: str = "--batch") -> int:
    if not 1 <= batch <= MAX_BATCH:
        raise UserInputError(f"{flag} {batch} is outside 1..{MAX_BATCH}, this tool's bound")
    return batch


def check_input_elements(shape: tuple[int, ...] | list[int], what: str = "the input") -> None:
    """Refuse one input tensor larger than :data:`MAX_INPUT_ELEMENTS` (e.g. batch × 3 × 224²)."""
    n = math.prod(int(v) for v in shape)
    if n > MAX_INPUT_ELEMENTS:
        raise UserInputError(f"{what} of shape {list(shape)} holds {n:,} values, over this tool's bound of "
                             f"{MAX_INPUT_ELEMENTS:,}; use a smaller batch or input size")


def check_finite(value: float, flag: str, low: float | None = None) -> float:
    """A float flag that must be a finite number (NaN passes click's range checks), at least ``low``."""
    if not math.isfinite(value) or (low is not None and value < low):
        bound = f" and at least {low:g}" if low is not None else ""
        raise UserInputError(f"{flag} {value} must be a finite number{bound}")
    return value
