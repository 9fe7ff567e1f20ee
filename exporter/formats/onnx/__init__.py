"""The ONNX plugin: ONNX from the program, onnxsim, the ORT mobile format, int8 (static QDQ) and fp16
ONNX, and the onnxruntime runners that verify and time them.

onnxscript (the dynamo exporter), onnxsim, onnxruntime's quantization tools and
onnxconverter-common are imported in this folder and nowhere else.
"""
from __future__ import annotations

from .. import Format, Plugin
from ...kit import Option, validate_calibration
from .export import ONNX_NAME, export_onnx, validate_onnx, warm_exporter
from .facts import onnx_facts
from .fp16 import FP16_NAME, export_fp16
from .ort_format import CONFIG_NAME, ORT_NAME, USABILITY_NAME, export_ort
from .quantize import INT8_NAME, export_int8
from .arm64 import OnnxArm64Runner
from .runner import OnnxRunner, OrtFormatRunner
from .simplify import SIM_NAME, simplify_onnx

INT8_PLANS = ("measured", "uniform")

OPTIONS = (
    Option("opset", "--opset", int, None,
           "ONNX opset (default 18, the dynamo exporter's own; below 18 needs --legacy-exporter)."),
    Option("simplify", "--no-simplify", bool, True, "Skip onnxsim; ORT converts the plain ONNX.", negated=True),
    Option("keep_fp32", "--keep-fp32", str, (),
           "int8: ONNX node name left in float (repeatable); the manifest's weakest_layers suggests candidates.",
           repeatable=True),
    Option("int8_plan", "--int8-plan", str, "measured",
           "int8: 'measured' (default) profiles float and int8 per block on onnxruntime, keeps in float the blocks "
           "int8 makes slower, then more until the output agrees with float; 'uniform' quantises every node "
           "(except --keep-fp32).", choices=INT8_PLANS),
)


def _usability(r) -> str:
    short = {"NNAPI": "NNAPI", "CoreML NeuralNetwork": "CoreML-NN", "CoreML MLProgram": "CoreML-MLP"}
    return " ".join(f"{short.get(k, k)}:{v}" for k, v in r.details.get("mobile_usability", {}).items())


PLUGIN = Plugin(
    name="onnx",
    order=10,
    options=OPTIONS,
    tools=("onnx", "onnxscript", "onnxsim", "onnxconverter-common"),
    warm=warm_exporter,
    formats=(
        Format("onnx", export_onnx, ONNX_NAME, "onnx", "ONNX from the program (dynamo exporter), checked",
               default=True, bench_baseline=True, options=("opset", "simplify", "legacy_exporter"), facts=onnx_facts,
               validate=validate_onnx,
               note=lambda r: f"opset {r.opset}, {r.details.get('exporter')} exporter"),
        Format("onnx-simplified", simplify_onnx, SIM_NAME, "onnx", "onnxsim on the ONNX file", requires=("onnx",),
               selectable=False, supersedes="onnx", included_when=lambda o: o.simplify, bench_baseline=True,
               facts=onnx_facts, note=lambda r: f"nodes {r.details.get('nodes_before')} → {r.nodes}"),
        Format("ort", export_ort, ORT_NAME, "ort", "ONNX Runtime mobile format", requires=("onnx",), default=True,
               side_files=(CONFIG_NAME, USABILITY_NAME),
               note=_usability, platforms=("android", "ios")),
        Format("int8", export_int8, INT8_NAME, "onnx", "ONNX, ORT static QDQ int8", precision="int8",
               requires=("onnx",), options=("calibration", "keep_fp32", "int8_plan"), validate=validate_calibration,
               facts=onnx_facts,
               note=lambda r: f"{r.details.get('bytes_ratio_to_fp32')}x fp32 bytes; "
                              f"calibration: {r.details.get('calibration')}"),
        Format("fp16", export_fp16, FP16_NAME, "onnx", "ONNX with fp16 weights and arithmetic", precision="fp16",
               requires=("onnx",), facts=onnx_facts),
    ),
    runners=(OnnxRunner, OrtFormatRunner, OnnxArm64Runner),
)
