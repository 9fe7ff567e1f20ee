"""The bundle's manifest as a type: the model, the export, the stage records, the checks, and the one
place that decides ``passed`` (:attr:`Manifest.verdict`). Reading and writing it is
:mod:`.manifest_io`; the bundle's files on disk, :mod:`.on_disk`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...models.registry import InputSpec
from ...models.source import ModelSource, ZooSource
from ..kit.records import ArtifactRecord, CheckReport, Status

SCHEMA_VERSION = 4
MANIFEST = "manifest.json"
#: the JSON Schema of what this version writes (package data beside this module)
SCHEMA_FILE = "manifest.schema.json"
MAX_MANIFEST_BYTES = 16 << 20
MAX_ARTIFACT_BYTES = 2 << 30            # ONNX's own protobuf limit; nothing larger is loaded
#: a file every build folder of ours holds until the rename (see :mod:`exporter.bundle.claim`)
BUILD_MARKER = ".bsconv-export-building"
#: what bench and report write into a bundle (recorded in its ``files``, so ``--force`` replaces them)
TOOL_FILES = ("bench.json", "report.md", "report.html", "report_latency.png")


@dataclass
class ModelInfo:
    arch: str
    num_classes: int
    params: int
    macs: int
    input_spec: InputSpec
    checkpoint: str | None
    checkpoint_sha256: str | None
    trained: bool
    source: ModelSource | None = None     # None: a zoo model (manifests before the source was recorded)

    def __post_init__(self) -> None:
        if self.source is None:
            self.source = ZooSource(arch=self.arch)

    @property
    def labels(self) -> list[str]:
        return self.input_spec.class_labels()

    def to_dict(self) -> dict:
        return {"arch": self.arch, "num_classes": self.num_classes, "params": self.params, "macs": self.macs,
                "input_spec": self.input_spec.to_dict(), "labels": self.labels, "checkpoint": self.checkpoint,
                "checkpoint_sha256": self.checkpoint_sha256, "trained": self.trained,
                "source": self.source.to_dict()}


@dataclass
class ExportInfo:
    input_shape: list[int]
    dynamic_batch: bool
    formats: list[str]
    #: every declared export option's value by name (see exporter.options); schema 4 on
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"input_shape": self.input_shape, "dynamic_batch": self.dynamic_batch, "formats": self.formats,
                "options": dict(self.options)}


@dataclass
class Manifest:
    model: ModelInfo
    export: ExportInfo
    artifacts: list[ArtifactRecord]
    tools: dict[str, str]
    command: str
    check: CheckReport | None = None                 # the export's own check, default rules
    user_checks: list[CheckReport] = field(default_factory=list)  # re-checks with user options
    #: every top-level entry the tool wrote (but the manifest): name -> {"sha256", "bytes"};
    #: None for a bundle of schema 1 or 2, which did not record them
    files: dict[str, dict] | None = None
    schema_version: int = SCHEMA_VERSION
    #: what the file said its verdict was (a claim: ``verdict`` is derived from the rows, and a client
    #: runs a bundle only when both say passed); never written, the writer derives it again
    claimed_verdict: str | None = field(default=None, compare=False)

    @property
    def verdict(self) -> str:
        """``passed`` only when every stage succeeded and the export's own check verified the
        bundle; ``failed`` when a stage or that check failed; ``unverified`` when nothing checked it."""
        if any(a.status is Status.FAILED for a in self.artifacts):
            return "failed"
        if self.check is not None and not self.check.passed:
            return "failed"
        if self.check is None or not self.artifacts:
            return "unverified"
        return "passed"

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"

    def record_check(self, report: CheckReport) -> None:
        """The export's own rules replace its check; a re-check with user options is kept beside it."""
        if report.user_options:
            self.user_checks.append(report)
        else:
            self.check = report

    def to_dict(self) -> dict:
        return {"schema_version": self.schema_version, "model": self.model.to_dict(),
                "export": self.export.to_dict(), "artifacts": [a.to_dict() for a in self.artifacts],
                "verdict": self.verdict, "passed": self.passed, "tools": self.tools, "command": self.command,
                "check": self.check.to_dict() if self.check else None,
                "user_checks": [c.to_dict() for c in self.user_checks], "files": self.files}


# --- reading: every field checked -------------------------------------------------------------
