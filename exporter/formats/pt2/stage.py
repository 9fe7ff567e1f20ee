"""Program stage: the bundle's ``torch.export`` capture, saved as ``model.pt2``.

It is the unlowered ATen program every other format came from, and what an
AOTInductor or ExecuTorch user starts from. It is saved without example inputs
or source stack traces (see capture.py) and checked like the other artifacts:
the check loads it back with this tool's safe loader and runs it.
"""
from __future__ import annotations

import io
import time

import torch

from ...kit import ArtifactRecord, ExportContext, Status

PT2_NAME = "model.pt2"


def export_pt2(ctx: ExportContext) -> ArtifactRecord:
    t0 = time.perf_counter()
    program = ctx.program()
    buf = io.BytesIO()
    torch.export.save(program, buf)
    (ctx.workdir / PT2_NAME).write_bytes(buf.getvalue())
    ops = ctx.capture.op_counts()
    return ArtifactRecord(format="pt2", status=Status.OK, path=PT2_NAME, seconds=time.perf_counter() - t0,
                          nodes=sum(ops.values()),
                          details={"op_types": ops, "capture_seconds": round(ctx.capture.seconds, 3),
                                   "dynamic_batch": ctx.capture.dynamic_batch,
                                   "torch": torch.__version__})
