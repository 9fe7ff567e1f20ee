"""The app's contract, a leaf every module may import: every artifact takes ``input`` and
returns ``logits`` (a classifier format may add ``classLabel``, the top label)."""
from __future__ import annotations

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
LABEL_OUTPUT = "classLabel"


def pixel_normalization(spec) -> tuple[list[float], list[float]]:
    """The contract's pixel rule (docs/bundle.md) as one affine map per channel, ``input = (pixel - M_c)
    / S_c`` for 8-bit pixels: [0, 255] onto ``value_range``, then for ``mean_std`` minus ``mean`` over
    ``std``. Read by what folds the rule into a file an app's tooling applies (TFLite Metadata's
    NormalizationOptions, a CoreML image input) and by what inverts it to check such a file."""
    lo, hi = spec.value_range
    scale = 255.0 / (hi - lo)
    if spec.normalization == "mean_std":
        return [(m - lo) * scale + 0.0 for m in spec.mean], [s * scale for s in spec.std]
    return [0.0 - lo * scale + 0.0] * spec.channels, [scale] * spec.channels   # + 0.0: never -0.0
