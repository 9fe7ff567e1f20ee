"""Mixed-width palettes: the fewest weights kept wider, chosen by measured sensitivity, so that a
low-bit palettised package still passes its gate.

At 4 bits, one look-up table per tensor, a few weights carry most of the error (the shipped model:
logit slope 0.86 with every weight at 4 bits; docs/int8.md). coremltools' iOS 18 grouped tables do
not fix it (they pass only by leaving those weights fp16). Here, on the calibration samples (never the
check's inputs), in this tool's MIL interpreter:

1. every weight palettisable at ``bits`` is palettised alone, the rest of the program float, and its
   sensitivity is the relative error it causes on the logits;
2. the fewest weights, most sensitive first, are kept at ``keep_bits`` (6 under 4 bits) for the
   whole program, every other weight at ``bits``, to hold the gate's scale rules and agreement with
   a margin (:data:`MARGIN`: half the gate's slope and class-bias allowances) on those samples
   (found by bisection on the count).

Weights are known by their content (a digest of the fp16 values), not by name: coremltools names
constants from a counter that moves between conversions. Every table is made by coremltools' own
k-means (the ``kmeans`` mode's function), through its ``custom`` mode, which hands each weight to
:class:`Widths`; so what is measured is what ships, and the final conversion gives each weight its
chosen width.
"""
from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np

from ...kit import ExportContext, Tolerance, calibration_data, scale_metrics

#: calibration samples the sensitivity is measured on (the interpreter runs one per weight)
SAMPLES = 64
#: the share of the gate's slope and class-bias allowances the chosen mix may use on the calibration samples
MARGIN = 0.5


def digest(value: np.ndarray) -> str:
    value = np.ascontiguousarray(value)
    return hashlib.sha256(f"{value.dtype}{value.shape}".encode() + value.tobytes()).hexdigest()


def kmeans_table(value: np.ndarray, nbits: int) -> tuple[np.ndarray, np.ndarray]:
    """The look-up table and indices coremltools' ``kmeans`` mode makes of ``value``."""
    from coremltools.optimize.coreml._quantization_passes import palettize_weights
    return palettize_weights._get_lut_and_indices(value, "KMEANS", nbits, None)


class Widths:
    """coremltools' ``lut_function``: each weight palettised at ``bits``, or at ``keep_bits`` when its
    digest is in ``kept``; with ``record``, every weight seen is kept with its tables (measuring)."""

    def __init__(self, bits: int, keep_bits: int, kept=(), record: bool = False):
        self.bits, self.keep_bits, self.kept = bits, keep_bits, set(kept)
        self.seen: dict[str, dict[int, np.ndarray]] | None = {} if record else None

    def __call__(self, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = digest(value)
        width = self.keep_bits if key in self.kept else self.bits
        if self.seen is None:
            return kmeans_table(value, width)
        tables = {n: kmeans_table(value, n) for n in (self.bits, self.keep_bits)}   # each k-means once
        self.seen[key] = {n: _decompressed(value, *table) for n, table in tables.items()}
        return tables[width]

    def config(self, threshold: int):
        from coremltools.optimize.coreml import OpPalettizerConfig, OptimizationConfig
        return OptimizationConfig(global_config=OpPalettizerConfig(mode="custom", lut_function=self,
                                                                   weight_threshold=threshold))


def _decompressed(value: np.ndarray, lut: np.ndarray, indices: np.ndarray) -> np.ndarray:
    return np.asarray(lut)[np.asarray(indices).reshape(-1)].reshape(value.shape).astype(value.dtype)


def _holds(out: np.ndarray, ref: np.ndarray, gate: Tolerance) -> tuple[bool, dict]:
    slope, bias = scale_metrics(np.asarray(out, np.float64), np.asarray(ref, np.float64))
    agreement = float(np.mean(out.argmax(1) == ref.argmax(1)))
    ok = (bool(np.isfinite(out).all())
          and abs(slope - 1) <= MARGIN * (gate.max_slope_error or 0)
          and bias <= MARGIN * (gate.max_class_bias or 0)
          and agreement >= (gate.min_top1_agreement or 0))
    return ok, {"slope": round(slope, 4), "class_bias_max": round(bias, 4), "top1_agreement": round(agreement, 4)}


def choose_widths(ctx: ExportContext, convert, bits: int, keep_bits: int, threshold: int,
                  gate: Tolerance) -> tuple[list[str], dict]:
    """The digests of the weights to keep at ``keep_bits`` (the rest at ``bits``) and what was
    measured. ``convert(ctx, compression, path)`` writes the package the pipeline makes with
    ``compression``."""
    from .mil import MilProgram
    x = calibration_data(ctx)[0][:SAMPLES]
    with tempfile.TemporaryDirectory(prefix="bsconv-palette-") as tmp:
        workdir = Path(tmp)
        convert(ctx, (), workdir / "float.mlpackage")
        program = MilProgram(workdir / "float.mlpackage")
        seen = Widths(bits, keep_bits, record=True)
        convert(ctx, (("compression::palettize_weights", {"config": seen.config(threshold)}),),
                workdir / "measured.mlpackage")
    names, consumers = {}, {}
    for op in program.ops:
        if op.op_type == "const" and op.outputs[0].val is not None and digest(op.outputs[0].val) in seen.seen:
            key = digest(op.outputs[0].val)
            names[key] = op.outputs[0].name
            consumers[key] = ", ".join(c.name for c in op.outputs[0].child_ops)
    missing = set(seen.seen) - set(names)
    if missing:
        raise RuntimeError(f"{len(missing)} palettised weights not found in the float program by their values")

    def logits(widths: dict[str, int]) -> np.ndarray:
        weights = {names[k]: seen.seen[k][n] for k, n in widths.items()}
        return np.concatenate([program.run(row[None], ctx.spec, weights=weights) for row in x])

    ref = logits({})
    ref_c = ref - ref.mean(axis=1, keepdims=True)
    energy = float(np.sqrt((ref_c ** 2).sum())) or 1.0
    sensitivity = {}
    for key in names:
        out = logits({key: bits})
        sensitivity[key] = float(np.sqrt(((out - out.mean(axis=1, keepdims=True) - ref_c) ** 2).sum())) / energy
    order = sorted(names, key=lambda k: -sensitivity[k])
    tries: dict[int, dict] = {}

    def holds(count: int) -> bool:       # the ``count`` most sensitive kept wider
        if count not in tries:
            kept = set(order[:count])
            ok, measured = _holds(logits({k: keep_bits if k in kept else bits for k in names}), ref, gate)
            tries[count] = {"kept": count, "holds": ok, **measured}
        return tries[count]["holds"]

    # the fewest kept that hold, by bisection on the sensitivity order (each weight kept wider lowers
    # the error, so holding is taken as monotone in the count; the count chosen is measured itself)
    lo, hi = 0, len(order)
    ok = holds(lo)
    if ok:
        hi = lo
    else:
        ok = holds(hi)
        while ok and hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if holds(mid) else (mid, hi)
    kept = order[:hi]
    info = {"bits": bits, "keep_bits": keep_bits, "weights": len(names),
            "kept": [consumers[k] for k in kept], "held_on_calibration": ok, "calibration_samples": int(len(x)),
            "sensitivity": [{"weight_of": consumers[k], "relative_error": round(sensitivity[k], 5)} for k in order],
            "tries": [tries[c] for c in sorted(tries)], "margin": MARGIN}
    return kept, info
