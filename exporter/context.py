"""What every export stage reads: the prepared model, its spec and the options."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..models.registry import InputSpec

from .records import ArtifactRecord

FORMAT_NAMES = ("onnx", "ort", "coreml", "int8", "fp16", "coreml-fp16")
DEFAULT_FORMATS = ("onnx", "ort", "coreml")
COREML_PRECISIONS = ("fp32", "fp16")
COREML_INPUTS = ("tensor", "image")
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class ExportOptions:
    formats: tuple[str, ...] = DEFAULT_FORMATS
    input_size: int | None = None
    batch: int = 1
    dynamic_batch: bool = False
    opset: int | None = None
    coreml_precision: str = "fp32"
    coreml_input: str = "tensor"
    simplify: bool = True
    force: bool = False
    calibration: str | None = None          # .npz path, "random", or None (real data where it exists)
    keep_fp32: tuple[str, ...] = ()         # ONNX node names int8 leaves in float
    palettize_bits: int | None = None       # coreml-fp16 weight palettisation


@dataclass
class ExportContext:
    model: nn.Module                  # prepared (see prepare.py)
    arch: str
    spec: InputSpec                   # with the export's input size
    example: torch.Tensor
    options: ExportOptions
    opset: int
    workdir: Path                     # the bundle being built
    checkpoint_sha256: str
    params: int
    macs: int
    records: dict[str, ArtifactRecord] = field(default_factory=dict)

    def no_onnx(self, fmt: str) -> ArtifactRecord:
        """The record of a stage that needed an ONNX artifact and found none."""
        from .records import Status
        return ArtifactRecord(format=fmt, status=Status.SKIPPED, error="no ONNX artifact to start from")

    def onnx_source(self) -> tuple[str, Path] | None:
        """The best ONNX artifact built so far: simplified if it succeeded, else plain."""
        for name in ("onnx-simplified", "onnx"):
            rec = self.records.get(name)
            if rec is not None and rec.ok and rec.path:
                return name, self.workdir / rec.path
        return None
