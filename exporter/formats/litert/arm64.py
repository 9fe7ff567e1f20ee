"""A .tflite on LiteRT's aarch64 build with XNNPACK, under QEMU."""
from pathlib import Path

from ...kit import EmulatedRunner


class LiteRtArm64Runner(EmulatedRunner):
    name = "litert-xnnpack-arm64"
    kinds = ("tflite",)
    worker = Path(__file__).resolve().parent / "arm64_worker.py"
    runtime = "LiteRT"
