"""Compressed CoreML: the fp16 ML Program with its weights stored small, as iOS apps ship it.

- ``coreml-int8w`` (``model.int8w.mlpackage``): every weight tensor linearly quantised to int8, one
  scale per output channel (``constexpr_affine_dequantize``); precision ``int8-weights``.
- ``coreml-palette`` (``model.palette.mlpackage``): every weight tensor palettised by k-means to a
  look-up table of 2**``--palettize-bits`` values (``constexpr_lut_to_dense``); precision
  ``palette-<N>bit``.

Both compress inside the conversion pipeline (``compression::linear_quantize_weights`` /
``palettize_weights``, coremltools.optimize), so the rest of the pipeline stays this tool's; both run in
fp16 like ``coreml-fp16``. The compressed ops are iOS 16 ops; what they compute is defined by the MIL
op reference (coremltools ``mil/ops/defs/iOS16/constexpr_ops.py``: ``dequantized = scale * (data -
zero_point)`` on the axis, and ``lut[indices]`` unpacked from the bit-packed indices), and the MIL
interpreter here runs them with coremltools' own decompression (``materialized_val_inference``).

Each precision is declared by this plugin with its gate (:data:`PRECISIONS`): a compressed package
is judged by the int8 rules (top-1 agreement, accuracy, logit slope, class bias), never as fp16.
"""
from __future__ import annotations

import time

from ...kit import DEFAULT_TOLERANCES, ArtifactRecord, ExportContext, Precision, Status
from .export import DEPLOYMENT_TARGET, convert_coreml, mil_op_histogram, save_reproducibly, validate_spec

INT8W_NAME = "model.int8w.mlpackage"
PALETTE_NAME = "model.palette.mlpackage"
PALETTE_BITS = (1, 2, 3, 4, 6, 8)
#: below this many elements a weight stays fp16 (coremltools' own default: a bias, a norm's scale)
WEIGHT_THRESHOLD = 512
INT8_WEIGHTS = "int8-weights"


def palette_precision(bits: int) -> str:
    return f"palette-{bits}bit"


#: the gate of a package whose weights are compressed to at most 8 bits: the int8 rules
COMPRESSED_GATE = DEFAULT_TOLERANCES["int8"]
PRECISIONS = (Precision(INT8_WEIGHTS, COMPRESSED_GATE, strictness=0),
              *(Precision(palette_precision(b), COMPRESSED_GATE, strictness=0) for b in PALETTE_BITS))


def _compressed(ctx: ExportContext, name: str, fmt: str, precision: str, compression) -> ArtifactRecord:
    t0 = time.perf_counter()
    fp16_ctx = ctx.with_options(coreml_precision="fp16", coreml_input="tensor")
    mlmodel = convert_coreml(fp16_ctx, compression=compression, precision_name=precision)
    details = validate_spec(mlmodel, fp16_ctx)
    details.update(precision=precision, compute="fp16", weight_threshold=WEIGHT_THRESHOLD)
    save_reproducibly(mlmodel, ctx.workdir / name)
    ops = mil_op_histogram(mlmodel)
    return ArtifactRecord(format=fmt, status=Status.OK, path=name, seconds=time.perf_counter() - t0,
                          nodes=sum(n for op, n in ops.items() if op != "const" and not op.startswith("constexpr_")),
                          deployment_target=DEPLOYMENT_TARGET, details={**details, "op_types": ops})


def export_coreml_int8w(ctx: ExportContext) -> ArtifactRecord:
    from coremltools.optimize.coreml import OpLinearQuantizerConfig
    config = OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                     weight_threshold=WEIGHT_THRESHOLD)
    return _compressed(ctx, INT8W_NAME, "coreml-int8w", INT8_WEIGHTS,
                       ("compression::linear_quantize_weights", config))


def export_coreml_palette(ctx: ExportContext) -> ArtifactRecord:
    from coremltools.optimize.coreml import OpPalettizerConfig
    bits = ctx.options.palettize_bits
    config = OpPalettizerConfig(mode="kmeans", nbits=bits, weight_threshold=WEIGHT_THRESHOLD)
    record = _compressed(ctx, PALETTE_NAME, "coreml-palette", palette_precision(bits),
                         ("compression::palettize_weights", config))
    record.details["palettize_bits"] = bits
    return record
