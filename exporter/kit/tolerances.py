"""The check's pass rules, in one place.

fp32 — against a float64 run of the PyTorch original (the exact answer, up to
float64 rounding). Per sample, the network's own fp32 noise ``noise32`` is the
larger error of two PyTorch fp32 runs against float64: the original, and one with
every weight moved by up to one float32 ulp (what folding a BatchNorm into a
convolution does). It says how strongly that input amplifies rounding. With
``floor = FP32_ATOL + FP32_RTOL · max|torch64|`` (fp32 rounding cannot promise
less on a well-conditioned network), an artifact passes when

* every sample is within ``max(FP32_FACTOR · noise32, floor)`` — another runtime's
  summation order and fusions may be worse than PyTorch's on the inputs that
  amplify rounding most (onnxruntime's full optimisation measured 27x on a
  saturated single-channel input of MobileNetV3-small BSConv-U), and
* the median sample is within ``max(FP32_TYPICAL_FACTOR · noise32,
  FP32_TYPICAL_FLOOR · floor)`` — a systematic error (an input scaled by
  1/sqrt(1 + 1e-5), a bias moved) shows on the typical input, where rounding
  noise is small.

A user's ``--atol`` / ``--rtol`` replace both with a plain element-wise bound.

fp16 and int8 — per sample cosine and top-1 agreement with PyTorch fp32. An
agreement rule over few inputs says little (one flip in 38 is 97.4 %), so it is
decided on a one-sided 95 % Clopper–Pearson interval: an artifact fails only when
even the interval's upper end is below the required agreement, i.e. when the
inputs show it flips more often than allowed. The check draws at least
``REDUCED_MIN_SAMPLES`` inputs for reduced-precision artifacts so the interval
is narrow enough to matter (at 256 inputs and 99 %, 6 flips fail).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FP32_ATOL = 5e-5
FP32_RTOL = 5e-6
FP32_FACTOR = 64.0         # every sample: within 64x the network's own fp32 noise
FP32_TYPICAL_FACTOR = 3.0  # the median sample: within 3x
FP32_TYPICAL_FLOOR = 0.1   # ... and its floor is a tenth of every sample's
#: the loosest a correct fp32 rewrite may be, for stage-internal sanity checks (onnxsim's)
FP32_RTOL_MAX = 1e-3

REDUCED_MIN_SAMPLES = 256
# Scale and calibration in reduced precision (measured over correct exports: docs/check.md)
FP16_SLOPE = 0.02            # correct exports: within 1 ± 0.006
FP16_CLASS_BIAS = 0.01       # correct: up to 0.005; the digits' class bias +0.1 is 0.019
FP16_FACTOR = 16.0           # correct: every input within 5x PyTorch fp16's own error
FP16_TYPICAL_FACTOR = 3.0    # correct: the median input within 1.05x
# fp16 run where the CPU has fp16 arithmetic (Armv8.2: every recent phone core). There the runtime's
# fp16 kernels accumulate in fp16, where x86 (and PyTorch's fp16, the noise16 reference) store fp16 but
# accumulate in fp32, so the error is a multiple of noise16 by design, not by fault. Measured on the
# shipped model's model.fp16.onnx, 402 check inputs, onnxruntime 1.32 aarch64 under QEMU (docs/arm64.md):
# Cortex-A76 every input within 20.2x noise16 (p99 9.7x, median 2.35x; x86 and Cortex-A53: 4.3x, 1.04x),
# no top-1 flip, cosine >= 0.99974, slope 1.003, class bias 0.007. The label gates stay as they are.
FP16_ARITHMETIC_FACTOR = 64.0
FP16_ARITHMETIC_TYPICAL_FACTOR = 8.0
#: emulated CPU models (QEMU's names) with fp16 arithmetic (FEAT_FP16): an fp16 file's kernels compute in fp16
FP16_ARITHMETIC_CPUS = frozenset({"cortex-a55", "cortex-a76", "cortex-a710", "neoverse-n1", "neoverse-n2",
                                  "neoverse-v1", "a64fx", "max"})
INT8_SLOPE = 0.05            # correct (real calibration): within 1 ± 0.013
INT8_CLASS_BIAS = 0.15       # correct: up to 0.082; the digits' class bias +2 is 0.38
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Tolerance:
    atol: float | None = None
    rtol: float | None = None
    factor: float | None = None            # times PyTorch fp32's own noise, for every sample
    typical_factor: float | None = None    # times that noise, for the median sample
    min_cosine: float | None = None
    min_top1_agreement: float | None = None
    max_accuracy_drop: float | None = None
    max_slope_error: float | None = None   # |least-squares slope of artifact on reference logits − 1|
    max_class_bias: float | None = None    # per-class mean error, in RMS units of the reference logits
    fp16_factor: float | None = None       # every sample: within this times PyTorch fp16's own error
    fp16_typical_factor: float | None = None   # the median sample: within this times it
    #: slope and class bias measured without the edge cases (all zeros, saturated, a checkerboard, one
    #: channel alone): for a file whose activations are quantised to ranges its calibration data set,
    #: inputs far outside them clip by design; they still count for NaN/Inf and top-1 agreement
    scale_without_edge_cases: bool = False

    def describe(self) -> str:
        parts = []
        if self.atol is not None:
            floor = f"{self.atol:g} + {self.rtol or 0:g}*max|r64|"
            parts.append(f"|a-r64| <= max({self.factor:g}*noise32, {floor}) on every sample and "
                         f"max({self.typical_factor:g}*noise32, {FP32_TYPICAL_FLOOR:g}*({floor})) on the median sample"
                         if self.factor
                         else f"|a-r64| <= {floor}")
        if self.min_cosine is not None:
            parts.append(f"cosine >= {self.min_cosine:g}")
        if self.min_top1_agreement is not None:
            parts.append(f"top-1 agreement >= {self.min_top1_agreement:.0%} ({CONFIDENCE:.0%} upper bound)")
        if self.max_accuracy_drop is not None:
            parts.append(f"accuracy drop <= {self.max_accuracy_drop * 100:g} points")
        apart = " (edge cases apart)" if self.scale_without_edge_cases else ""
        if self.max_slope_error is not None:
            parts.append(f"logit slope within 1 ± {self.max_slope_error:g}{apart}")
        if self.max_class_bias is not None:
            parts.append(f"per-class mean bias <= {self.max_class_bias:g} RMS{apart}")
        if self.fp16_factor is not None:
            parts.append(f"|a-r64| <= {self.fp16_factor:g}*noise16 on every sample and "
                         f"{self.fp16_typical_factor:g}*noise16 on the median sample")
        return ", ".join(parts)


DEFAULT_TOLERANCES = {
    "fp32": Tolerance(atol=FP32_ATOL, rtol=FP32_RTOL, factor=FP32_FACTOR, typical_factor=FP32_TYPICAL_FACTOR),
    "fp16": Tolerance(min_cosine=0.999, min_top1_agreement=0.99, max_accuracy_drop=0.005,
                      max_slope_error=FP16_SLOPE, max_class_bias=FP16_CLASS_BIAS, fp16_factor=FP16_FACTOR,
                      fp16_typical_factor=FP16_TYPICAL_FACTOR),
    "int8": Tolerance(min_top1_agreement=0.99, max_accuracy_drop=0.005, max_slope_error=INT8_SLOPE,
                      max_class_bias=INT8_CLASS_BIAS, scale_without_edge_cases=True),
}
#: fp16 on a CPU with fp16 arithmetic: the same label gates, the error bounds measured for fp16 accumulation
FP16_ARITHMETIC = Tolerance(min_cosine=0.999, min_top1_agreement=0.99, max_accuracy_drop=0.005,
                            max_slope_error=FP16_SLOPE, max_class_bias=FP16_CLASS_BIAS,
                            fp16_factor=FP16_ARITHMETIC_FACTOR, fp16_typical_factor=FP16_ARITHMETIC_TYPICAL_FACTOR)


@dataclass(frozen=True)
class Precision:
    """A precision a file can be judged at, with its gate: what a format row's ``precision`` names. The
    built-ins (fp32, fp16, int8) are here; a plugin declares its own (``Plugin.precisions``: e.g. a
    palettized CoreML package's) with no edit outside its folder."""
    name: str
    tolerance: Tolerance
    #: how strict the rule is, against the others (fp32 2, fp16 1, int8 0): a file is never judged more
    #: loosely than its row allows, and a file whose content shows a stricter precision is judged at that
    strictness: int
    #: judged by the agreement rules on the drawn inputs (every precision but fp32)
    reduced: bool = True
    #: another rule on emulated CPUs of these QEMU names (fp16 where the CPU computes in fp16)
    on_cpus: frozenset = frozenset()
    on_cpus_tolerance: Tolerance | None = None

    @property
    def half_reference(self) -> bool:
        """Its gate holds runs to PyTorch fp16's own error (the check computes an fp16 reference)."""
        return any(t is not None and t.fp16_factor is not None for t in (self.tolerance, self.on_cpus_tolerance))

    def tolerance_on(self, target: str = "host") -> Tolerance:
        """The rule for a file run on ``target`` (``host`` or ``arm64:CPU``)."""
        if self.on_cpus_tolerance is not None and target.partition(":")[2] in self.on_cpus:
            return self.on_cpus_tolerance
        return self.tolerance


#: the built-in precisions; plugins add theirs through the registry (exporter.formats.precision_rules)
BUILT_IN_PRECISIONS = (
    Precision("fp32", DEFAULT_TOLERANCES["fp32"], strictness=2, reduced=False),
    Precision("fp16", DEFAULT_TOLERANCES["fp16"], strictness=1, on_cpus=FP16_ARITHMETIC_CPUS,
              on_cpus_tolerance=FP16_ARITHMETIC),
    Precision("int8", DEFAULT_TOLERANCES["int8"], strictness=0),
)


def user_tolerance(atol: float | None, rtol: float | None) -> Tolerance | None:
    """A user's --atol/--rtol: a plain element-wise bound for every artifact, whatever its precision."""
    if atol is None and rtol is None:
        return None
    return Tolerance(atol=FP32_ATOL if atol is None else atol, rtol=FP32_RTOL if rtol is None else rtol)


def agreement_interval(agree: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """One-sided Clopper–Pearson bounds (lower, upper) on a proportion of ``agree`` in ``n``:
    the ``p`` at which seeing at least (at most) ``agree`` agreements has probability 1 − confidence."""
    alpha = 1.0 - confidence
    lower = 0.0 if agree == 0 else _solve(lambda p: _binom_sf(agree, n, p) - alpha)
    upper = 1.0 if agree == n else _solve(lambda p: alpha - _binom_cdf(agree, n, p))
    return lower, upper


def _binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (n up to a few thousand)."""
    import math
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0 if k < n else 1.0
    lp, lq = math.log(p), math.log1p(-p)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
            for i in range(k + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def _binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k)."""
    return 1.0 - _binom_cdf(k - 1, n, p) if k > 0 else 1.0


def _solve(f, lo: float = 0.0, hi: float = 1.0) -> float:
    """The root of an increasing ``f`` on [lo, hi], by bisection (60 halvings: below 1e-15)."""
    for _ in range(60):
        mid = (lo + hi) / 2
        if f(mid) < 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def scale_metrics(out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """What probabilities see and cosine and top-1 do not: the least-squares slope of the artifact's
    logits on the reference's (1 when the scale is right; 1.5 when every logit is 1.5x), and the
    largest per-class mean error in RMS units of the reference logits (a class made more or less
    likely everywhere). Each sample's logits are centred first: softmax ignores a shift of a row."""
    o = out - out.mean(axis=1, keepdims=True)
    r = ref - ref.mean(axis=1, keepdims=True)
    energy = float((r * r).sum())
    if energy == 0.0:
        return 1.0, 0.0
    slope = float((o * r).sum() / energy)
    rms = (energy / r.size) ** 0.5
    return slope, float(np.abs((o - r).mean(axis=0)).max() / rms)
