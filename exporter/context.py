"""What every export stage reads: the prepared model, its spec and the options."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from ..models.registry import InputSpec

from .capture import Capture, capture_program
from .options import ExportOptions
from .records import ArtifactRecord


@dataclass
class ExportContext:
    model: nn.Module                  # prepared (see prepare.py)
    arch: str
    spec: InputSpec                   # with the export's input size
    example: torch.Tensor
    options: ExportOptions
    workdir: Path                     # the bundle being built
    checkpoint_sha256: str
    params: int
    macs: int
    #: threads a stage's own runtime sessions use (chosen by the pipeline, never inherited)
    threads: int | None = None
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

    def with_options(self, **changes) -> "ExportContext":
        """The same context with some options changed (a stage that builds a variant of another's format)."""
        return replace(self, options=self.options.replace(**changes))
