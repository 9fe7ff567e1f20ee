"""Runners: one small class per backend, one contract.

A runner loads an artifact (or holds a PyTorch model) and maps named inputs to
named outputs, all NumPy arrays: ``infer({"input": x}) -> {"logits": y}``.
Checks and benchmarks use runners and nothing else, so a new backend is one
class. Use them as context managers. A runner that cannot work here (no macOS
for CoreML, no CUDA for the CUDA provider) says why through ``unavailable()``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class RunnerUnavailable(RuntimeError):
    """This runner cannot run on this machine; the message says why."""


class UnsupportedOp(RuntimeError):
    """The artifact uses an op this runner does not implement."""


class Runner(ABC):
    name: str = "runner"
    #: batch size the artifact was built for, or None when any batch works
    fixed_batch: int | None = None
    #: largest batch to hand over at once (memory), or None for no limit
    max_batch: int | None = None

    @classmethod
    def unavailable(cls) -> str | None:
        """None when the runner can run here, else the reason it cannot."""
        return None

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


def infer_batched(runner: Runner, x: np.ndarray, input_name: str = "input") -> dict[str, np.ndarray]:
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
