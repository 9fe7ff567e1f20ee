"""The built-in rows of the format table (see :mod:`exporter.formats`), in stage order."""
from __future__ import annotations

from ..models.errors import UserInputError
from ..models.registry import InputSpec
from .context import COREML_INPUTS, COREML_PRECISIONS, INT8_PLANS, ExportOptions
from .coreml import COREML_NAME, export_coreml
from .executorch_export import PTE_INT8_NAME, PTE_NAME, export_pte, export_pte_int8
from .formats import Format, register_format
from .fp16 import COREML_FP16_NAME, FP16_NAME, export_coreml_fp16, export_fp16
from .onnx_export import ONNX_NAME, export_onnx
from .ort_format import ORT_NAME, export_ort
from .program_export import PT2_NAME, export_pt2
from ..models.data import is_digits_model
from .quantize import INT8_NAME, export_int8
from .records import ArtifactRecord
from .simplify import SIM_NAME, simplify_onnx

PALETTE_BITS = (1, 2, 3, 4, 6, 8)


def _validate_coreml(opts: ExportOptions, spec: InputSpec) -> None:
    if opts.coreml_precision not in COREML_PRECISIONS:
        raise UserInputError(f"--coreml-precision must be one of {', '.join(COREML_PRECISIONS)}")
    if opts.coreml_input not in COREML_INPUTS:
        raise UserInputError(f"--coreml-input must be one of {', '.join(COREML_INPUTS)}")


def _validate_coreml_fp16(opts: ExportOptions, spec: InputSpec) -> None:
    if opts.palettize_bits is not None and opts.palettize_bits not in PALETTE_BITS:
        raise UserInputError(f"--palettize-bits must be one of {', '.join(map(str, PALETTE_BITS))}, "
                             f"not {opts.palettize_bits}")


def _validate_int8(opts: ExportOptions, spec: InputSpec) -> None:
    from pathlib import Path
    if opts.int8_plan not in INT8_PLANS:
        raise UserInputError(f"--int8-plan must be one of {', '.join(INT8_PLANS)}, not {opts.int8_plan}")
    if opts.calibration not in (None, "random") and not Path(opts.calibration).is_file():
        raise UserInputError(f"--calibration {opts.calibration} does not exist; pass an .npz with an "
                             "'input' array or 'random'")
    if opts.calibration is None and not is_digits_model(spec):
        raise UserInputError("int8 needs real calibration samples: pass --calibration FILE.npz (an 'input' "
                             "array of real inputs), or --calibration random for latency work only")


def _usability(r: ArtifactRecord) -> str:
    short = {"NNAPI": "NNAPI", "CoreML NeuralNetwork": "CoreML-NN", "CoreML MLProgram": "CoreML-MLP"}
    return " ".join(f"{short.get(k, k)}:{v}" for k, v in r.details.get("mobile_usability", {}).items())


def _pte_note(r: ArtifactRecord) -> str:
    d = r.details
    outside = ", ".join(f"{op.split('.')[-2] if op.count('.') >= 2 else op} ×{n}"
                        for op, n in d.get("outside_ops", {}).items())
    return f"XNNPACK runs {d.get('delegated_nodes')} nodes; outside: {outside or 'none'}"


def _coreml_note(r: ArtifactRecord) -> str:
    d = r.details
    return f"{r.deployment_target}, {d.get('precision')}, {d.get('input_kind')} input"


register_format(Format(
    "pt2", export_pt2, PT2_NAME, "pt2", "the torch.export program every format comes from", default=True,
    benchmark=False, note=lambda r: f"{r.nodes} ATen nodes, captured in {r.details.get('capture_seconds')} s"))
register_format(Format(
    "onnx", export_onnx, ONNX_NAME, "onnx", "ONNX from the program (dynamo exporter), checked", default=True,
    options=("opset", "simplify", "legacy_exporter"),
    note=lambda r: f"opset {r.opset}, {r.details.get('exporter')} exporter"))
register_format(Format(
    "onnx-simplified", simplify_onnx, SIM_NAME, "onnx", "onnxsim on the ONNX file", requires=("onnx",),
    selectable=False, supersedes="onnx", included_when=lambda o: o.simplify,
    note=lambda r: f"nodes {r.details.get('nodes_before')} → {r.nodes}"))
register_format(Format(
    "ort", export_ort, ORT_NAME, "ort", "ONNX Runtime mobile format", requires=("onnx",), default=True,
    note=_usability))
register_format(Format(
    "coreml", export_coreml, COREML_NAME, "mlpackage", "CoreML ML Program", default=True,
    options=("coreml_precision", "coreml_input", "legacy_exporter"), precision_option="coreml_precision", batch_one=True,
    validate=_validate_coreml, note=_coreml_note))
register_format(Format(
    "pte", export_pte, PTE_NAME, "pte", "ExecuTorch program, XNNPACK-delegated", default=True, note=_pte_note))
register_format(Format(
    "int8", export_int8, INT8_NAME, "onnx", "ONNX, ORT static QDQ int8", precision="int8", requires=("onnx",),
    options=("calibration", "keep_fp32", "int8_plan"), validate=_validate_int8,
    note=lambda r: f"{r.details.get('bytes_ratio_to_fp32')}x fp32 bytes; calibration: {r.details.get('calibration')}"))
register_format(Format(
    "pte-int8", export_pte_int8, PTE_INT8_NAME, "pte", "ExecuTorch program, XNNPACK int8 (pt2e quantizer)",
    precision="int8", options=("calibration",), validate=_validate_int8,
    note=lambda r: f"{_pte_note(r)}; calibration: {r.details.get('calibration')}"))
register_format(Format(
    "fp16", export_fp16, FP16_NAME, "onnx", "ONNX with fp16 weights and arithmetic", precision="fp16",
    requires=("onnx",)))
register_format(Format(
    "coreml-fp16", export_coreml_fp16, COREML_FP16_NAME, "mlpackage", "CoreML with fp16 compute",
    precision="fp16", options=("palettize_bits",), batch_one=True, validate=_validate_coreml_fp16,
    note=_coreml_note))
