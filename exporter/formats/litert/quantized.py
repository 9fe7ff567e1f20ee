"""The int8 ``.tflite``: the bundle's fp32 ``.tflite`` quantised by ai-edge-quantizer's static int8
recipe in the converter's own environment (:mod:`in_env`), calibrated on the same samples as the
other int8 formats (:func:`calibration_data`).

Why this path and not litert-torch's pt2e quantizer: both pass the int8 gate on the shipped model,
but the pt2e path writes a file with int8 inputs and outputs only, which an app's pixel rule (floats)
cannot feed without its own quantisation step, and it quantises the program before conversion, so
the fp32 ``.tflite`` already checked is not what gets quantised. ai-edge-quantizer works on that very
file and keeps float inputs and outputs by default (``--tflite-int8-io int8`` makes them int8; the
input's and the output's scale and zero point are then in the tensors themselves, where LiteRT's
tooling reads them, in the file's ``bsconv_export`` metadata and in the manifest).

What the file holds is read from the file (:func:`tflite_precision`): int8 tensors make it int8,
whatever the manifest says. Which operators the quantizer left computing in float is read from it
too (:func:`float_ops`, the row's ``float_ops``): the int8 file's fallback, which
``--require-delegated tflite-int8`` refuses.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from ...kit import ArtifactRecord, ExportContext, Status, read_regular
from . import converter
from .tflite_file import finished_tflite, op_counts

TFLITE_INT8_NAME = "model.int8.tflite"
IO_CHOICES = ("float", "int8")
RECIPE = ("ai-edge-quantizer static_wi8_ai8: int8 symmetric per-channel weights, int8 asymmetric per-tensor "
          "activations; ranges: running min/max over the calibration batches")
MAX_TFLITE_BYTES = 2 << 30
#: more tensors than any model this tool makes by orders of magnitude: a file that claims more is not read
MAX_TENSORS = 100_000


def export_tflite_int8(ctx: ExportContext) -> ArtifactRecord:
    from ...kit import calibration_data
    t0 = time.perf_counter()
    fp32 = ctx.workdir / ctx.records["tflite"].path
    io = ctx.options.tflite_int8_io
    x, _, origin = calibration_data(ctx)
    batch = int(ctx.example.shape[0])
    if len(x) < batch:
        x = np.repeat(x, batch, axis=0)[:batch]
    with tempfile.TemporaryDirectory(prefix="bsconv-litert-int8-") as tmp:
        samples, raw = Path(tmp) / "calibration.npz", Path(tmp) / "quantized.tflite"
        np.savez(samples, input=np.ascontiguousarray(x, dtype=np.float32))
        try:
            converter.quantize(fp32, samples, raw, io)
        except converter.ConversionFailed as e:
            return ArtifactRecord(format="tflite-int8", status=Status.FAILED, seconds=time.perf_counter() - t0,
                                  error=str(e))
        quantized = raw.read_bytes()
    io_params = io_quantization(quantized)
    data = finished_tflite(ctx, quantized, precision="int8",
                           extra={"io": io, **({"io_quantization": io_params} if io_params else {})})
    (ctx.workdir / TFLITE_INT8_NAME).write_bytes(data)
    ops = op_counts(data)
    return ArtifactRecord(
        format="tflite-int8", status=Status.OK, path=TFLITE_INT8_NAME, seconds=time.perf_counter() - t0,
        nodes=sum(ops.values()),
        details={"op_types": ops, "float_ops": float_ops(data), "precision": "int8", "io": io, **({"io_quantization": io_params} if io_params else {}),
                 "calibration": origin, "calibration_samples": int(len(x)), "recipe": RECIPE,
                 "quantizer": f"ai-edge-quantizer {converter.pinned('ai-edge-quantizer')} "
                              f"(its own environment: {converter.env_dir().name})",
                 "bytes_ratio_to_fp32": round(len(data) / fp32.stat().st_size, 3)})


def _tensor_types(data: bytes):
    from ai_edge_litert import schema_py_generated as schema
    graph = schema.Model.GetRootAs(data, 0).Subgraphs(0)
    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    return graph, names


def float_ops(data: bytes) -> dict[str, int]:
    """Operators of an int8 file that still compute in float, by name: those whose output is a float
    tensor, but for the DEQUANTIZE that hands the logits to a float output."""
    from ai_edge_litert import schema_py_generated as schema
    model = schema.Model.GetRootAs(data, 0)
    graph, names = _tensor_types(data)
    codes = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    outputs = {graph.Outputs(i) for i in range(graph.OutputsLength())}
    counts: dict[str, int] = {}
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        if op.OutputsLength() == 0:
            continue
        out = op.Outputs(0)
        if names.get(graph.Tensors(out).Type()) not in ("FLOAT32", "FLOAT16") or out in outputs:
            continue
        code = model.OperatorCodes(op.OpcodeIndex())
        name = codes.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def io_quantization(data: bytes) -> dict[str, dict[str, float | int]]:
    """The scale and zero point of each integer graph input and output, by role (empty: float I/O)."""
    graph, names = _tensor_types(data)
    out = {}
    for role, index in (("input", graph.Inputs(0)), ("output", graph.Outputs(0))):
        tensor = graph.Tensors(index)
        q = tensor.Quantization()
        if names.get(tensor.Type()) in ("INT8", "UINT8") and q is not None and q.ScaleLength() == 1:
            out[role] = {"dtype": names[tensor.Type()].lower(), "scale": float(q.Scale(0)),
                         "zero_point": int(q.ZeroPoint(0))}
    return out


def tflite_precision(path: Path) -> tuple[str | None, int | None]:
    """What the file's tensors are: "int8" when any tensor is 8-bit integer, "fp16" when any is half
    precision, else "fp32"; None when the file cannot be read as a model here."""
    try:
        data = read_regular(path, "the .tflite", max_bytes=MAX_TFLITE_BYTES)
        graph, names = _tensor_types(data)
        count = graph.TensorsLength()
        if count > MAX_TENSORS:     # a hostile length: never a loop over it
            return None, None
        types = {names.get(graph.Tensors(i).Type()) for i in range(count)}
    except Exception:     # noqa: BLE001 - not a model we can read: its runner reports why
        return None, None
    if types & {"INT8", "UINT8"}:
        return "int8", None
    return ("fp16" if "FLOAT16" in types else "fp32"), None
