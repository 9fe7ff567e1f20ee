"""FP16 ONNX through onnxconverter-common.

It keeps float32 inputs and outputs (``keep_io_types``) so an app feeds it the same
tensors as the FP32 file; weights and arithmetic are float16.
"""
from __future__ import annotations

import time

import onnx

from ...kit import ArtifactRecord, ExportContext, Status
from .export import onnx_source, op_histogram, opset_of

FP16_NAME = "model.fp16.onnx"


def export_fp16(ctx: ExportContext) -> ArtifactRecord:
    from onnxconverter_common import float16

    t0 = time.perf_counter()
    source_name, src = onnx_source(ctx)
    model = float16.convert_float_to_float16(onnx.load(src), keep_io_types=True)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, ctx.workdir / FP16_NAME)
    return ArtifactRecord(format="fp16", status=Status.OK, path=FP16_NAME, seconds=time.perf_counter() - t0,
                          nodes=len(model.graph.node), opset=opset_of(ctx),
                          details={"precision": "fp16", "source": source_name, "io_types": "float32",
                                   "op_types": op_histogram(model)})
