"""ONNX Runtime runners: ONNX files on any execution provider, and the ``.ort`` format."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from . import Runner, RunnerUnavailable, register_runner

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider", "coreml": "CoreMLExecutionProvider",
             "nnapi": "NnapiExecutionProvider", "openvino": "OpenVINOExecutionProvider",
             "dml": "DmlExecutionProvider"}


def provider_name(short: str) -> str:
    return PROVIDERS.get(short.lower(), short)


@functools.lru_cache(maxsize=1)
def onnxruntime():
    """onnxruntime, imported once with its telemetry turned off (this tool makes no network calls)."""
    import onnxruntime as ort
    if hasattr(ort, "disable_telemetry_events"):
        ort.disable_telemetry_events()
    return ort


def available_providers() -> list[str]:
    return list(onnxruntime().get_available_providers())


@register_runner
class OnnxRunner(Runner):
    """An ONNX file on one execution provider."""

    name = "onnxruntime"
    kinds = ("onnx",)
    per_provider = True

    def __init__(self, path: str | Path, provider: str = "cpu", *, threads: int | None = None,
                 session_options: dict | None = None):
        super().__init__(path, provider=provider.lower(), threads=threads)
        self.provider_full = provider_name(provider)
        self.session_options = session_options or {}
        self.session = None

    def unavailable_reason(self) -> str | None:
        have = available_providers()
        if self.provider_full not in have:
            return (f"{self.provider_full} is not available in this onnxruntime build "
                    f"(available: {', '.join(have)}); install onnxruntime-gpu on a machine with a GPU for cuda")
        return None

    def metadata(self) -> dict[str, str] | None:
        return dict(self.session.get_modelmeta().custom_metadata_map) if self.session is not None else None

    def load(self) -> "OnnxRunner":
        ort = onnxruntime()
        reason = self.unavailable_reason()
        if reason:
            raise RunnerUnavailable(reason)
        if self.provider_full in ("CUDAExecutionProvider", "TensorrtExecutionProvider") and hasattr(ort, "preload_dlls"):
            # pip's onnxruntime-gpu finds CUDA and cuDNN from the nvidia-* wheels only once preloaded
            ort.preload_dlls()
        so = ort.SessionOptions()
        if self.threads:
            so.intra_op_num_threads = self.threads
        for key, value in self.session_options.items():
            if key == "graph_optimization_level":
                so.graph_optimization_level = value
            else:
                so.add_session_config_entry(key, str(value))
        self.session = ort.InferenceSession(str(self.path), sess_options=so, providers=[self.provider_full])
        if self.provider_full not in self.session.get_providers():
            raise RunnerUnavailable(f"{self.provider_full} could not be initialised here "
                                    f"(the session fell back to {self.session.get_providers()})")
        inputs = self.session.get_inputs()
        self.input_names = [i.name for i in inputs]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.input_shape = tuple(inputs[0].shape)
        self.fixed_batch = self.input_shape[0] if isinstance(self.input_shape[0], int) else None
        return self

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.session is None:
            self.load()
        return dict(zip(self.output_names, self.session.run(self.output_names, inputs)))

    def close(self) -> None:
        self.session = None


@register_runner
class OrtFormatRunner(OnnxRunner):
    """A ``.ort`` file: onnxruntime loads it like ONNX."""

    name = "ort-format"
    kinds = ("ort",)
