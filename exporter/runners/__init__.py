"""Runners: one small class per backend, one contract, one registry.

A runner loads an artifact and maps named inputs to named outputs, all NumPy
arrays: ``infer({"input": x}) -> {"logits": y}``. Each runner class declares the
artifact *kinds* it loads (``"onnx"``, ``"ort"``, ``"mlpackage"``; a format row
in :mod:`exporter.formats` names its kind) and, per instance, why it cannot run
here (:meth:`Runner.unavailable_reason`). The check and the benchmark pick
runners from this registry and from nothing else, so a new backend is one
class with ``@register_runner``. Use runners as context managers.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from ..context import INPUT_NAME


class RunnerUnavailable(RuntimeError):
    """This runner cannot run on this machine; the message says why."""


class UnsupportedOp(RuntimeError):
    """The artifact uses an op this runner does not implement."""


class Runner(ABC):
    name: str = "runner"
    #: artifact kinds this runner loads (see the ``kind`` column of the format table)
    kinds: tuple[str, ...] = ()
    #: the check runs artifacts through it
    verifies: bool = True
    #: ``bench`` may time it (an interpreter that exists only to verify says False)
    timeable: bool = True
    #: one instance per execution provider (``bench --providers``); others ignore the provider
    per_provider: bool = False
    #: batch size the artifact was built for, or None when any batch works
    fixed_batch: int | None = None
    #: largest batch to hand over at once (memory), or None for no limit
    max_batch: int | None = None
    #: after ``load``: input and output names, and the input's shape (ints, or str for a free dim)
    input_names: list[str] = []
    output_names: list[str] = []
    input_shape: tuple = ()
    #: the bundle's input spec, set by the check: a runner that must turn the check's float inputs into
    #: what an app hands the artifact (pixels) uses it, never the artifact's own metadata
    input_spec = None

    def metadata(self) -> dict[str, str] | None:
        """After ``load``: the key/value metadata the artifact carries for apps (None: the format has none)."""
        return None

    def __init__(self, path: str | Path, *, provider: str = "cpu", threads: int | None = None):
        self.path = Path(path)
        self.provider = provider
        self.threads = threads

    def unavailable_reason(self) -> str | None:
        """None when this runner can run here, else the reason it cannot."""
        return None

    def label(self) -> str:
        """The name reports show: the runner, and its provider where it has several."""
        return f"{self.name}-{self.provider}" if self.per_provider else self.name

    def load(self) -> "Runner":
        return self

    @abstractmethod
    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ...

    def close(self) -> None:
        pass

    def __enter__(self) -> "Runner":
        return self.load()

    def __exit__(self, *exc) -> None:
        self.close()


_RUNNERS: list[type[Runner]] = []


def register_runner(cls: type[Runner]) -> type[Runner]:
    """Class decorator: make ``cls`` available to the check and the benchmark."""
    if any(r.name == cls.name for r in _RUNNERS):
        raise ValueError(f"a runner named {cls.name!r} is registered twice")
    _RUNNERS.append(cls)
    return cls


def unregister_runner(cls: type[Runner]) -> None:
    _RUNNERS.remove(cls)


def _ensure_loaded() -> None:
    # Importing the modules registers their runners; they import their backends lazily.
    from . import executorch_runner, mil, onnx_runner, torch_program  # noqa: F401


def runners_for(kind: str, *, purpose: str = "verify") -> list[type[Runner]]:
    """Registered runner classes for an artifact kind, for ``"verify"`` (check) or ``"time"`` (bench)."""
    _ensure_loaded()
    attr = "verifies" if purpose == "verify" else "timeable"
    return [r for r in _RUNNERS if kind in r.kinds and getattr(r, attr)]


def infer_batched(runner: Runner, x: np.ndarray, input_name: str = INPUT_NAME) -> dict[str, np.ndarray]:
    """Run ``x`` through ``runner`` in chunks of its fixed batch (the last chunk padded)."""
    b = runner.fixed_batch
    if b is None and runner.max_batch is not None and len(x) > runner.max_batch:
        b = runner.max_batch
    if b is None or b == len(x):
        return runner.infer({input_name: x})
    chunks: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(x), b):
        part = x[i:i + b]
        n = len(part)
        if n < b:
            part = np.concatenate([part, np.repeat(part[-1:], b - n, axis=0)])
        for k, v in runner.infer({input_name: part}).items():
            chunks.setdefault(k, []).append(v[:n])
    return {k: np.concatenate(v) for k, v in chunks.items()}
