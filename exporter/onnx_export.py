"""ONNX stage: ``torch.onnx.export`` with named input/output, metadata and a full check.

We use the TorchScript-based exporter (``dynamo=False``, i.e. ``torch.jit.trace``):
our MobileNets have no data-dependent control flow, so tracing captures them
completely; it needs no extra dependency (the torch.export-based exporter needs
onnxscript), and it writes byte-identical files for the same weights.
"""
from __future__ import annotations

import functools
import io
import json
import time
import warnings

import numpy as np
import onnx
import torch

from ..models.errors import UserInputError

from . import __version__
from .context import INPUT_NAME, OUTPUT_NAME, ExportContext
from .records import ArtifactRecord, Status

ONNX_NAME = "model.onnx"
MIN_OPSET = 11
TORCH_MAX_OPSET = 20  # the TorchScript exporter's newest opset in torch 2.x


def _tiny_model(opset: int) -> bytes:
    node = onnx.helper.make_node("Relu", ["x"], ["y"])
    graph = onnx.helper.make_graph(
        [node], "probe", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 10)
    return model.SerializeToString()


@functools.lru_cache(maxsize=1)
def newest_runnable_opset() -> int:
    """The newest opset both the exporter writes and the installed onnxruntime loads."""
    from .runners.onnx_runner import onnxruntime
    ort = onnxruntime()
    for opset in range(min(TORCH_MAX_OPSET, onnx.defs.onnx_opset_version()), MIN_OPSET - 1, -1):
        try:
            ort.InferenceSession(_tiny_model(opset), providers=["CPUExecutionProvider"])
            return opset
        except Exception:  # noqa: BLE001 - any load failure means "not this opset"
            continue
    raise RuntimeError("onnxruntime loads no opset the exporter writes")


def resolve_opset(requested: int | None) -> int:
    newest = newest_runnable_opset()
    if requested is None:
        return newest
    if not MIN_OPSET <= requested <= newest:
        raise UserInputError(f"--opset {requested} is out of range: this exporter and the installed "
                             f"onnxruntime run opsets {MIN_OPSET}..{newest}")
    return requested


def metadata_props(ctx: ExportContext) -> dict[str, str]:
    return {
        "arch": ctx.arch,
        "input_size": str(ctx.spec.size),
        "input_spec": json.dumps(ctx.spec.to_dict(), sort_keys=True),
        "normalization": ctx.spec.normalization,
        "labels": json.dumps(ctx.spec.class_labels()),
        "producer": f"bsconv-export {__version__}; torch {torch.__version__}; onnx {onnx.__version__}",
        "checkpoint_sha256": ctx.checkpoint_sha256 or "untrained",
    }


def export_onnx(ctx: ExportContext) -> ArtifactRecord:
    t0 = time.perf_counter()
    dynamic = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if ctx.options.dynamic_batch else None
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy-exporter notice, see module doc
        torch.onnx.export(ctx.model, (ctx.example,), buf, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=ctx.opset, dynamic_axes=dynamic,
                          do_constant_folding=True, dynamo=False)
    model = onnx.load_from_string(buf.getvalue())
    for k, v in metadata_props(ctx).items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    model.doc_string = f"{ctx.arch} exported by bsconv-export"
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, ctx.workdir / ONNX_NAME)
    return ArtifactRecord(format="onnx", status=Status.OK, path=ONNX_NAME, seconds=time.perf_counter() - t0,
                          nodes=len(model.graph.node), opset=ctx.opset,
                          details={"op_types": op_histogram(model),
                                   "input_shape": io_shape(model.graph.input[0]),
                                   "output_shape": io_shape(model.graph.output[0])})


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    ops: dict[str, int] = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return dict(sorted(ops.items()))


def io_shape(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def run_onnx(path_or_bytes, x: np.ndarray) -> np.ndarray:
    """One CPU inference, for the stages' own sanity checks."""
    from .runners.onnx_runner import onnxruntime
    ort = onnxruntime()
    src = str(path_or_bytes) if not isinstance(path_or_bytes, bytes) else path_or_bytes
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]
