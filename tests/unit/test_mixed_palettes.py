"""Mixed-width palettes (exporter/formats/coreml/mixed.py): a weight known by its values gets its
chosen width, and what is measured is what the tables make of it."""
import numpy as np
import pytest

pytest.importorskip("coremltools")

from bsconv_export.exporter.formats.coreml.mixed import Widths, digest  # noqa: E402


def test_a_kept_weight_gets_the_wider_table_and_the_rest_the_narrow_one():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(32, 16, 3, 3)).astype(np.float16)
    b = rng.normal(size=(32, 16, 3, 3)).astype(np.float16)
    widths = Widths(4, 6, kept={digest(a)})
    assert len(np.asarray(widths(a)[0])) == 64 and len(np.asarray(widths(b)[0])) == 16
    # known by content, not by name or identity: a copy of a is a, a changed a is not
    assert digest(a.copy()) == digest(a) and digest(a.astype(np.float32)) != digest(a)
    assert len(np.asarray(widths(a.copy())[0])) == 64


def test_measuring_records_both_widths_as_the_tables_decompress():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(24, 40, 1, 1)).astype(np.float16)
    seen = Widths(4, 6, record=True)
    lut, indices = seen(a)
    got = seen.seen[digest(a)]
    assert set(got) == {4, 6} and got[4].shape == a.shape and got[4].dtype == a.dtype
    np.testing.assert_array_equal(got[4], np.asarray(lut)[np.asarray(indices).reshape(-1)].reshape(a.shape))
    assert len(np.unique(got[4])) <= 16 and len(np.unique(got[6])) <= 64
    err = {n: float(np.abs(got[n].astype(np.float32) - a.astype(np.float32)).mean()) for n in (4, 6)}
    assert err[6] < err[4] / 2
