"""The app's contract, a leaf every module may import: every artifact takes ``input`` and
returns ``logits`` (a classifier format may add ``classLabel``, the top label)."""
from __future__ import annotations

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
LABEL_OUTPUT = "classLabel"
