"""Known third-party noise, dropped by exact message while a stage runs; everything else still shows.

Each entry names the logger (or warning category) and the start of one message
that says nothing about the user's model:

- torchao, imported by ExecuTorch's XNNPACK backend (and by coremltools when it
  is installed), tries to load its CUDA and MX kernels on every import and logs
  each failure on a CPU build, and that Triton is missing;
- torch's pytree logs a deprecation on an Enum that torchao registers;
- the dynamo ONNX exporter logs that torchvision's detection ops are skipped
  when torchvision is not installed (we export no such op);
- ExecuTorch's lowering deep-copies tree specs, each copy warning that
  ``isinstance(treespec, LeafSpec)`` is deprecated (torch's own API change).

Filters are attached for the duration of the ``with`` block only: library
code installs no global filter.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterator

KNOWN_LOG_NOISE: dict[str, tuple[str, ...]] = {
    "torchao": ("Failed to load ", "Skipping import of cpp extensions"),
    "torchao.kernel.intmm": ("Warning: Detected no triton",),
    "torch.utils._pytree": ("%s is an Enum subclass",),
    "torch.onnx._internal.exporter._registration": ("torchvision is not installed",),
}
KNOWN_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
)


class _DropKnown(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.msg if isinstance(record.msg, str) else ""
        return not text.startswith(self.prefixes)


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    filters = [(logging.getLogger(name), _DropKnown(prefixes)) for name, prefixes in KNOWN_LOG_NOISE.items()]
    for logger, f in filters:
        logger.addFilter(f)
    try:
        with warnings.catch_warnings():
            for category, pattern in KNOWN_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern, category=category)
            yield
    finally:
        for logger, f in filters:
            logger.removeFilter(f)


#: lines ExecuTorch's native code writes to stderr when XNNPACK's thread pool starts
KNOWN_NATIVE_NOISE = ("[cpuinfo_utils.cpp:",)


@contextlib.contextmanager
def quiet_native_stderr(prefixes: tuple[str, ...] = KNOWN_NATIVE_NOISE) -> Iterator[None]:
    """Capture what native code writes to file descriptor 2 inside the block; pass on every
    line except those starting with ``prefixes``."""
    import os
    import sys
    import tempfile
    sys.stderr.flush()
    with tempfile.TemporaryFile() as capture:
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines(keepends=True)
                    if not line.startswith(prefixes)]
            if kept:
                sys.stderr.write("".join(kept))
