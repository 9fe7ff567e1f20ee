"""The int8 gate's scale rules (slope, class bias) are measured without the edge cases: an int8 file's
activations are quantised to the ranges its calibration data set, so an all-saturated input clips by
design (V3's int8 slope 0.09 at 224 untrained was that). Other precisions keep them."""
import numpy as np

from bsconv_export.exporter.check.reference import Reference
from bsconv_export.exporter.check.verdict import measure, verdict
from bsconv_export.exporter.kit.tolerances import DEFAULT_TOLERANCES, FP16_ARITHMETIC


def _logits(seed=0, n=300, edges=6):
    rng = np.random.default_rng(seed)
    ref = rng.normal(0, 3, (n + edges, 10))
    ref[np.arange(len(ref)), rng.integers(0, 10, len(ref))] += 12     # clear winners: top-1 rules hold
    ref[-edges:] *= 20                     # saturated inputs: large logits, most of the slope's weight
    return ref


def _judge(out, ref, tol, edges=6):
    m = measure(out, ref, tol, edges)
    reference = Reference(r64=ref, r32=ref.astype(np.float32), e32=np.full(len(ref), 1e-6),
                          e16=np.full(len(ref), 1.0))
    return m, verdict(out, reference, m, tol)


def test_clipped_edge_cases_do_not_fail_an_int8_file_but_are_recorded():
    ref = _logits()
    out = ref.copy()
    out[-6:] *= 0.3                        # what clipping at the calibrated range does to saturated inputs
    m, reason = _judge(out, ref, DEFAULT_TOLERANCES["int8"])
    assert reason is None, reason
    assert abs(m["slope"] - 1) < 1e-9 and m["slope_with_edge_cases"] < 0.5
    assert "edge cases apart" in DEFAULT_TOLERANCES["int8"].describe()


def test_a_scale_loss_on_the_data_still_fails_int8():
    ref = _logits()
    out = ref * 0.9
    m, reason = _judge(out, ref, DEFAULT_TOLERANCES["int8"])
    assert reason and "0.9000x" in reason and "slope" in reason


def test_a_class_made_likelier_on_the_data_still_fails_int8():
    ref = _logits()
    out = ref.copy()
    out[:-6, 4] += 1.0
    m, reason = _judge(out, ref, DEFAULT_TOLERANCES["int8"])
    assert reason and "class" in reason


def test_fp16_keeps_the_edge_cases_in_its_scale_rules():
    ref = _logits()
    out = ref.copy()
    out[-6:] *= 0.3
    for tol in (DEFAULT_TOLERANCES["fp16"], FP16_ARITHMETIC):
        m, reason = _judge(out, ref, tol)
        assert "slope_with_edge_cases" not in m and m["slope"] < 0.5
        assert reason and "slope" in reason


def test_nan_on_an_edge_case_fails_int8():
    ref = _logits()
    out = ref.copy()
    out[-1, 0] = np.nan
    _, reason = _judge(out, ref, DEFAULT_TOLERANCES["int8"])
    assert reason and "NaN" in reason
