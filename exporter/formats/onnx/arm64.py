"""The ONNX family (.onnx, simplified, int8, fp16, .ort) on onnxruntime's aarch64 build, under QEMU."""
from pathlib import Path

from ...kit import EmulatedRunner


class OnnxArm64Runner(EmulatedRunner):
    name = "onnxruntime-arm64"
    kinds = ("onnx", "ort")
    worker = Path(__file__).resolve().parent / "arm64_worker.py"
    runtime = "onnxruntime"
