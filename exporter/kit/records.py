"""Records that stages return and the manifest collects."""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any


class Status(str, Enum):
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"
    UNVERIFIED = "unverified"   # an artifact that no runner could check: fails the check


class _Record:
    """to_dict for a record dataclass with a ``status``: the enum written as its value."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.value
        return d


@dataclass
class ArtifactRecord(_Record):
    """One artifact (or attempted artifact) of a bundle. ``path`` is relative to the bundle."""

    format: str
    status: Status
    path: str | None = None
    bytes: int | None = None
    sha256: str | None = None
    seconds: float = 0.0
    nodes: int | None = None
    opset: int | None = None
    deployment_target: str | None = None
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    #: other files the stage wrote into the bundle for apps (ORT's operator config), by name
    side_files: list[str] = field(default_factory=list)
    #: taken from the stage cache, not made again: ``{"key": ..., "first_verified_at": ...}`` (stagecache.py)
    reused: dict[str, str] | None = None

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


@dataclass
class CheckRecord(_Record):
    """One artifact run by one runner (or the verdict that nothing could run it)."""

    artifact: str
    runner: str
    status: Status
    reason: str | None = None
    precision: str = "fp32"
    tolerance: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    accuracy: float | None = None
    reference_accuracy: float | None = None
    first_divergence: dict | None = None
    seconds: float = 0.0
    #: where the runner ran: ``"host"``, or an emulated ``"arm64:CPU"`` (exporter.arm64)
    target: str = "host"
    #: the verdict of an earlier run of this runner on the same file, inputs and versions (stagecache.py)
    reused: dict[str, str] | None = None


@dataclass
class CheckReport:
    """A check of a bundle: what it ran on, with which options, and every record."""

    inputs: str
    samples: int
    records: list[CheckRecord]
    options: dict[str, Any] = field(default_factory=dict)   # non-default user options, if any
    reference_error: dict[str, float] = field(default_factory=dict)  # PyTorch fp32 vs float64

    @property
    def passed(self) -> bool:
        """Something was verified, and nothing failed or went unverified."""
        return bool(self.records) and any(r.status is Status.OK for r in self.records) and not any(
            r.status in (Status.FAILED, Status.UNVERIFIED) for r in self.records)

    @property
    def user_options(self) -> bool:
        return bool(self.options)

    def to_dict(self) -> dict:
        return {"inputs": self.inputs, "samples": self.samples, "options": self.options,
                "reference_error": self.reference_error, "passed": self.passed,
                "results": [r.to_dict() for r in self.records]}


def path_bytes(path: Path) -> int:
    """Size of a file, or of every file under a directory (an .mlpackage)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def path_sha256(path: Path) -> str:
    """sha256 of a file; for a directory, of its files' relative paths and contents in sorted order."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(os.fsencode(f.relative_to(path).as_posix()) + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def finished(record: ArtifactRecord, root: Path) -> ArtifactRecord:
    """Fill size and hash of an OK record's artifact."""
    if record.ok and record.path:
        p = root / record.path
        record.bytes = path_bytes(p)
        record.sha256 = path_sha256(p)
    return record
