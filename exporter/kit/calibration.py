"""Which data calibrates a quantised artifact, and which data its mixed-precision gate measures on.

Both int8 stages (the ONNX QDQ file and the ExecuTorch ``.pte``) read these, so
they calibrate on the same samples. In order of preference: ``--calibration
FILE.npz`` (an ``input`` array) or ``--calibration DIR`` (a folder of images, read by the app's
pixel rule: :mod:`models.image_folder`); for a digits model, 256 images of the digits'
*training* split (never the held-out split the check measures on);
``--calibration random`` (uniform noise over the input's value range: for
latency work only — the check says what it costs).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...models.data import digits_to_input, is_digits_model, load_inputs, split_digits
from ...kernel.errors import UserInputError

from .context import ExportContext
from .options import ExportOptions

CALIBRATION_SAMPLES = 256
GATE_SAMPLES = 128
#: the random streams of --calibration random (calibration, then the gate): their own, never the check's
#: (the check draws from seed 0; calibrating on those very inputs made the check measure its own fit)
RANDOM_STREAM = 0xCA1B


def validate_calibration(opts: ExportOptions, spec) -> None:
    """Before any work: real samples from a file that exists, 'random' said out loud, or the shipped digits."""
    if opts.calibration not in (None, "random") and not Path(opts.calibration).exists():
        raise UserInputError(f"--calibration {opts.calibration} does not exist; pass a folder of images, an .npz "
                             "with an 'input' array, or 'random'")
    if opts.calibration not in (None, "random") and Path(opts.calibration).is_dir():
        from ...models.image_folder import scan_image_folder
        scan_image_folder(opts.calibration, spec)   # a hostile folder: one line now, nothing written
    if opts.calibration is None and not is_digits_model(spec):
        raise UserInputError("int8 needs real calibration samples: pass --calibration FILE.npz (an 'input' "
                             "array of real inputs), or --calibration random for latency work only")


def calibration_data(ctx: ExportContext) -> tuple[np.ndarray, np.ndarray | None, str]:
    """The calibration inputs for ``ctx``, their labels where a user's file has them, and where
    they came from."""
    source = ctx.options.calibration
    spec = ctx.spec
    if source == "random":
        lo, hi = spec.value_range
        x = np.random.default_rng([RANDOM_STREAM, 0]).uniform(lo, hi, (64,) + spec.shape).astype(np.float32)
        return x, None, "random uniform (latency work only)"
    if source:
        x, y = load_inputs(source, spec)
        return x, y, str(source)
    if is_digits_model(spec):
        images, _, _, _ = split_digits()
        idx = digits_order(len(images))[:CALIBRATION_SAMPLES]
        return digits_to_input(images[idx], spec.size), None, f"{len(idx)} digits from the training split"
    raise UserInputError("int8 needs real calibration samples: pass --calibration FILE.npz (an 'input' array "
                         f"[N, {', '.join(map(str, spec.shape))}]), or --calibration random for latency work only")


def gate_data(ctx: ExportContext, calibration: np.ndarray,
              labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Inputs the mixed-precision gate measures on (labels where they exist), never the check's:
    for digits, training-split images the calibration did not use; for random calibration, other
    random samples; for a user's file, its own samples (``calibration`` and ``labels``: the only
    real data there is)."""
    spec = ctx.spec
    if ctx.options.calibration == "random":
        lo, hi = spec.value_range
        x = np.random.default_rng([RANDOM_STREAM, 1]).uniform(lo, hi, (GATE_SAMPLES,) + spec.shape).astype(np.float32)
        return x, None, f"{GATE_SAMPLES} other random uniform samples"
    if ctx.options.calibration:
        return calibration, labels, f"the {len(calibration)} calibration samples"
    images, labels, _, _ = split_digits()
    idx = digits_order(len(images))[CALIBRATION_SAMPLES:CALIBRATION_SAMPLES + 2 * GATE_SAMPLES]
    return digits_to_input(images[idx], spec.size), labels[idx], f"{len(idx)} other digits from the training split"


def digits_order(n: int) -> np.ndarray:
    """The fixed order the digits' training split is drawn in: calibration takes the first samples, the
    mixed-precision gate the next ones, so the two never overlap."""
    return np.random.default_rng(0).permutation(n)
