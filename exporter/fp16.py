"""FP16 stages: ONNX through onnxconverter-common, CoreML through coremltools.

FP16 ONNX keeps float32 inputs and outputs (``keep_io_types``) so an app feeds
it the same tensors as the FP32 file; weights and arithmetic are float16.
CoreML FP16 is the ML Program with fp16 compute, optionally with weights
palettised to ``--palettize-bits`` (k-means lookup tables, coremltools.optimize).
"""
from __future__ import annotations

import time

import onnx

from .context import ExportContext
from .onnx_export import op_histogram
from .records import ArtifactRecord, Status

FP16_NAME = "model.fp16.onnx"
COREML_FP16_NAME = "model.fp16.mlpackage"


def export_fp16(ctx: ExportContext) -> ArtifactRecord:
    from onnxconverter_common import float16

    t0 = time.perf_counter()
    source_name, src = ctx.onnx_source()
    model = float16.convert_float_to_float16(onnx.load(src), keep_io_types=True)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, ctx.workdir / FP16_NAME)
    return ArtifactRecord(format="fp16", status=Status.OK, path=FP16_NAME, seconds=time.perf_counter() - t0,
                          nodes=len(model.graph.node), opset=ctx.opset,
                          details={"precision": "fp16", "source": source_name, "io_types": "float32",
                                   "op_types": op_histogram(model)})


def export_coreml_fp16(ctx: ExportContext) -> ArtifactRecord:
    from dataclasses import replace

    from .coreml import DEPLOYMENT_TARGET, convert_coreml, mil_op_histogram, validate_spec

    t0 = time.perf_counter()
    fp16_ctx = replace(ctx, options=replace(ctx.options, coreml_precision="fp16", coreml_input="tensor"))
    bits = ctx.options.palettize_bits
    mlmodel = convert_coreml(fp16_ctx, palettize_bits=bits)
    details = validate_spec(mlmodel, fp16_ctx)
    details.update(precision="fp16", palettize_bits=bits)
    mlmodel.save(str(ctx.workdir / COREML_FP16_NAME))
    ops = mil_op_histogram(mlmodel)
    return ArtifactRecord(format="coreml-fp16", status=Status.OK, path=COREML_FP16_NAME,
                          seconds=time.perf_counter() - t0, nodes=sum(n for op, n in ops.items() if op != "const"),
                          deployment_target=DEPLOYMENT_TARGET, details={**details, "op_types": ops})
