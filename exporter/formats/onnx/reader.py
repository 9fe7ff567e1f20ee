"""onnxruntime's calibration reader over an array (imported only when int8 runs: its base class
is onnxruntime's, so this module loads onnxruntime)."""
from __future__ import annotations

import numpy as np

from ...kit import INPUT_NAME, UserInputError


def _reader_base():
    from onnxruntime.quantization import CalibrationDataReader
    return CalibrationDataReader


class ArrayReader(_reader_base()):
    """onnxruntime's CalibrationDataReader over an [N, C, H, W] array, ``batch`` samples at a time."""

    def __init__(self, x: np.ndarray, batch: int = 1, input_name: str = INPUT_NAME):
        if x.ndim != 4 or len(x) < 1:
            raise UserInputError(f"calibration data must be [N, C, H, W] with N >= 1, got shape {list(x.shape)}")
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.batch = batch
        self.input_name = input_name
        self.i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i + self.batch > len(self.x):
            return None
        out = {self.input_name: self.x[self.i:self.i + self.batch]}
        self.i += self.batch
        return out

    def rewind(self) -> None:
        self.i = 0

    def __len__(self) -> int:
        return len(self.x) // self.batch
