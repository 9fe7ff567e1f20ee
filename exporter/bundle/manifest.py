"""The bundle's manifest: one type, one reader, one writer, one place that decides ``passed``.

A bundle may come from someone else, so everything read here is untrusted: the
file's size is bounded before it is parsed, every field is type-checked, sizes
that later stages allocate from are bounded, and every artifact path must stay
inside the bundle (relative, no ``..``, no symbolic links anywhere on the way or
inside an ``.mlpackage``). Files are written into a bundle by creating a
temporary file and renaming it over the name, so a planted symlink is replaced,
never followed.

Schema history: 1 stored ``passed`` as written by the exporter and let ``check``
overwrite it; 2 derives the verdict from the stage records and the export's own
check, and keeps re-checks with user options apart (``user_checks``); 3 records
``files``: the sha256 and size of every top-level entry of the bundle the tool
wrote, so what is ours is proven by content (``--force``) and a verdict is only
shown about the bytes it was given about. Versions 1 and 2 are migrated on read
(without ``files``: such a bundle cannot be replaced by ``--force``); a newer one is refused.
"""
from __future__ import annotations

import functools
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...kernel.errors import UserInputError
from ...kernel.limits import MAX_BATCH, MAX_CHANNELS, MAX_CLASSES, MAX_INPUT_SIZE  # noqa: F401 - re-exported
from ...models.registry import InputSpec
from ...kernel.safe_io import check_relative, loads_json, read_regular, write_bundle_file
from ...models.source import ModelSource, ZooSource, source_from_dict
from ..kit.records import ArtifactRecord, CheckRecord, CheckReport, Status

SCHEMA_VERSION = 4
MANIFEST = "manifest.json"
#: the JSON Schema of what this version writes (package data beside this module)
SCHEMA_FILE = "manifest.schema.json"
MAX_MANIFEST_BYTES = 16 << 20
MAX_ARTIFACT_BYTES = 2 << 30            # ONNX's own protobuf limit; nothing larger is loaded
#: a file every build folder of ours holds until the rename (see :mod:`exporter.outdir`)
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

class _Reader:
    def __init__(self, where: str):
        self.where = where

    def bad(self, what: str) -> UserInputError:
        return UserInputError(f"{self.where}: {what}; re-export the bundle with 'bsconv-export export'")

    def get(self, d: Any, key: str, types: type | tuple, *, optional: bool = False, default: Any = None) -> Any:
        if not isinstance(d, dict):
            raise self.bad(f"expected an object around '{key}'")
        if key not in d or d[key] is None:
            if optional:
                return default
            raise self.bad(f"'{key}' is missing")
        v = d[key]
        if isinstance(v, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise self.bad(f"'{key}' must be {_names(types)}, not a boolean")
        if not isinstance(v, types):
            raise self.bad(f"'{key}' must be {_names(types)}, not {type(v).__name__}")
        return v

    def bounded(self, d: Any, key: str, low: int, high: int) -> int:
        v = self.get(d, key, int)
        if not low <= v <= high:
            raise self.bad(f"'{key}' is {v}, outside {low}..{high}")
        return v


def _names(types: type | tuple) -> str:
    return " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))


def _spec(r: _Reader, d: Any) -> InputSpec:
    r.bounded(d, "size", 1, MAX_INPUT_SIZE)
    r.bounded(d, "num_classes", 1, MAX_CLASSES)
    r.bounded(d, "channels", 1, MAX_CHANNELS)
    vr = r.get(d, "value_range", list)
    if len(vr) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vr) or vr[0] >= vr[1]:
        raise r.bad("'value_range' must be two increasing numbers")
    labels = r.get(d, "labels", list, optional=True, default=[])
    if not all(isinstance(x, str) for x in labels):
        raise r.bad("'labels' must be strings")
    for key in ("mean", "std"):
        vals = r.get(d, key, list, optional=True, default=[])
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            raise r.bad(f"'{key}' must be numbers")
    try:
        return InputSpec.from_dict(d)
    except (TypeError, ValueError) as e:
        raise r.bad(f"'input_spec' is invalid ({e})") from None


