"""A runner's run of a new file, made in a stage worker and replayed to the check.

A stage worker that has just written a file runs it through every host runner of its kind on the
check's inputs (:mod:`exporter.export.workers`); a :class:`Replay` carries back what the loaded
artifact declared (names, shape, labels, metadata), its outputs, or why it could not run. The check
holds a replay to the same rules as a runner it loaded itself; a replay answers only for the file
hash and the inputs it ran on (:func:`array_digest`), so a changed file or other inputs run afresh.
"""
from __future__ import annotations

import hashlib
import time
import traceback
from pathlib import Path

import numpy as np

from ..runners import Runner, RunnerUnavailable, UnsupportedOp


def array_digest(x: np.ndarray) -> str:
    """One input array, as a hash (its shape, float32 dtype and bytes)."""
    x = np.ascontiguousarray(x, np.float32)
    return hashlib.sha256(repr((x.shape, str(x.dtype))).encode() + x.tobytes()).hexdigest()


_ERRORS = {"unavailable": RunnerUnavailable, "unsupported": UnsupportedOp}


class Replay(Runner):
    """What one runner saw of one file on one set of inputs, in a worker, replayed to the check."""

    def __init__(self, cls: type[Runner], path: Path, sha256: str | None):
        super().__init__(path, spinning=False)
        self.cls = cls
        self.name = cls.name
        self.kinds = cls.kinds
        self.metadata_keys = cls.metadata_keys
        self.sha256 = sha256
        self.runner_label = cls.name
        self.unavailable: str | None = None
        self.error: tuple[str, str, str] | None = None     # (kind, type name, message) raised by load or run
        self.x_digest = ""
        self.outputs: dict[str, np.ndarray] = {}
        self.replayed_seconds = 0.0
        self.found_labels: list[str] | None = None
        self.found_metadata: dict[str, str] | None = None
        self.declared: str | None = None
        self.declared_for: list[int] = []

    @classmethod
    def recorded(cls, runner_cls: type[Runner], path: Path, sha256: str | None, x: np.ndarray, spec,
                 export_shape: list[int], threads: int) -> "Replay":
        """Run ``runner_cls`` on ``path`` over ``x`` (here, in a stage worker) and keep what it saw."""
        from ..runners import infer_batched
        rep = cls(runner_cls, path, sha256)
        runner = runner_cls(path, threads=threads, spinning=False)
        runner.input_spec = spec
        rep.runner_label = runner.label()
        rep.unavailable = runner.unavailable_reason()
        if rep.unavailable:
            return rep
        rep.x_digest = array_digest(x)
        t0 = time.perf_counter()
        try:
            with runner:
                rep.input_names, rep.output_names = list(runner.input_names), list(runner.output_names)
                rep.input_shape = tuple(runner.input_shape or ())
                rep.found_labels = runner.labels()
                rep.found_metadata = runner.metadata()
                rep.declared_for = list(export_shape)
                rep.declared = runner.declared_problem(list(export_shape))
                rep.outputs = {k: np.asarray(v) for k, v in infer_batched(runner, x).items()}
        except (RunnerUnavailable, UnsupportedOp) as e:
            rep.error = ("unavailable" if isinstance(e, RunnerUnavailable) else "unsupported", type(e).__name__, str(e))
        except Exception as e:  # noqa: BLE001 - replayed as the same failure the check would have recorded
            rep.error = ("other", type(e).__name__, str(e) or "".join(traceback.format_exception_only(e)).strip())
        rep.replayed_seconds = time.perf_counter() - t0
        return rep

    def answers(self, sha256: str | None, x: np.ndarray) -> bool:
        """Whether this replay is the run of that file on exactly these inputs."""
        return self.unavailable is None and sha256 == self.sha256 and self.x_digest == array_digest(x)

    def label(self) -> str:
        return self.runner_label

    def unavailable_reason(self) -> str | None:
        return self.unavailable

    def load(self) -> "Replay":
        if self.error is not None:
            kind, name, message = self.error
            error = _ERRORS.get(kind) or type(name, (RuntimeError,), {})
            raise error(message)
        return self

    def labels(self) -> list[str] | None:
        return self.found_labels

    def metadata(self) -> dict[str, str] | None:
        return self.found_metadata

    def declared_problem(self, input_shape: list[int]) -> str | None:
        if list(input_shape) != self.declared_for:
            raise RuntimeError("replayed for another input shape")
        return self.declared

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        (x,) = inputs.values()
        if array_digest(x) != self.x_digest:
            raise RuntimeError("replayed for other inputs")
        return self.outputs

    def first_divergence(self, model, x, atol: float) -> dict | None:
        with self.cls(self.path, threads=1, spinning=False) as runner:
            return runner.first_divergence(model, x, atol)
