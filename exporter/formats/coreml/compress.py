"""Compressed CoreML: the fp16 ML Program with its weights stored small, as iOS apps ship it.

- ``coreml-int8w`` (``model.int8w.mlpackage``): every weight tensor linearly quantised to int8, one
  scale per output channel (``constexpr_affine_dequantize``); precision ``int8-weights``.
- ``coreml-palette`` (``model.palette.mlpackage``): every weight tensor palettised by k-means to a
  look-up table of 2**``--palettize-bits`` values (``constexpr_lut_to_dense``); precision
  ``palette-<N>bit``. With ``--palettize-mixed``, the weights measured most sensitive to N bits are
  kept wider (:func:`kept_bits`), the fewest that hold the gate on the calibration samples (:mod:`.mixed`);
  precision ``palette-mixed``.

Both compress inside the conversion pipeline (``compression::linear_quantize_weights`` /
``palettize_weights``, coremltools.optimize), so the rest of the pipeline stays this tool's; both run in
fp16 like ``coreml-fp16``. The compressed ops are iOS 16 ops; what they compute is defined by the MIL
op reference (coremltools ``mil/ops/defs/iOS16/constexpr_ops.py``: ``dequantized = scale * (data -
zero_point)`` on the axis, and ``lut[indices]`` unpacked from the bit-packed indices), and the MIL
interpreter here runs them with coremltools' own decompression (``materialized_val_inference``).

- ``coreml-w8a8`` (``model.w8a8.mlpackage``): int8 weights as above, and int8 activations: a
  ``quantize``/``dequantize`` pair (iOS 17 ops, so this package targets iOS 17) wherever
  coremltools' activation passes put one, each with a per-tensor symmetric scale from the
  activation's range over the calibration samples; precision ``w8a8``. coremltools measures those
  ranges with Core ML predictions, which run on macOS only ("Model prediction is only supported on
  macOS"); here they are measured by running the float program in this tool's MIL interpreter
  (:func:`activation_ranges`), then handed to the same passes
  (``compression::insert_prefix_quantize_dequantize_pair`` / ``…suffix…``). The interpreter runs the
  pairs as the iOS 17 op reference defines them (``mil/ops/defs/iOS17/quantization_ops.py``:
  ``clip(round(x / scale) + zero_point)``, ``scale * (q - zero_point)``).

Each precision is declared by this plugin with its gate (:data:`PRECISIONS`): a compressed package
is judged by the int8 rules (top-1 agreement, accuracy, logit slope, class bias), never as fp16.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from ...kit import DEFAULT_TOLERANCES, ArtifactRecord, ExportContext, Precision, Status
from .export import DEPLOYMENT_TARGET, convert_coreml, mil_op_histogram, save_reproducibly, validate_spec

INT8W_NAME = "model.int8w.mlpackage"
PALETTE_NAME = "model.palette.mlpackage"
PALETTE_BITS = (1, 2, 3, 4, 6, 8)
#: below this many elements a weight stays fp16 (coremltools' own default: a bias, a norm's scale)
WEIGHT_THRESHOLD = 512
INT8_WEIGHTS = "int8-weights"
W8A8_NAME = "model.w8a8.mlpackage"
W8A8 = "w8a8"
W8A8_TARGET = "iOS17"          # quantize / dequantize are iOS 17 ops
#: calibration samples the interpreter runs for the activation ranges (NumPy kernels: the cost grows with the input)
W8A8_CALIBRATION = 128


#: a package whose look-up tables differ in width (``--palettize-mixed``: the sensitive weights kept at
#: :func:`kept_bits`)
PALETTE_MIXED = "palette-mixed"


def kept_bits(bits: int) -> int:
    """The width a sensitive weight is kept at: 6 bits under a 4-bit (or narrower) palette, else 8."""
    return 6 if bits < 6 else 8


def palette_precision(bits: int) -> str:
    return f"palette-{bits}bit"


#: the gate of a package whose weights are compressed to at most 8 bits: the int8 rules
COMPRESSED_GATE = DEFAULT_TOLERANCES["int8"]
PRECISIONS = (Precision(INT8_WEIGHTS, COMPRESSED_GATE, strictness=0),
              Precision(W8A8, COMPRESSED_GATE, strictness=0),
              Precision(PALETTE_MIXED, COMPRESSED_GATE, strictness=0),
              *(Precision(palette_precision(b), COMPRESSED_GATE, strictness=0) for b in PALETTE_BITS))


def _fp16(ctx: ExportContext) -> ExportContext:
    return ctx.with_options(coreml_precision="fp16", coreml_input="tensor")


def _pass(name: str, op_config, **options) -> tuple[str, dict]:
    from coremltools.optimize.coreml import OptimizationConfig
    return name, {"config": OptimizationConfig(global_config=op_config), **options}


def _int8_weights():
    from coremltools.optimize.coreml import OpLinearQuantizerConfig
    config = OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                     weight_threshold=WEIGHT_THRESHOLD)
    return _pass("compression::linear_quantize_weights", config)


def _compressed(ctx: ExportContext, name: str, fmt: str, precision: str, compression: tuple,
                target: str = DEPLOYMENT_TARGET) -> ArtifactRecord:
    t0 = time.perf_counter()
    fp16_ctx = _fp16(ctx)
    mlmodel = convert_coreml(fp16_ctx, compression=compression, precision_name=precision, target=target)
    details = validate_spec(mlmodel, fp16_ctx)
    details.update(precision=precision, compute="fp16", weight_threshold=WEIGHT_THRESHOLD)
    save_reproducibly(mlmodel, ctx.workdir / name)
    ops = mil_op_histogram(mlmodel)
    return ArtifactRecord(format=fmt, status=Status.OK, path=name, seconds=time.perf_counter() - t0,
                          nodes=sum(n for op, n in ops.items() if op != "const" and not op.startswith("constexpr_")),
                          deployment_target=target, details={**details, "op_types": ops})


def export_coreml_int8w(ctx: ExportContext) -> ArtifactRecord:
    return _compressed(ctx, INT8W_NAME, "coreml-int8w", INT8_WEIGHTS, (_int8_weights(),))


def _convert_to(ctx: ExportContext, compression: tuple, path: Path) -> None:
    """The fp16 package the pipeline makes with ``compression``, written to ``path`` (measuring)."""
    save_reproducibly(convert_coreml(_fp16(ctx), compression=compression), path)


def export_coreml_palette(ctx: ExportContext) -> ArtifactRecord:
    from coremltools.optimize.coreml import OpPalettizerConfig
    from .mixed import Widths, choose_widths
    bits = ctx.options.palettize_bits
    t0 = time.perf_counter()
    if ctx.options.palettize_mixed and bits < 8:
        kept, mixing = choose_widths(ctx, _convert_to, bits, kept_bits(bits), WEIGHT_THRESHOLD, COMPRESSED_GATE)
        compression = ("compression::palettize_weights",
                       {"config": Widths(bits, kept_bits(bits), kept).config(WEIGHT_THRESHOLD)})
    else:
        kept, mixing = [], None
        compression = _pass("compression::palettize_weights",
                            OpPalettizerConfig(mode="kmeans", nbits=bits, weight_threshold=WEIGHT_THRESHOLD))
    widths = {bits} | ({kept_bits(bits)} if kept else set())
    if mixing is not None and len(kept) == mixing["weights"]:
        widths = {kept_bits(bits)}          # every weight kept wider: one width after all
    record = _compressed(ctx, PALETTE_NAME, "coreml-palette",
                         PALETTE_MIXED if len(widths) > 1 else palette_precision(widths.pop()), (compression,))
    record.seconds = time.perf_counter() - t0     # with the measuring
    record.details["palettize_bits"] = bits
    if mixing is not None:
        record.details["mixed_widths"] = mixing
    return record


def activation_ranges(ctx: ExportContext, x: np.ndarray) -> dict[str, dict[str, float]]:
    """Each activation's range over ``x``, by MIL variable name (``{"rmin", "rmax"}``, the form
    coremltools' activation passes read), measured by running the float fp16 program of the same
    conversion in the MIL interpreter."""
    from .mil import MilProgram
    ranges: dict[str, dict[str, float]] = {"input": {"rmin": float(x.min()), "rmax": float(x.max())}}

    def observe(name: str, value) -> None:
        v = np.asarray(value)
        if v.dtype.kind != "f" or v.size == 0:
            return
        lo, hi = float(np.min(v)), float(np.max(v))
        seen = ranges.get(name)
        ranges[name] = {"rmin": lo, "rmax": hi} if seen is None else {"rmin": min(seen["rmin"], lo),
                                                                         "rmax": max(seen["rmax"], hi)}

    float_model = convert_coreml(_fp16(ctx), target=W8A8_TARGET)
    with tempfile.TemporaryDirectory(prefix="bsconv-w8a8-") as tmp:
        path = Path(tmp) / "float.mlpackage"
        save_reproducibly(float_model, path)
        program = MilProgram(path)
        for row in x:
            program.run(row[None], ctx.spec, observe=observe)
    return ranges


def export_coreml_w8a8(ctx: ExportContext) -> ArtifactRecord:
    from coremltools.optimize.coreml.experimental import OpActivationLinearQuantizerConfig
    from ...kit import calibration_data
    x, _, origin = calibration_data(ctx)
    x = x[:W8A8_CALIBRATION]
    t0 = time.perf_counter()
    ranges = activation_ranges(ctx, x)
    calibration_seconds = time.perf_counter() - t0
    activations = OpActivationLinearQuantizerConfig(mode="linear_symmetric")
    passes = (_pass("compression::insert_prefix_quantize_dequantize_pair", activations, activation_stats=ranges),
              _pass("compression::insert_suffix_quantize_dequantize_pair", activations, activation_stats=ranges),
              ("common::dequantize_quantize_pair_elimination", {}),
              _int8_weights())
    record = _compressed(ctx, W8A8_NAME, "coreml-w8a8", W8A8, passes, target=W8A8_TARGET)
    record.seconds += calibration_seconds
    record.details.update(calibration=origin, calibration_samples=int(len(x)),
                          activation_ranges="measured by the MIL interpreter on the fp16 program",
                          quantized_activations=record.details["op_types"].get("quantize", 0))
    return record