def _artifact(r: _Reader, d: Any) -> ArtifactRecord:
    status = r.get(d, "status", str)
    try:
        st = Status(status)
    except ValueError:
        raise r.bad(f"artifact status {status!r} is unknown") from None
    path = r.get(d, "path", str, optional=True)
    if path is not None:
        check_relative(path, r.where)
    elif st is Status.OK:
        raise r.bad(f"artifact {d.get('format')!r} is ok but names no file ('path')")
    ints = {k: r.get(d, k, int, optional=True) for k in ("bytes", "nodes", "opset")}
    side_files = r.get(d, "side_files", list, optional=True, default=[])
    if len(side_files) > 64 or not all(isinstance(f, str) for f in side_files):
        raise r.bad("'side_files' must be a list of at most 64 file names")
    for f in side_files:
        check_relative(f, r.where)
    return ArtifactRecord(side_files=list(side_files), format=r.get(d, "format", str), status=st, path=path,
                          sha256=r.get(d, "sha256", str, optional=True),
                          seconds=float(r.get(d, "seconds", (int, float), optional=True, default=0.0)),
                          deployment_target=r.get(d, "deployment_target", str, optional=True),
                          error=r.get(d, "error", str, optional=True),
                          details=r.get(d, "details", dict, optional=True, default={}), reused=_reused(r, d), **ints)


def _check_report(r: _Reader, d: Any) -> CheckReport:
    records = []
    for rec in r.get(d, "results", list):
        try:
            st = Status(r.get(rec, "status", str))
        except ValueError:
            raise r.bad("a check result has an unknown status") from None
        metrics = r.get(rec, "metrics", dict, optional=True, default={})
        records.append(CheckRecord(
            artifact=r.get(rec, "artifact", str), runner=r.get(rec, "runner", str), status=st,
            reason=r.get(rec, "reason", str, optional=True), precision=r.get(rec, "precision", str, optional=True,
                                                                         default="fp32"),
            tolerance=r.get(rec, "tolerance", str, optional=True, default=""),
            metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
            accuracy=r.get(rec, "accuracy", (int, float), optional=True),
            reference_accuracy=r.get(rec, "reference_accuracy", (int, float), optional=True),
            first_divergence=r.get(rec, "first_divergence", dict, optional=True),
            seconds=float(r.get(rec, "seconds", (int, float), optional=True, default=0.0)),
            target=_target(r, rec), reused=_reused(r, rec)))
    return CheckReport(inputs=r.get(d, "inputs", str), samples=r.get(d, "samples", int), records=records,
                       options=r.get(d, "options", dict, optional=True, default={}),
                       reference_error={k: v for k, v in r.get(d, "reference_error", dict, optional=True,
                                                                default={}).items()
                                        if isinstance(v, (int, float)) and not isinstance(v, bool)})


def _reused(r: _Reader, d: Any) -> dict[str, str] | None:
    reused = r.get(d, "reused", dict, optional=True)
    if reused is None:
        return None
    key, when = r.get(reused, "key", str), r.get(reused, "first_verified_at", str)
    if not re.fullmatch(r"[0-9a-f]{64}", key) or len(when) > 64 or set(reused) != {"key", "first_verified_at"}:
        raise r.bad("'reused' must be a cache key (64 hex digits) and a time")
    return {"key": key, "first_verified_at": when}


def artifact_from_dict(d: Any, where: str) -> ArtifactRecord:
    """One artifact record read back with every field checked (a stage cache entry's)."""
    return _artifact(_Reader(where), d)


def check_records_from_list(d: Any, where: str) -> list[CheckRecord]:
    """Check records read back with every field checked (a stage cache entry's)."""
    r = _Reader(where)
    return _check_report(r, {"inputs": "", "samples": 0, "results": d}).records


def _target(r: _Reader, rec: Any) -> str:
    target = r.get(rec, "target", str, optional=True, default="host")
    if not re.fullmatch(r"host|arm64:[a-z0-9-]{1,40}", target):
        raise r.bad(f"a check result names target {target[:50]!r}; known: host, arm64:CPU")
    return target


def _files(r: _Reader, d: Any) -> dict[str, dict] | None:
    files = r.get(d, "files", dict, optional=True)
    if files is None:
        return None
    for name, entry in files.items():
        if not name or "/" in name or name in (".", "..", MANIFEST) or "\0" in name:
            raise r.bad(f"'files' names {name!r}, which is not an entry of the bundle")
        sha, size = (entry.get("sha256"), entry.get("bytes")) if isinstance(entry, dict) else (None, None)
        if not (isinstance(sha, str) and len(sha) == 64 and isinstance(size, int) and not isinstance(size, bool)
                and size >= 0):
            raise r.bad(f"'files' entry {name!r} needs a sha256 and a size in bytes")
    return {name: {"sha256": e["sha256"], "bytes": e["bytes"]} for name, e in files.items()}


MAX_OPTIONS = 256
MAX_OPTION_VALUES = 1024


