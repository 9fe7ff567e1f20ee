"""What every export stage reads: the prepared model, its spec and the options."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..models.registry import InputSpec

from .capture import Capture, capture_program
from .records import ArtifactRecord

COREML_PRECISIONS = ("fp32", "fp16")
COREML_INPUTS = ("tensor", "image")
INT8_PLANS = ("measured", "uniform")
# The app's contract: every artifact takes ``input`` and returns ``logits`` (CoreML adds ``classLabel``).
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
LABEL_OUTPUT = "classLabel"


@dataclass(frozen=True)
class ExportOptions:
    formats: tuple[str, ...] = ()           # empty: the format table's defaults
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
    int8_plan: str = "measured"             # "measured": float where int8 is slower or fails the gate; "uniform"
    palettize_bits: int | None = None       # coreml-fp16 weight palettisation
    replace_anyway: bool = False            # with force: replace even when the new bundle did not pass
    legacy_exporter: bool = False           # ONNX and CoreML from torch.jit.trace instead of the captured program


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
    capture: Capture | None = None
    capture_error: Exception | None = None

    def program(self) -> "torch.export.ExportedProgram":
        """The bundle's one ``torch.export`` capture, made on first use (see capture.py)."""
        if self.capture_error is not None:
            raise self.capture_error
        if self.capture is None:
            try:
                self.capture = capture_program(self.model, self.example, dynamic_batch=self.options.dynamic_batch)
            except Exception as e:  # noqa: BLE001 - every stage that needs the program fails with this
                self.capture_error = RuntimeError(f"torch.export could not capture the model: "
                                                  f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}")
                raise self.capture_error from e
        return self.capture.program

    def onnx_source(self) -> tuple[str, Path]:
        """The best ONNX artifact built so far: simplified if it succeeded, else plain."""
        from .formats import preferred
        rec = preferred(self.records.values(), "onnx")
        if rec is None:
            raise RuntimeError("no ONNX artifact to start from")  # the pipeline runs requirements first
        return rec.format, self.workdir / rec.path
