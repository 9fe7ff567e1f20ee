"""ONNX Runtime runners: ONNX files on any execution provider, and the ``.ort`` format."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...kit import Runner, RunnerUnavailable, onnxruntime

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider", "coreml": "CoreMLExecutionProvider",
             "nnapi": "NnapiExecutionProvider", "openvino": "OpenVINOExecutionProvider",
             "dml": "DmlExecutionProvider"}


def provider_name(short: str) -> str:
    return PROVIDERS.get(short.lower(), short)


def available_providers() -> list[str]:
    return list(onnxruntime().get_available_providers())


class OnnxRunner(Runner):
    """An ONNX file on one execution provider."""

    name = "onnxruntime"
    kinds = ("onnx",)
    per_provider = True

    metadata_keys = ("input_size",)

    def __init__(self, path: str | Path, provider: str = "cpu", *, threads: int | None = None,
                 spinning: bool = True, session_options: dict | None = None):
        super().__init__(path, provider=provider.lower(), threads=threads, spinning=spinning)
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

    @classmethod
    def rebatched(cls, path: Path, batch: int, workdir: Path) -> Path:
        """The ONNX file itself if it takes ``batch``; else a copy whose batch dimension is ``batch``."""
        if path.suffix != ".onnx":
            return path
        import onnx
        model = onnx.load(path, load_external_data=False)
        dim = model.graph.input[0].type.tensor_type.shape.dim[0]
        if dim.dim_param or dim.dim_value == batch:
            return path
        for value in list(model.graph.input) + list(model.graph.output):
            value.type.tensor_type.shape.dim[0].dim_value = batch
        del model.graph.value_info[:]
        out = workdir / f"{path.stem}.b{batch}.onnx"
        onnx.save(model, out)
        return out

    def settings(self) -> dict:
        """onnxruntime's session options for this runner."""
        return {"intra_op_num_threads": self.threads or "onnxruntime default (physical cores)",
                "inter_op_num_threads": 1, "execution_mode": "ORT_SEQUENTIAL",
                "graph_optimization_level": "ORT_ENABLE_ALL",
                "session.intra_op.allow_spinning": "1 (default)" if self.spinning else "0",
                **{k: str(v) for k, v in self.session_options.items()}}

    def labels(self) -> list[str] | None:
        """The ``labels`` metadata (a JSON list), or None when the file carries none."""
        from ...kit import UserInputError
        from ...kit import loads_json
        text = (self.metadata() or {}).get("labels")
        if text is None:
            return None
        try:
            return [str(v) for v in loads_json(text, "labels", "re-export")]
        except (UserInputError, TypeError):
            return ["<unreadable labels metadata>"]

    def first_divergence(self, model, x, atol: float) -> dict | None:
        from .localize import first_divergence
        return first_divergence(self.path, model, x, atol, self.threads)

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
        if not self.spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
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


class OrtFormatRunner(OnnxRunner):
    """A ``.ort`` file: onnxruntime loads it like ONNX."""

    name = "ort-format"
    kinds = ("ort",)

    def first_divergence(self, model, x, atol: float) -> dict | None:
        return None   # a .ort file's graph is not ONNX: its ONNX source is localised instead
