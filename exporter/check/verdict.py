"""The verdict rules: an artifact's outputs against the reference, as metrics (max abs and rel error,
cosine, top-1 agreement and its interval, top-5 overlap, logit slope, per-class bias) and the first
rule of its precision's gate (:class:`exporter.kit.tolerances.Tolerance`) they break, if any.
NaN or Inf fails."""
from __future__ import annotations

import numpy as np

from ..kit.tolerances import FP32_TYPICAL_FLOOR, Tolerance, agreement_interval, scale_metrics
from .reference import Reference

REL_EPS = 1e-6


def compare(out: np.ndarray, ref: np.ndarray, k: int = 5) -> dict[str, float]:
    out = np.asarray(out, np.float64)
    ref = np.asarray(ref, np.float64)
    diff = np.abs(out - ref)
    finite = bool(np.isfinite(out).all())
    num = (out * ref).sum(axis=1)
    den = np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1)
    cos = np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)
    k = min(k, ref.shape[1])
    top_o = np.argsort(-out, axis=1)[:, :k]
    top_r = np.argsort(-ref, axis=1)[:, :k]
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(top_o, top_r)])
    agree = int(np.sum(out.argmax(1) == ref.argmax(1))) if finite else 0
    low, high = agreement_interval(agree, len(out))
    slope, class_bias = scale_metrics(out, ref) if finite else (float("nan"), float("inf"))
    return {
        "max_abs": float(np.nanmax(diff)) if finite else float("inf"),
        "max_rel": float(np.nanmax(diff / (np.abs(ref) + REL_EPS))) if finite else float("inf"),
        "mean_abs": float(np.nanmean(diff)) if finite else float("inf"),
        "cosine_min": float(np.nanmin(cos)) if finite else float("nan"),
        "cosine_mean": float(np.nanmean(cos)) if finite else float("nan"),
        "top1_agreement": agree / len(out),
        "top1_agreement_low": low,
        "top1_agreement_high": high,
        "top5_overlap": float(overlap) if finite else 0.0,
        "nonfinite": int((~np.isfinite(out)).sum()),
        "slope": slope,
        "class_bias_max": class_bias,
    }


def measure(out: np.ndarray, ref: np.ndarray, tol: Tolerance, edge_rows: int = 0) -> dict[str, float]:
    """:func:`compare`, with the scale metrics (slope, class bias) taken without the last ``edge_rows``
    inputs (the edge cases) where the gate says so (``Tolerance.scale_without_edge_cases``); then the
    values over every input are kept beside them, as ``…_with_edge_cases``."""
    m = compare(out, ref)
    if tol.scale_without_edge_cases and 0 < edge_rows < len(out) and not m["nonfinite"]:
        m["slope_with_edge_cases"], m["class_bias_max_with_edge_cases"] = m["slope"], m["class_bias_max"]
        m["slope"], m["class_bias_max"] = scale_metrics(np.asarray(out[:-edge_rows], np.float64),
                                                        np.asarray(ref[:-edge_rows], np.float64))
    return m


