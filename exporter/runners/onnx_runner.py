"""ONNX Runtime runners: one per execution provider, and the ``.ort`` format."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import Runner, RunnerUnavailable

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider", "coreml": "CoreMLExecutionProvider",
             "nnapi": "NnapiExecutionProvider", "openvino": "OpenVINOExecutionProvider",
             "dml": "DmlExecutionProvider"}


def provider_name(short: str) -> str:
    return PROVIDERS.get(short.lower(), short)


def available_providers() -> list[str]:
    import onnxruntime as ort
    return list(ort.get_available_providers())


class OnnxRunner(Runner):
    """An ONNX (or ORT-format) file on one execution provider."""

    def __init__(self, path: str | Path, provider: str = "cpu", *, threads: int | None = None,
                 session_options: dict | None = None):
        self.path = Path(path)
        self.provider = provider_name(provider)
        self.name = f"onnxruntime-{provider.lower()}"
        self.threads = threads
        self.session_options = session_options or {}
        self.session = None

    def unavailable_reason(self) -> str | None:
        have = available_providers()
        if self.provider not in have:
            return (f"{self.provider} is not available in this onnxruntime build "
                    f"(available: {', '.join(have)})")
        return None

    def load(self) -> "OnnxRunner":
        import onnxruntime as ort
        reason = self.unavailable_reason()
        if reason:
            raise RunnerUnavailable(reason)
        if self.provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider") and hasattr(ort, "preload_dlls"):
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
        self.session = ort.InferenceSession(str(self.path), sess_options=so, providers=[self.provider])
        if self.provider not in self.session.get_providers():
            raise RunnerUnavailable(f"{self.provider} could not be initialised here "
                                    f"(the session fell back to {self.session.get_providers()})")
        shape = self.session.get_inputs()[0].shape
        self.input_shape = tuple(shape)
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        return self

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.session is None:
            self.load()
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, inputs)))

    def close(self) -> None:
        self.session = None


class OrtFormatRunner(OnnxRunner):
    """A ``.ort`` file: onnxruntime loads it like ONNX, on the CPU provider by default."""

    def __init__(self, path: str | Path, provider: str = "cpu", **kw):
        super().__init__(path, provider, **kw)
        self.name = f"ort-format-{provider.lower()}"
