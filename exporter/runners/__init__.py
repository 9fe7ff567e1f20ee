"""Runners: one small class per backend, one contract.

A runner loads an artifact and maps named inputs to named outputs, all NumPy
arrays: ``infer({"input": x}) -> {"logits": y}``. It owns what it can read from
the loaded artifact: input and output names and the input shape, the labels
and metadata it tells an app, whatever else it declares to an app
(:meth:`Runner.declared_problem`), and why it cannot run here
(:meth:`Runner.unavailable_reason`). Runner classes belong to a format plugin,
which names the artifact *kinds* they load (see :mod:`exporter.formats`); the
check and the benchmark find them through the plugin registry only. Use
runners as context managers.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from ...kernel.contract import INPUT_NAME


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
    #: where it runs: ``"host"`` (this machine's runtime) or an emulated target (``"arm64"``: see exporter.arm64)
    target: str = "host"
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

    #: metadata keys this kind of artifact must carry beyond the ones every format with metadata carries
    metadata_keys: tuple[str, ...] = ()

    def __init__(self, path: str | Path, *, provider: str = "cpu", threads: int | None = None,
                 spinning: bool = True, cpu: str | None = None):
        """The one constructor every runner has (the check, bench and the stage workers call it so):
        ``provider`` an execution provider (runners with ``per_provider``), ``threads`` the runtime's
        pool, ``cpu`` the emulated CPU model for a runner whose ``target`` is not the host (host
        runners ignore it)."""
        self.path = Path(path)
        self.provider = provider
        #: threads for the runtime's pool (None: its default); ``spinning=False`` keeps an idle pool
        #: from busy-waiting between runs (the check and paired timings choose that)
        self.threads = threads
        self.spinning = spinning
        self.cpu = cpu

    @classmethod
    def prepare(cls, kit, progress) -> None:
        """For a runner whose ``target`` is emulated: add what it needs to that target's kit
        (``bsconv-export setup arm64`` calls it with the kit and a progress callback). Default: nothing."""
        return None

    def metadata(self) -> dict[str, str] | None:
        """After ``load``: the key/value metadata the artifact carries for apps (None: the format has none)."""
        return None

    def labels(self) -> list[str] | None:
        """After ``load``: the class labels the artifact carries for apps (None: it carries none)."""
        return None

    def declared_problem(self, input_shape: list[int]) -> str | None:
        """After ``load``: what else the artifact declares to an app (a model description) that
        disagrees with the export's input shape; None when nothing does."""
        return None

    def first_divergence(self, model, x, atol: float) -> dict | None:
        """Where this artifact's intermediate values first leave the original's, for one input
        (``check --localize``); None where the runner cannot look inside."""
        return None

    # --- the timing loop's hooks (bench, regress) ---

    @classmethod
    def rebatched(cls, path: Path, batch: int, workdir: Path) -> Path:
        """The artifact to load for ``batch``: ``path`` itself, or a copy in ``workdir`` made for that
        batch where the runtime cannot take another batch than the file's (default: ``path``)."""
        return path

    def settings(self) -> dict:
        """The runtime settings a timing ran under, recorded beside it."""
        return {"threads": self.threads if self.threads is not None else "runtime default",
                "spinning": self.spinning}

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
