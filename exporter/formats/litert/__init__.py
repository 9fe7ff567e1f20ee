"""The LiteRT plugin: Android's ``.tflite``, converted from the bundle's ``model.pt2`` by Google's
litert-torch in an environment of its own (see converter.py), given the app's contract and
TFLITE_METADATA (tflite_file.py), quantised to int8 by ai-edge-quantizer in the same environment
(quantized.py), and verified and timed by the LiteRT interpreter with XNNPACK and with its built-in
kernels (runner.py). ai-edge-litert, ai-edge-quantizer and litert-torch are used in this folder and
nowhere else. Opt-in: the converter environment is 2.1 GB.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from ...kit import ArtifactRecord, Option, Status, UserInputError, validate_calibration
from .. import Format, Plugin
from . import converter
from .arm64 import LiteRtArm64Runner
from .quantized import IO_CHOICES, TFLITE_INT8_NAME, export_tflite_int8, tflite_precision
from .runner import LiteRtBuiltinRunner, LiteRtRunner
from .tflite_file import finished_tflite, op_counts

TFLITE_NAME = "model.tflite"


def _validate(opts, spec) -> None:
    reason = converter.missing_reason()
    if reason:
        raise UserInputError(f"tflite: {reason}")
    if opts.dynamic_batch:
        raise UserInputError("tflite takes a fixed batch: drop --dynamic-batch or leave tflite out of --formats")


OPTIONS = (
    Option("tflite_int8_io", "--tflite-int8-io", str, "float",
           "tflite-int8: float (fp32 input and logits, quantised inside the file: what the pixel rule feeds) "
           "or int8 (the app quantises with the input tensor's scale and zero point).", choices=IO_CHOICES),
)


def _named(ops: dict | None) -> str:
    return ", ".join(f"{op} ×{n}" for op, n in (ops or {}).items()) or "none"


def _validate_int8(opts, spec) -> None:
    _validate(opts, spec)
    validate_calibration(opts, spec)


def export_tflite(ctx) -> ArtifactRecord:
    """model.pt2 (the bundle's own, just written) through the converter subprocess, then the
    contract's names, TFLITE_METADATA, our metadata and the label file."""
    t0 = time.perf_counter()
    pt2 = ctx.workdir / ctx.records["pt2"].path
    with tempfile.TemporaryDirectory(prefix="bsconv-litert-") as tmp:
        raw = Path(tmp) / "converted.tflite"
        try:
            converter.convert(pt2, raw, tuple(ctx.example.shape))
        except converter.ConversionFailed as e:
            return ArtifactRecord(format="tflite", status=Status.FAILED, seconds=time.perf_counter() - t0,
                                  error=str(e))
        converted = raw.read_bytes()
    data = finished_tflite(ctx, converted, precision="fp32")
    (ctx.workdir / TFLITE_NAME).write_bytes(data)
    ops = op_counts(data)
    return ArtifactRecord(format="tflite", status=Status.OK, path=TFLITE_NAME, seconds=time.perf_counter() - t0,
                          nodes=sum(ops.values()),
                          details={"op_types": ops, "source": "pt2",
                                   "converter": f"litert-torch {converter.pinned('litert-torch')} "
                                                f"(its own environment: {converter.env_dir().name})",
                                   "metadata": "TFLITE_METADATA (normalisation, labels.txt) and bsconv_export"})


def _setup(progress=None) -> str:
    return f"LiteRT converter environment ready: {converter.setup(progress)}"


PLUGIN = Plugin(
    name="litert",
    order=40,
    options=OPTIONS,
    tools=("ai-edge-litert",),
    setup=_setup,
    formats=(Format("tflite", export_tflite, TFLITE_NAME, "tflite",
                    "LiteRT (TensorFlow Lite) for Android, from model.pt2 by litert-torch (needs "
                    "'bsconv-export setup litert')", requires=("pt2",), validate=_validate,
                    note=lambda r: ", ".join(f"{k} ×{v}" for k, v in list(r.details.get("op_types", {}).items())[:6]),
                    facts=tflite_precision, platforms=("android",)),
             Format("tflite-int8", export_tflite_int8, TFLITE_INT8_NAME, "tflite",
                    "LiteRT int8 (ai-edge-quantizer static int8 on model.tflite, float I/O unless "
                    "--tflite-int8-io int8; needs 'bsconv-export setup litert')", precision="int8",
                    requires=("tflite",), options=("calibration", "tflite_int8_io"), validate=_validate_int8,
                    note=lambda r: f"{r.details.get('bytes_ratio_to_fp32')}x fp32 bytes, {r.details.get('io')} I/O, "
                                   f"float ops: {_named(r.details.get('float_ops'))}; "
                                   f"calibration: {r.details.get('calibration')}",
                    fallback=lambda r: dict(r.details.get("float_ops", {})),
                    facts=tflite_precision, platforms=("android",))),
    runners=(LiteRtRunner, LiteRtBuiltinRunner, LiteRtArm64Runner),
)