def _option_value_ok(v: Any) -> bool:
    scalar = lambda x: x is None or isinstance(x, (str, int, float, bool))  # noqa: E731
    return scalar(v) or (isinstance(v, list) and len(v) <= MAX_OPTION_VALUES and all(scalar(x) for x in v))


def _options(r: _Reader, e: Any) -> dict[str, Any]:
    """Schema 4: the export options by name, each a JSON scalar or a list of them (what they mean is
    the declaring plugin's business; bounded here)."""
    options = r.get(e, "options", dict)
    if len(options) > MAX_OPTIONS or not all(isinstance(k, str) and len(k) <= 100 for k in options):
        raise r.bad("'options' must map at most 256 option names to values")
    bad = [k for k, v in options.items() if not _option_value_ok(v)]
    if bad:
        raise r.bad(f"option {bad[0]!r} must be a JSON scalar or a list of them")
    return dict(options)


def _options_before_4(r: _Reader, e: Any) -> dict[str, Any]:
    """Schemas 1-3 recorded four options as fields of ``export``: migrated to the options map."""
    return {"opset": r.get(e, "opset", int, optional=True),
            "coreml_precision": r.get(e, "coreml_precision", str, optional=True, default="fp32"),
            "coreml_input": r.get(e, "coreml_input", str, optional=True, default="tensor"),
            "simplify": r.get(e, "simplify", bool, optional=True, default=True)}


def manifest_from_dict(d: Any, where: str = MANIFEST) -> Manifest:
    r = _Reader(where)
    version = r.get(d, "schema_version", int)
    if version > SCHEMA_VERSION:
        raise UserInputError(f"{where}: schema_version {version} is newer than this bsconv-export reads "
                             f"({SCHEMA_VERSION}); upgrade bsconv-export")
    if version < 1:
        raise r.bad(f"schema_version {version} is unknown")
    m = r.get(d, "model", dict)
    e = r.get(d, "export", dict)
    shape = r.get(e, "input_shape", list)
    if len(shape) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape):
        raise r.bad("'input_shape' must be four positive integers")
    if shape[0] > MAX_BATCH or shape[1] > MAX_CHANNELS or max(shape[2:]) > MAX_INPUT_SIZE:
        raise r.bad(f"'input_shape' {shape} is beyond this tool's bounds")
    spec = _spec(r, r.get(m, "input_spec", dict))
    artifacts = [_artifact(r, a) for a in r.get(d, "artifacts", list)]
    formats = r.get(e, "formats", list, optional=True, default=None)
    if formats is not None and not all(isinstance(f, str) for f in formats):
        raise r.bad("'formats' must be a list of format names")
    check = r.get(d, "check", dict, optional=True)
    user_checks = [_check_report(r, c) for c in r.get(d, "user_checks", list, optional=True, default=[])]
    return Manifest(
        model=ModelInfo(arch=r.get(m, "arch", str), num_classes=r.bounded(m, "num_classes", 1, MAX_CLASSES),
                        params=r.get(m, "params", int), macs=r.get(m, "macs", int), input_spec=spec,
                        checkpoint=r.get(m, "checkpoint", str, optional=True),
                        checkpoint_sha256=r.get(m, "checkpoint_sha256", str, optional=True),
                        trained=r.get(m, "trained", bool, optional=True, default=False),
                        source=source_from_dict(r, r.get(m, "source", dict, optional=True), r.get(m, "arch", str))),
        export=ExportInfo(input_shape=shape, dynamic_batch=r.get(e, "dynamic_batch", bool),
                          # version 1 did not record the chosen formats: every built one was chosen
                          formats=formats if formats is not None else [a.format for a in artifacts],
                          options=_options(r, e) if version >= 4 else _options_before_4(r, e)),
        artifacts=artifacts, tools=r.get(d, "tools", dict, optional=True, default={}),
        command=r.get(d, "command", str, optional=True, default=""),
        check=_check_report(r, check) if check is not None else None, user_checks=user_checks,
        files=_files(r, d) if version >= 3 else None, schema_version=SCHEMA_VERSION)


