"""LiteRT runners: a ``.tflite`` on the LiteRT interpreter (ai-edge-litert), with XNNPACK — what an
Android app gets by default — and with the built-in kernels alone.

A file with integer inputs (``tflite-int8 --tflite-int8-io int8``) is fed the way an app feeds it:
the float input quantised with the input tensor's own scale and zero point (round half to even,
clamped to the type's range), and integer outputs dequantised with theirs, so the check compares
logits with logits."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...kit import Runner, RunnerUnavailable, pixel_normalization
from .tflite_file import OUR_METADATA, TFLITE_METADATA, metadata_entries, packed_labels, read_model_metadata

MAX_TFLITE_BYTES = 2 << 30
#: what the LiteRT interpreter writes to stderr when it starts XNNPACK
DELEGATE_NOISE = ("INFO: Created TensorFlow Lite XNNPACK delegate",)


class LiteRtRunner(Runner):
    """The LiteRT interpreter with its default delegate, XNNPACK."""

    name = "litert-xnnpack"
    kinds = ("tflite",)
    metadata_keys = ("input_size",)
    resolver = "AUTO"

    def __init__(self, path: str | Path, provider: str = "cpu", *, threads: int | None = None,
                 spinning: bool = True):
        super().__init__(path, provider=provider, threads=threads, spinning=spinning)
        self.interpreter = None
        self._entries: dict[str, bytes] = {}

    def unavailable_reason(self) -> str | None:
        from importlib.util import find_spec
        return None if find_spec("ai_edge_litert") else "ai-edge-litert (the LiteRT runtime) is not installed"

    def load(self) -> "LiteRtRunner":
        reason = self.unavailable_reason()
        if reason:
            raise RunnerUnavailable(reason)
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        from ...kit import read_regular
        data = read_regular(self.path, "the .tflite", max_bytes=MAX_TFLITE_BYTES)
        self._entries = metadata_entries(data)
        from ...kit import usable_cores
        from ...kit import quiet_native_stderr
        # LiteRT's own default is one thread; onnxruntime's is every physical core. An app chooses
        # its count; unless told, take the usable cores, as onnxruntime does, so the two compare.
        threads = self.threads or usable_cores()
        with quiet_native_stderr(DELEGATE_NOISE):   # the interpreter logs its delegate's creation on stderr
            self.interpreter = Interpreter(model_content=data, num_threads=threads,
                                           experimental_op_resolver_type=getattr(OpResolverType, self.resolver))
            self.interpreter.allocate_tensors()
        ins, outs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        self.input_names = [d["name"] for d in ins]
        self.output_names = [d["name"] for d in outs]
        self._in, self._out = ins[0]["index"], [d["index"] for d in outs]
        self._in_detail, self._out_details = ins[0], outs
        self.input_shape = tuple(int(v) for v in ins[0]["shape"])
        self.fixed_batch = self.input_shape[0]
        return self

    def metadata(self) -> dict[str, str] | None:
        raw = self._entries.get(OUR_METADATA)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return {"input_spec": "<unreadable bsconv_export metadata>"}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else None

    def _model_metadata(self) -> dict | None:
        raw = self._entries.get(TFLITE_METADATA)
        return read_model_metadata(raw) if raw is not None else None

    def labels(self) -> list[str] | None:
        meta = self._model_metadata()
        if meta is None or not meta.get("label_file"):
            return None
        found = packed_labels(self.path, meta["label_file"])
        return found if found is not None else [f"<{meta['label_file']} is not packed in the file>"]

    def declared_problem(self, input_shape: list[int]) -> str | None:
        """What Android's tooling reads from TFLITE_METADATA: the tensors it names, the label file,
        and the normalisation that maps 8-bit pixels into the input's value range."""
        try:
            meta = self._model_metadata()
        except ValueError as e:
            return str(e)
        if meta is None:
            return "the file carries no TFLITE_METADATA (labels and normalisation for Android's tooling)"
        if meta["inputs"] != self.input_names or meta["outputs"] != self.output_names[:1]:
            return (f"TFLITE_METADATA describes tensors {meta['inputs']} -> {meta['outputs']}, the model has "
                    f"{self.input_names} -> {self.output_names}")
        if not meta.get("label_file"):
            return "TFLITE_METADATA names no label file for the output"
        spec = self.input_spec
        if spec is not None:
            want_mean, want_std = pixel_normalization(spec)
            got_mean, got_std = meta.get("mean", []), meta.get("std", [])
            if len(got_mean) != len(want_mean) or len(got_std) != len(want_std) or not (
                    np.allclose(got_mean, want_mean, rtol=1e-6, atol=1e-6)
                    and np.allclose(got_std, want_std, rtol=1e-6)):
                return (f"TFLITE_METADATA normalises pixels with mean {got_mean} and std {got_std}; the input "
                        f"spec needs mean {want_mean} and std {want_std}")
        return None

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.interpreter is None:
            self.load()
        (x,) = inputs.values()
        self.interpreter.set_tensor(self._in, to_tensor(np.asarray(x, dtype=np.float32), self._in_detail))
        self.interpreter.invoke()
        return {name: from_tensor(self.interpreter.get_tensor(d["index"]), d)
                for name, d in zip(self.output_names, self._out_details)}

    def settings(self) -> dict:
        from ...kit import usable_cores
        return {"num_threads": self.threads or f"{usable_cores()} (the usable cores; LiteRT's own default is 1)",
                "op_resolver": self.resolver}

    def close(self) -> None:
        self.interpreter = None


def to_tensor(x: np.ndarray, detail: dict) -> np.ndarray:
    """``x`` as the input tensor takes it: float as it is, integer quantised by the tensor's parameters."""
    dtype = detail["dtype"]
    if np.issubdtype(dtype, np.floating):
        return np.ascontiguousarray(x, dtype=dtype)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.rint(x / scale) + zero, info.min, info.max).astype(dtype)


def from_tensor(y: np.ndarray, detail: dict) -> np.ndarray:
    """An output tensor as floats: integer outputs dequantised by the tensor's parameters."""
    if np.issubdtype(y.dtype, np.floating):
        return y.copy()
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


class LiteRtBuiltinRunner(LiteRtRunner):
    """The LiteRT interpreter's built-in kernels, no delegate."""

    name = "litert-builtin"
    resolver = "BUILTIN_WITHOUT_DEFAULT_DELEGATES"
