"""The LiteRT plugin: Android's ``.tflite``, converted from the bundle's ``model.pt2`` by Google's
litert-torch in an environment of its own (see converter.py), given the app's contract and
TFLITE_METADATA (tflite_file.py), and verified and timed by the LiteRT interpreter with XNNPACK
and with its built-in kernels (runner.py). ai-edge-litert and litert-torch are used in this
folder and nowhere else. Opt-in: the converter environment is 2.1 GB.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from ...kit import ArtifactRecord, Status, UserInputError, __version__
from .. import Format, Plugin
from . import converter
from .arm64 import LiteRtArm64Runner
from .runner import LiteRtBuiltinRunner, LiteRtRunner

TFLITE_NAME = "model.tflite"


def _validate(opts, spec) -> None:
    reason = converter.missing_reason()
    if reason:
        raise UserInputError(f"tflite: {reason}")
    if opts.dynamic_batch:
        raise UserInputError("tflite takes a fixed batch: drop --dynamic-batch or leave tflite out of --formats")


def _op_counts(data: bytes) -> dict[str, int]:
    from ai_edge_litert import schema_py_generated as schema
    model = schema.Model.GetRootAs(data, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        c = model.OperatorCodes(i)
        code = max(c.BuiltinCode(), c.DeprecatedBuiltinCode())
        codes.append(names.get(code, str(code)) if code != schema.BuiltinOperator.CUSTOM
                     else (c.CustomCode() or b"custom").decode())
    counts: dict[str, int] = {}
    graph = model.Subgraphs(0)
    for i in range(graph.OperatorsLength()):
        op = codes[graph.Operators(i).OpcodeIndex()]
        counts[op] = counts.get(op, 0) + 1
    return dict(sorted(counts.items()))


def export_tflite(ctx) -> ArtifactRecord:
    """model.pt2 (the bundle's own, just written) through the converter subprocess, then the
    contract's names, TFLITE_METADATA, our metadata and the label file."""
    from ...kit import pixel_normalization
    from .tflite_file import finish
    t0 = time.perf_counter()
    pt2 = ctx.workdir / ctx.records["pt2"].path
    spec = ctx.spec
    with tempfile.TemporaryDirectory(prefix="bsconv-litert-") as tmp:
        raw = Path(tmp) / "converted.tflite"
        try:
            converter.convert(pt2, raw, tuple(ctx.example.shape))
        except converter.ConversionFailed as e:
            return ArtifactRecord(format="tflite", status=Status.FAILED, seconds=time.perf_counter() - t0,
                                  error=str(e))
        converted = raw.read_bytes()
    lo, hi = spec.value_range
    pixel_mean, pixel_std = pixel_normalization(spec)
    ours = {"arch": ctx.arch, "input_size": str(spec.size), "input_spec": json.dumps(spec.to_dict(), sort_keys=True),
            "normalization": spec.normalization, "labels": json.dumps(spec.class_labels()),
            "checkpoint_sha256": ctx.checkpoint_sha256 or "untrained", "precision": "fp32",
            "producer": f"bsconv-export {__version__}; litert-torch {converter.pinned('litert-torch')}"}
    data = finish(converted, arch=ctx.arch, description=f"{ctx.arch} exported by bsconv-export", version=__version__,
                  ours=ours, labels=spec.class_labels(), pixel_mean=pixel_mean,
                  pixel_std=pixel_std, value_range=(lo, hi), channels=spec.channels)
    (ctx.workdir / TFLITE_NAME).write_bytes(data)
    ops = _op_counts(data)
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
    tools=("ai-edge-litert",),
    setup=_setup,
    formats=(Format("tflite", export_tflite, TFLITE_NAME, "tflite",
                    "LiteRT (TensorFlow Lite) for Android, from model.pt2 by litert-torch (needs "
                    "'bsconv-export setup litert')", requires=("pt2",), validate=_validate,
                    note=lambda r: ", ".join(f"{k} ×{v}" for k, v in list(r.details.get("op_types", {}).items())[:6]),
                    platforms=("android",)),),
    runners=(LiteRtRunner, LiteRtBuiltinRunner, LiteRtArm64Runner),
)