def read_manifest(bundle: str | os.PathLike) -> Manifest:
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise UserInputError(f"{bundle} is not a bundle directory; create one with 'bsconv-export export'")
    path = bundle / MANIFEST
    if path.is_symlink() or not path.is_file():
        raise UserInputError(f"{bundle} is not a bundle: no {MANIFEST} (or it is a link); "
                             "create one with 'bsconv-export export'")
    data = read_regular(path, "the manifest", max_bytes=MAX_MANIFEST_BYTES, follow_links=False)
    raw = loads_json(data, str(path), "re-export the bundle")
    manifest = manifest_from_dict(raw, str(path))
    if isinstance(raw, dict):
        claimed = raw.get("verdict", None if "passed" not in raw else "passed" if raw.get("passed") is True
                          else "failed")
        manifest.claimed_verdict = claimed if isinstance(claimed, str) or claimed is None else repr(claimed)[:40]
    broken = schema_error(manifest)
    if broken:   # the reader never accepts what the writer would refuse: no command rewrites it invalid
        raise UserInputError(f"{path} breaks the bundle's schema at {broken}; re-export the bundle "
                             "(docs/bundle.md says what each field holds)")
    return manifest


def write_manifest(bundle: Path, manifest: Manifest) -> None:
    write_bundle_file(bundle, MANIFEST, manifest_json(manifest))


def manifest_json(manifest: Manifest) -> str:
    """The manifest as clients read it: strict JSON (a non-finite number becomes null), checked against
    the published schema (``manifest.schema.json``, docs/bundle.md) before a byte is written."""
    broken = schema_error(manifest)
    if broken:   # every manifest read was validated: the code and the published contract disagree, a bug
        raise RuntimeError(f"the manifest breaks manifest.schema.json at {broken}")
    return json.dumps(finite(manifest.to_dict()), indent=2, allow_nan=False) + "\n"


