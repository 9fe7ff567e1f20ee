"""Simplify stage: onnxsim on the plain ONNX, with its own numeric check.

A failure (an exception, or onnxsim's check reporting a mismatch) marks the
simplified artifact failed with the reason; the plain ONNX stays in the bundle
and later stages say which ONNX they used.
"""
from __future__ import annotations

import contextlib
import io
import time

import onnx

from ...kit import FP32_ATOL as CHECK_ATOL, FP32_RTOL_MAX as CHECK_RTOL
from ...kit import ArtifactRecord, ExportContext, Status
from .export import keep_contract_metadata, op_histogram, opset_of

SIM_NAME = "model.sim.onnx"
# onnxsim's own check compares outputs on random inputs. Its default (atol 1e-5,
# rtol 1e-4, element-wise) flags ordinary fp32 reassociation in deep networks whose
# logits reach ~10 (seen on untrained MobileNetV2 w1: 1 run in 3). It is only a
# guard against a broken rewrite: the check stage holds the simplified file to the
# real fp32 rule afterwards, so this uses the check's loosest fp32 bound.


def simplify_onnx(ctx: ExportContext) -> ArtifactRecord:
    import onnxsim

    t0 = time.perf_counter()
    src = ctx.workdir / ctx.records["onnx"].path
    model = onnx.load(src)
    before_nodes, before_bytes = len(model.graph.node), src.stat().st_size
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # onnxsim prints its check progress
            simplified, check_ok = onnxsim.simplify(model, check_n=3, check_atol=CHECK_ATOL,
                                                     check_rtol=CHECK_RTOL)
    except Exception as e:  # noqa: BLE001 - onnxsim raises many kinds; record, never hide
        return ArtifactRecord(format="onnx-simplified", status=Status.FAILED,
                              seconds=time.perf_counter() - t0,
                              error=f"onnxsim failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
    if not check_ok:
        return ArtifactRecord(format="onnx-simplified", status=Status.FAILED,
                              seconds=time.perf_counter() - t0,
                              error="onnxsim's own check found the simplified model's outputs differ")
    # onnxsim keeps our metadata_props and adds its run report: only the contract's keys stay.
    keep_contract_metadata(simplified)
    onnx.checker.check_model(simplified, full_check=True)
    onnx.save(simplified, ctx.workdir / SIM_NAME)
    return ArtifactRecord(
        format="onnx-simplified", status=Status.OK, path=SIM_NAME, seconds=time.perf_counter() - t0,
        nodes=len(simplified.graph.node), opset=opset_of(ctx),
        details={"nodes_before": before_nodes, "bytes_before": before_bytes,
                 "bytes_after": (ctx.workdir / SIM_NAME).stat().st_size,
                 "op_types": op_histogram(simplified)})
