"""Statistics for latencies: summaries, stability, and the paired regression decision.

The regression decision uses paired ratios: A and B are timed alternately, in
ABBA order so a drift in machine speed hits both alike, and each pair gives a
ratio B/A. The statistic is the median of those ratios; its confidence interval
is a percentile bootstrap (resampling pairs, seeded). A slowdown is declared only
when the *whole* interval lies above 1 + max_slowdown; noise widens the interval
and so can only make the gate more cautious, never trigger it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def summarize(latencies_s: np.ndarray, batch: int = 1) -> dict[str, float]:
    lat = np.asarray(latencies_s, dtype=np.float64) * 1e3
    return {
        "n": int(lat.size),
        "p50_ms": float(np.percentile(lat, 50)),
        "p90_ms": float(np.percentile(lat, 90)),
        "p99_ms": float(np.percentile(lat, 99)),
        "mean_ms": float(lat.mean()),
        "std_ms": float(lat.std(ddof=1)) if lat.size > 1 else 0.0,
        "min_ms": float(lat.min()),
        "throughput_per_s": float(batch * 1e3 / np.percentile(lat, 50)),
    }


def windows_agree(window_medians: list[float], count: int = 3, tolerance: float = 0.05) -> bool:
    """True when the last ``count`` window medians lie within ``tolerance`` of their median."""
    if len(window_medians) < count:
        return False
    last = np.asarray(window_medians[-count:])
    mid = float(np.median(last))
    return bool(np.all(np.abs(last - mid) <= tolerance * mid))


def bootstrap_ci(values: np.ndarray, statistic=np.median, confidence: float = 0.95, resamples: int = 4000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over ``values``."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.size, size=(resamples, values.size))
    stats = statistic(values[idx], axis=1)
    alpha = (1.0 - confidence) / 2.0
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1.0 - alpha))


@dataclass
class Decision:
    ratio: float                 # median B/A
    ci_low: float
    ci_high: float
    confidence: float
    max_slowdown: float
    pairs: int
    regression: bool
    method: str

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        verdict = "REGRESSION" if self.regression else "no regression"
        return (f"{verdict}: candidate/baseline latency {self.ratio:.3f} "
                f"({self.confidence:.0%} CI {self.ci_low:.3f}–{self.ci_high:.3f}, {self.pairs} pairs; "
                f"fails only when the whole interval exceeds {1 + self.max_slowdown:.3f})")


def paired_decision(baseline_s: np.ndarray, candidate_s: np.ndarray, max_slowdown: float = 0.05,
                    confidence: float = 0.95, seed: int = 0) -> Decision:
    a = np.asarray(baseline_s, np.float64)
    b = np.asarray(candidate_s, np.float64)
    if a.shape != b.shape or a.size < 5:
        raise ValueError("paired decision needs equal-length samples of at least 5 pairs")
    ratios = b / a
    low, high = bootstrap_ci(ratios, np.median, confidence, seed=seed)
    return Decision(ratio=float(np.median(ratios)), ci_low=low, ci_high=high, confidence=confidence,
                    max_slowdown=max_slowdown, pairs=int(a.size), regression=low > 1.0 + max_slowdown,
                    method="median of paired ratios (ABBA order), percentile bootstrap")


def unpaired_decision(baseline_s: np.ndarray, candidate_s: np.ndarray, max_slowdown: float = 0.05,
                      confidence: float = 0.95, seed: int = 0, resamples: int = 4000) -> Decision:
    """For a stored baseline: bootstrap the ratio of medians, resampling each side independently."""
    a = np.asarray(baseline_s, np.float64)
    b = np.asarray(candidate_s, np.float64)
    rng = np.random.default_rng(seed)
    ra = np.median(a[rng.integers(0, a.size, (resamples, a.size))], axis=1)
    rb = np.median(b[rng.integers(0, b.size, (resamples, b.size))], axis=1)
    stats = rb / ra
    alpha = (1.0 - confidence) / 2.0
    low, high = float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))
    return Decision(ratio=float(np.median(b) / np.median(a)), ci_low=low, ci_high=high, confidence=confidence,
                    max_slowdown=max_slowdown, pairs=int(min(a.size, b.size)), regression=low > 1.0 + max_slowdown,
                    method="ratio of medians against a stored baseline, independent bootstrap")