def schema_error(manifest: Manifest) -> str | None:
    """Where and how the manifest, as it would be written, breaks the published schema (None: it does not)."""
    doc = finite(manifest.to_dict())
    errors = sorted(_schema_validator().iter_errors(doc), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    where = "/".join(str(p) for p in errors[0].absolute_path) or "(top)"
    return f"{where}: {errors[0].message[:160]}"


def finite(obj: Any) -> Any:
    """``obj`` with every NaN and infinity replaced by None: JSON has no such numbers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


@functools.lru_cache(maxsize=1)
def _schema_validator():
    import jsonschema
    schema = json.loads((Path(__file__).parent / SCHEMA_FILE).read_text())
    return jsonschema.Draft202012Validator(schema)


# --- paths inside a bundle ---------------------------------------------------------------------

def inside(bundle: Path, rel: str, where: str = MANIFEST) -> Path:
    """``bundle/rel`` after checking that it stays inside the bundle: no component is a
    symbolic link, and a directory (an .mlpackage) holds no link and no item path that leaves."""
    parts = check_relative(rel, where).parts
    path = bundle
    for part in parts:
        path = path / part
        try:
            st = path.lstat()
        except FileNotFoundError:
            raise UserInputError(f"{where}: artifact {rel} is missing from the bundle") from None
        if stat.S_ISLNK(st.st_mode):
            raise UserInputError(f"{where}: artifact {rel} is (or passes through) a symbolic link; "
                                 "refusing to follow it out of the bundle")
    if stat.S_ISDIR(st.st_mode):
        _check_tree(path, rel, where)
    elif not stat.S_ISREG(st.st_mode):
        raise UserInputError(f"{where}: artifact {rel} is not a regular file (a pipe or device?); refusing to read it")
    elif st.st_size > MAX_ARTIFACT_BYTES:
        raise UserInputError(f"{where}: artifact {rel} is {path.stat().st_size >> 20} MiB, over the "
                             f"{MAX_ARTIFACT_BYTES >> 30} GiB this tool loads")
    return path


def _check_tree(root: Path, rel: str, where: str) -> None:
    total = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                raise UserInputError(f"{where}: {rel} holds a symbolic link ({p.relative_to(root)}); refusing it")
            if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                raise UserInputError(f"{where}: {rel} holds {p.relative_to(root)}, which is not a regular file; "
                                     "refusing it")
            if name in filenames:
                total += st.st_size
    if total > MAX_ARTIFACT_BYTES:
        raise UserInputError(f"{where}: artifact {rel} is over the {MAX_ARTIFACT_BYTES >> 30} GiB this tool loads")
    manifest = root / "Manifest.json"
    if manifest.is_file():  # an .mlpackage names its items by path: each must stay inside
        doc = loads_json(read_regular(manifest, f"{rel}/Manifest.json", max_bytes=MAX_MANIFEST_BYTES,
                                      follow_links=False), f"{where}: {rel}/Manifest.json", "re-export the bundle")
        entries = doc.get("itemInfoEntries", {}) if isinstance(doc, dict) else {}
        for entry in (entries.values() if isinstance(entries, dict) else []):
            item = entry.get("path") if isinstance(entry, dict) else None
            if not isinstance(item, str):
                raise UserInputError(f"{where}: {rel}/Manifest.json has an item without a path")
            check_relative(item, f"{rel}/Manifest.json")


# --- what the tool wrote, by content -----------------------------------------------------------

def entry_digest(path: Path) -> dict | None:
    """``{"sha256", "bytes"}`` of a bundle entry: a regular file, or a folder (an .mlpackage) that holds
    only folders and regular files; None for anything else (a link, a pipe, a folder holding one)."""
    from ..kit.records import path_bytes, path_sha256
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(st.st_mode):
        for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
            for name in dirnames + filenames:
                mode = os.lstat(os.path.join(dirpath, name)).st_mode
                if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                    return None
    elif not stat.S_ISREG(st.st_mode):
        return None
    return {"sha256": path_sha256(path), "bytes": path_bytes(path)}


def inventory(bundle: Path) -> dict[str, dict]:
    """The digest of every top-level entry of a bundle being written (all but the manifest)."""
    out = {}
    for p in sorted(bundle.iterdir()):
        if p.name in (MANIFEST, BUILD_MARKER):
            continue
        digest = entry_digest(p)
        if digest is None:
            raise RuntimeError(f"the export wrote {p.name}, which is neither a file nor a folder of files")
        out[p.name] = digest
    return out


def matches(path: Path, recorded: dict) -> bool:
    """``path`` holds exactly the bytes ``recorded`` (size compared first: no hashing of a stranger)."""
    from ..kit.records import path_bytes
    try:
        if path.is_symlink() or path_bytes(path) != recorded["bytes"]:
            return False
    except OSError:
        return False
    digest = entry_digest(path)
    return digest is not None and digest["sha256"] == recorded["sha256"]


def changed_since_export(bundle: Path, manifest: Manifest) -> list[str]:
    """The recorded files of ``bundle`` whose bytes differ from the manifest's record (or are gone),
    and the artifacts whose bytes differ from their row's sha256 (all a schema-1/2 bundle has)."""
    from ..kit.records import path_bytes
    digests: dict[str, dict | None] = {}   # each entry hashed once

    def digest(rel: str) -> dict | None:
        if rel not in digests:
            try:
                digests[rel] = entry_digest(bundle / rel)
            except OSError:
                digests[rel] = None
        return digests[rel]

    changed = []
    if manifest.files is not None:
        for name, rec in manifest.files.items():
            p = bundle / name
            try:   # the size first: a stranger's big file is never hashed
                same_size = not p.is_symlink() and path_bytes(p) == rec["bytes"]
            except OSError:
                same_size = False
            if not same_size or (digest(name) or {}).get("sha256") != rec["sha256"]:
                changed.append(name)
    for a in manifest.artifacts:
        if a.ok and a.path and a.path not in changed and (digest(a.path) or {}).get("sha256") != a.sha256:
            changed.append(a.path)
    return changed


def check_recordable(bundle: Path, name: str) -> Manifest:
    """Refuse, before any work, to write ``bundle/name`` over the bundle's manifest or an artifact, or over
    anything that is not, byte for byte, a file the manifest records (a user's file, a planted link).
    Returns the bundle's manifest."""
    manifest = read_manifest(bundle)
    if name == MANIFEST or any(a.path and a.path.split("/")[0] == name for a in manifest.artifacts):
        raise UserInputError(f"{bundle / name} is the bundle's own {'manifest' if name == MANIFEST else 'artifact'}; "
                             "write elsewhere with --out")
    existing = bundle / name
    if existing.exists() or existing.is_symlink():
        recorded = (manifest.files or {}).get(name)
        if recorded is None or not matches(existing, recorded):
            raise UserInputError(f"{existing} was not written by bsconv-export (or changed since), so it is not "
                                 "replaced; move it away, or write elsewhere with --out")
    return manifest


def record_bundle_file(bundle: Path, name: str, data: str | bytes) -> Path:
    """Write ``bundle/name`` and record its digest in the bundle's manifest, so a later ``--force``
    knows it as ours (bench.json, the report); refused as :func:`check_recordable` says.
    A bundle without ``files`` (schema 1 and 2) gets the file alone."""
    manifest = check_recordable(bundle, name)
    dest = write_bundle_file(bundle, name, data)
    if manifest.files is not None:
        manifest.files[name] = entry_digest(dest)
        write_manifest(bundle, manifest)
    return dest