def fp32_bounds(ref: Reference, tol: Tolerance) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample bounds on |artifact − float64|: (every sample's, the median sample's);
    see :mod:`exporter.kit.tolerances`."""
    floor = tol.atol + (tol.rtol or 0.0) * np.abs(ref.r64).max(axis=1)
    every = np.maximum(floor, (tol.factor or 0.0) * ref.e32)
    typical = (np.maximum(FP32_TYPICAL_FLOOR * floor, tol.typical_factor * ref.e32) if tol.typical_factor
               else every)
    return every, typical


def verdict(out: np.ndarray, ref: Reference, m: dict[str, float], tol: Tolerance,
            accuracy: float | None = None, reference_accuracy: float | None = None) -> str | None:
    """None when within tolerance, else the first reason it is not."""
    if m["nonfinite"]:
        return f"{m['nonfinite']} NaN/Inf values in the output"
    if tol.atol is not None:
        every, typical = fp32_bounds(ref, tol)
        err = np.abs(out.astype(np.float64) - ref.r64).max(axis=1)
        m["bound_used"] = float((err / every).max())
        m["typical_bound_used"] = float(np.median(err / typical))
        bad = err > every
        if bad.any():
            worst = int(np.argmax(err / every))
            return (f"{int(bad.sum())} of {len(err)} samples outside {tol.describe()} "
                    f"(worst: error {err[worst]:.3g}, bound {every[worst]:.3g}, "
                    f"PyTorch fp32's own noise {ref.e32[worst]:.3g})")
        if m["typical_bound_used"] > 1:
            mid = int(np.argsort(err / typical)[len(err) // 2])
            return (f"the median sample is outside {tol.describe()} (error {err[mid]:.3g}, bound "
                    f"{typical[mid]:.3g}, PyTorch fp32's own noise {ref.e32[mid]:.3g}): a systematic error")
    _reduced_bound_uses(out, ref, m, tol)
    if tol.min_cosine is not None and m["cosine_min"] < tol.min_cosine:
        return f"cosine {m['cosine_min']:.6f} < {tol.min_cosine}"
    if tol.min_top1_agreement is not None and m["top1_agreement_high"] < tol.min_top1_agreement:
        return (f"top-1 agreement {m['top1_agreement']:.2%} (95% bound {m['top1_agreement_high']:.2%}) "
                f"< {tol.min_top1_agreement:.0%}")
    if tol.max_slope_error is not None:
        if m["slope_bound_used"] > 1:
            return (f"the logits are {m['slope']:.4f}x the reference's (least-squares slope; allowed 1 ± "
                    f"{tol.max_slope_error:g}): probabilities an app thresholds are off")
    if tol.max_class_bias is not None:
        if m["class_bias_bound_used"] > 1:
            return (f"a class's logit is off by {m['class_bias_max']:.3g} RMS on average over the inputs "
                    f"(allowed {tol.max_class_bias:g}): that class is made more or less likely everywhere")
    if tol.fp16_factor is not None and ref.e16 is not None:
        if m["fp16_bound_used"] > 1:
            err = np.abs(out.astype(np.float64) - ref.r64).max(axis=1)
            worst = int(np.argmax(err / ref.e16))
            return (f"error {err[worst]:.3g} on one input is over {tol.fp16_factor:g}x PyTorch fp16's own "
                    f"({ref.e16[worst]:.3g})")
        if m["fp16_typical_bound_used"] > 1:
            return (f"the median input's error is over {tol.fp16_typical_factor:g}x PyTorch fp16's own: "
                    "a systematic error, not fp16 rounding")
    if tol.max_accuracy_drop is not None and accuracy is not None and reference_accuracy is not None \
            and reference_accuracy - accuracy > tol.max_accuracy_drop + 1e-12:
        return (f"accuracy {accuracy:.2%} is {100 * (reference_accuracy - accuracy):.2f} points below PyTorch's "
                f"{reference_accuracy:.2%} (allowed {tol.max_accuracy_drop * 100:g})")
    return None


def _reduced_bound_uses(out: np.ndarray, ref: Reference, m: dict[str, float], tol: Tolerance) -> None:
    """How much of each scale bound the artifact uses (recorded even when another rule fails it)."""
    if tol.max_slope_error is not None:
        m["slope_bound_used"] = abs(m["slope"] - 1) / tol.max_slope_error
    if tol.max_class_bias is not None:
        m["class_bias_bound_used"] = m["class_bias_max"] / tol.max_class_bias
    if tol.fp16_factor is not None and ref.e16 is not None:
        err = np.abs(out.astype(np.float64) - ref.r64).max(axis=1)
        m["fp16_bound_used"] = float(np.max(err / (tol.fp16_factor * ref.e16)))
        m["fp16_typical_bound_used"] = float(np.median(err / (tol.fp16_typical_factor * ref.e16)))
