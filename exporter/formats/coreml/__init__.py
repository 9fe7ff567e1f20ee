"""The CoreML plugin: ML Program ``.mlpackage`` files (fp32 and fp16), verified by a NumPy interpreter
of the MIL program on any OS and by Apple's runtime on macOS. coremltools is imported in this
folder and nowhere else."""
from __future__ import annotations

from pathlib import Path

from ...kit import Option, UserInputError, pixel_normalization, validate_calibration
from .. import Format, Plugin
from .backend import import_coremltools
from .compress import (INT8_WEIGHTS, INT8W_NAME, PALETTE_BITS, PALETTE_MIXED, PALETTE_NAME, PRECISIONS as COMPRESSED, W8A8,
                       W8A8_NAME, export_coreml_int8w, export_coreml_palette, export_coreml_w8a8, palette_precision)
from .export import COREML_NAME, export_coreml
from .fp16 import COREML_FP16_NAME, export_coreml_fp16
from .mil import CoreMLRunner, MilReferenceRunner, program_precision

PRECISIONS = ("fp32", "fp16")
INPUTS = ("tensor", "image")

OPTIONS = (
    Option("coreml_precision", "--coreml-precision", str, "fp32", "coreml: fp32 or fp16 compute precision.",
           choices=PRECISIONS),
    Option("coreml_input", "--coreml-input", str, "tensor",
           "coreml: tensor (float array, like ONNX) or image (ImageType, 8-bit RGB).", choices=INPUTS),
    Option("palettize_bits", "--palettize-bits", int, 6,
           "coreml-palette: bits per weight (a k-means look-up table of 2**N values).", choices=PALETTE_BITS),
    Option("palettize_mixed", "--palettize-mixed", bool, False,
           "coreml-palette: keep the weights most sensitive to --palettize-bits wider (6 bits under 4, else 8), "
           "the fewest that hold the gate on the calibration samples (measured); precision palette-mixed."),
)


def _validate(opts, spec) -> None:
    """Before any work: an image input folds the pixel rule into ImageType's one scale and per-channel
    bias, so a spec whose std differs per channel cannot be an image input."""
    std = pixel_normalization(spec)[1]
    if opts.coreml_input == "image" and max(std) - min(std) > 1e-9 * max(std):
        raise UserInputError(f"--coreml-input image: CoreML's ImageType scales every channel alike, and this "
                             f"input spec's std differs per channel ({', '.join(f'{v:g}' for v in spec.std)}); "
                             "use --coreml-input tensor and normalise in the app")


def _validate_palette(opts, spec) -> None:
    """Mixed widths are measured on the calibration samples: they must be real (as for int8)."""
    if opts.palettize_mixed:
        validate_calibration(opts, spec)


def _facts(path: Path) -> tuple[str | None, int | None]:
    return program_precision(path), None


def _note(r) -> str:
    d = r.details
    return f"{r.deployment_target}, {d.get('precision')}{', fp16 compute' if d.get('compute') else ''}, " \
           f"{d.get('input_kind')} input"


PLUGIN = Plugin(
    name="coreml",
    order=20,
    options=OPTIONS,
    tools=("coremltools",),
    warm=import_coremltools,
    formats=(
        Format("coreml", export_coreml, COREML_NAME, "mlpackage", "CoreML ML Program", default=True,
               options=("coreml_precision", "coreml_input", "legacy_exporter"), precisions=PRECISIONS,
               batch_one=True, facts=_facts, note=_note, validate=_validate, platforms=("ios",)),
        Format("coreml-fp16", export_coreml_fp16, COREML_FP16_NAME, "mlpackage", "CoreML with fp16 compute",
               precision="fp16", batch_one=True, facts=_facts, note=_note, platforms=("ios",)),
        Format("coreml-int8w", export_coreml_int8w, INT8W_NAME, "mlpackage",
               "CoreML, fp16 compute, weights int8 per channel", precision=INT8_WEIGHTS, batch_one=True,
               facts=_facts, note=_note, platforms=("ios",)),
        Format("coreml-palette", export_coreml_palette, PALETTE_NAME, "mlpackage",
               "CoreML, fp16 compute, weights palettised (k-means look-up tables)",
               precision=palette_precision(6),
               precisions=(*(palette_precision(b) for b in PALETTE_BITS), PALETTE_MIXED),
               options=("palettize_bits", "palettize_mixed", "calibration"), validate=_validate_palette,
               batch_one=True, facts=_facts, note=_note, platforms=("ios",)),
        Format("coreml-w8a8", export_coreml_w8a8, W8A8_NAME, "mlpackage",
               "CoreML (iOS 17), fp16 compute, int8 weights and int8 activations (quantize/dequantize pairs), "
               "calibrated like int8", precision=W8A8, batch_one=True, options=("calibration",),
               validate=validate_calibration, facts=_facts,
               note=lambda r: f"{_note(r)}; {r.details.get('quantized_activations')} activations quantised; "
                              f"calibration: {r.details.get('calibration')}", platforms=("ios",)),
    ),
    precisions=COMPRESSED,
    runners=(MilReferenceRunner, CoreMLRunner),
)
