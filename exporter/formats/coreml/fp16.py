"""FP16 CoreML: the ML Program with fp16 compute (its weights compressed: :mod:`.compress`)."""
from __future__ import annotations

import time

from ...kit import ArtifactRecord, ExportContext, Status
from .export import DEPLOYMENT_TARGET, convert_coreml, mil_op_histogram, save_reproducibly, validate_spec

COREML_FP16_NAME = "model.fp16.mlpackage"


def export_coreml_fp16(ctx: ExportContext) -> ArtifactRecord:
    t0 = time.perf_counter()
    fp16_ctx = ctx.with_options(coreml_precision="fp16", coreml_input="tensor")
    mlmodel = convert_coreml(fp16_ctx)
    details = validate_spec(mlmodel, fp16_ctx)
    details.update(precision="fp16")
    save_reproducibly(mlmodel, ctx.workdir / COREML_FP16_NAME)
    ops = mil_op_histogram(mlmodel)
    return ArtifactRecord(format="coreml-fp16", status=Status.OK, path=COREML_FP16_NAME,
                          seconds=time.perf_counter() - t0, nodes=sum(n for op, n in ops.items() if op != "const"),
                          deployment_target=DEPLOYMENT_TARGET, details={**details, "op_types": ops})
