"""The manifest read (bounded, type-checked, migrated) and written (strict JSON, held to its schema).

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
from pathlib import Path
from typing import Any

from ...kernel.errors import UserInputError
from ...kernel.limits import MAX_BATCH, MAX_CHANNELS, MAX_CLASSES, MAX_INPUT_SIZE
from ...kernel.safe_io import check_relative, loads_json, read_regular, write_bundle_file
from ...models.registry import InputSpec
from ...models.source import source_from_dict
from ..kit.records import ArtifactRecord, CheckRecord, CheckReport, Status
from .manifest import (MANIFEST, MAX_MANIFEST_BYTES, SCHEMA_FILE, SCHEMA_VERSION, ExportInfo, Manifest,
                       ModelInfo)


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
