"""The check's inputs: the shipped held-out digits when they apply to the model
(:func:`models.data.is_digits_model`); else ``--data``; else N inputs drawn uniformly from the
model's value range (seeded). Grey data gets coloured copies of a tenth of its inputs; edge cases
are always added: all zeros, all saturated at the top of the range, a min/max checkerboard, and
each channel saturated alone. Reduced-precision artifacts are judged on at least
``REDUCED_MIN_SAMPLES`` drawn inputs (see :mod:`exporter.kit.tolerances`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...models.data import is_digits_model, load_holdout, load_inputs
from ...models.registry import InputSpec
from ..kit.tolerances import REDUCED_MIN_SAMPLES


@dataclass
class CheckInputs:
    """The check's inputs: what every artifact runs on, and how they were made."""
    x: np.ndarray
    labels: np.ndarray | None     # for the first len(labels) rows
    source: str
    fp32_rows: np.ndarray | None = None   # rows fp32 artifacts run on (None: all)
    edge_rows: int = 0                    # the last rows (of x, and of x[fp32_rows]) are the edge cases

    def digest(self) -> str:
        """What the check ran on, as a hash: the inputs, the labels and which rows fp32 files take."""
        h = hashlib.sha256()
        for a in (self.x, self.labels, self.fp32_rows):
            if a is not None:
                a = np.ascontiguousarray(a)
                h.update(repr((a.shape, str(a.dtype))).encode() + a.tobytes())
            h.update(b"|")
        return h.hexdigest()


def edge_cases(spec: InputSpec, n_shape: tuple[int, ...]) -> np.ndarray:
    lo, hi = spec.value_range
    zeros = np.zeros(n_shape, np.float32)
    top = np.full(n_shape, hi, np.float32)
    checker = np.indices(n_shape[1:]).sum(axis=0) % 2
    board = np.where(checker, hi, lo).astype(np.float32)[None]
    primaries = []
    for c in range(n_shape[1]):
        p = np.full(n_shape, lo, np.float32)
        p[:, c] = hi
        primaries.append(p)
    return np.concatenate([zeros, top, board, *primaries])


def tinted(x: np.ndarray, spec: InputSpec, seed: int = 0) -> np.ndarray:
    """Coloured copies of grey inputs (every channel equal, as the digits are): a tenth of them (at
    least 8), each channel scaled by its own random factor towards the range's bottom, so a swapped
    or mis-scaled channel shows on many inputs, not only on the edge cases. Nothing for colour data."""
    if x.shape[1] < 2 or not len(x) or not np.array_equal(x[:, :1].repeat(x.shape[1], axis=1), x):
        return x[:0]
    rng = np.random.default_rng(seed + 1)
    pick = x[rng.choice(len(x), size=min(len(x), max(8, len(x) // 10)), replace=False)]
    lo = spec.value_range[0]
    tint = rng.uniform(0.1, 1.0, (len(pick), x.shape[1], 1, 1)).astype(np.float32)
    return (lo + (pick - lo) * tint).astype(np.float32)


def check_inputs(spec: InputSpec, data: str | Path | None = None, samples: int = 32, seed: int = 0,
                 reduced: bool = False) -> CheckInputs:
    """The check's inputs; with ``reduced``, enough drawn inputs for the agreement rules."""
    shape = spec.shape
    fp32_rows = None
    if data is not None:
        x, y = load_inputs(data, spec)
        source = str(data)
    elif is_digits_model(spec):
        x, y = load_holdout(spec.size)
        source = "shipped held-out digits"
    else:
        lo, hi = spec.value_range
        n = max(samples, REDUCED_MIN_SAMPLES) if reduced else samples
        x = np.random.default_rng(seed).uniform(lo, hi, (n,) + shape).astype(np.float32)
        y = None
        source = f"{n} uniform samples in [{lo}, {hi}]"
        if n > samples:
            source += f" (fp32 artifacts: the first {samples})"
            fp32_rows = np.arange(samples)
    n_given = len(x)
    x = np.concatenate([x, tinted(x, spec, seed)])
    edges = edge_cases(spec, (1,) + shape)
    if fp32_rows is not None:
        fp32_rows = np.concatenate([fp32_rows, len(x) + np.arange(len(edges))])
    n_tinted = len(x) - n_given
    return CheckInputs(x=np.concatenate([x, edges]), labels=y,
                       source=f"{source}{f' + {n_tinted} coloured copies' if n_tinted else ''} + {len(edges)} edge cases",
                       fp32_rows=fp32_rows, edge_rows=len(edges))
