"""What the check verifies, decided by a bundle's files and the format table — never by its manifest.

The manifest is written by whoever hands over a bundle, so it may only *add* checks: every model
file in the bundle is verified whether the manifest lists it or not; each is judged at the
precision its format row allows and its own content shows (the stricter wins); every format the
export recorded must have its file; a row that names another format's file fails; and a model file
the manifest has no ok row for fails too (apps find their model through the rows).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..kit.records import CheckRecord, Status

#: model files other tools write (and the table's own suffixes, see model_suffixes): a bundle file with one
#: of these suffixes is verified or reported unverified, never passed over as a side file
FOREIGN_MODEL_SUFFIXES = (".onnx", ".ort", ".pte", ".pt2", ".mlpackage", ".mlmodel", ".mlmodelc", ".tflite",
                          ".lite", ".engine", ".plan", ".xml", ".bin", ".param", ".torchscript", ".pt", ".pth",
                          ".safetensors", ".h5", ".keras", ".pb", ".savedmodel", ".nb")


@dataclass
class BundleFile:
    """A model file found in a bundle, what the format table says it is, and how it is judged."""
    name: str
    fmt: object | None            # the format row whose file name this is (None: not ours)
    record: object | None         # the manifest's row for it, when the manifest lists it
    precision: str = "fp32"
    problem: str | None = None    # a fact of the file that fails it before it runs
    opset: int | None = None      # an ONNX file's default-domain opset

    @property
    def label(self) -> str:
        return self.fmt.name if self.fmt is not None else self.name


def bundle_files(bundle: Path, manifest, known: dict[str, tuple[str, tuple]] | None = None
                 ) -> tuple[list[BundleFile], list[CheckRecord]]:
    """What the check verifies, decided by the files and the format table, never by the manifest:
    every model file in the bundle (listed or not), each judged at the precision its format row
    allows and its content shows (the stricter wins); plus a failed record for every format the
    export recorded whose file is missing, and for every row that names another format's file.
    A manifest can add checks this way, never remove or loosen one. ``known``: facts this tool read
    from a file earlier, by name → (the file's sha256 then, its facts), used only while the file
    still has that sha256 (the stage cache's, which spares importing a converter to read them)."""
    from ..formats import FORMATS, artifact_suffixes
    from ..bundle.manifest import BUILD_MARKER, MANIFEST
    by_file = {f.filename: f for f in FORMATS.values()}
    model_suffixes = tuple(dict.fromkeys((*artifact_suffixes(), *FOREIGN_MODEL_SUFFIXES)))
    present = sorted(p.name for p in Path(bundle).iterdir() if p.name not in (MANIFEST, BUILD_MARKER))
    rows = {a.path: a for a in manifest.artifacts if a.path}
    targets, problems = [], []
    for name in present:
        fmt = by_file.get(name)
        if fmt is None and name not in rows and not name.endswith(model_suffixes):
            continue   # side files (ORT's operator config, bench.json, the report)
        target = BundleFile(name=name, fmt=fmt, record=rows.get(name))
        if fmt is not None:
            content, target.opset = _facts(fmt, Path(bundle) / name, (known or {}).get(name))
            target.precision, target.problem = judged_precision(fmt, content, name)
        targets.append(target)
    ok = {a.format for a in manifest.artifacts if a.ok}
    failed = {a.format for a in manifest.artifacts if a.status is Status.FAILED} - ok
    for name in sorted(set(manifest.export.formats) | ok):
        fmt = FORMATS.get(name)
        if fmt is not None and fmt.filename not in present:
            why = (f"the {name} stage failed at export, so there is no {fmt.filename} to check" if name in failed
                   else f"the export recorded {name}, but its file {fmt.filename} is missing")
            problems.append(CheckRecord(artifact=name, runner="-", status=Status.FAILED, precision=fmt.precision,
                                        reason=why))
    listed = {a.path for a in manifest.artifacts if a.ok and a.path and a.format in FORMATS
              and FORMATS[a.format].filename == a.path}
    for t in targets:
        if t.fmt is not None and t.name not in listed:
            problems.append(CheckRecord(
                artifact=t.fmt.name, runner="-", status=Status.FAILED, precision=t.precision,
                reason=f"{t.name} is in the bundle, but the manifest has no ok {t.fmt.name} row for it: apps find "
                       "their model through the manifest's rows (docs/bundle.md) and would not load it; "
                       "re-export the bundle"))
    for a in manifest.artifacts:
        fmt = FORMATS.get(a.format)
        if a.path and fmt is not None and a.path != fmt.filename:
            problems.append(CheckRecord(artifact=a.format, runner="-", status=Status.FAILED, precision=fmt.precision,
                                        reason=f"the manifest's {a.format} row names {a.path}, but {a.format}'s file "
                                               f"is {fmt.filename}: the row does not describe that file"))
        missing = [f for f in (a.side_files if a.ok else []) if f not in present]
        if missing:
            problems.append(CheckRecord(artifact=a.format, runner="-", status=Status.FAILED,
                                        precision=fmt.precision if fmt is not None else "fp32",
                                        reason=f"the export wrote {', '.join(missing)} beside {a.path} for apps, "
                                               "but it is missing"))
    return targets, problems


def _facts(fmt, path: Path, known: tuple[str, tuple] | None) -> tuple[str | None, int | None]:
    if known is not None and not path.is_symlink() and path.exists():
        from ..kit.records import path_sha256
        sha, facts = known
        precision, opset = facts
        from ..formats import strictness
        if precision in (None, *strictness()) and (opset is None or type(opset) is int) and path_sha256(path) == sha:
            return precision, opset
    return file_facts(fmt, path)


def judged_precision(fmt, content: str | None, name: str) -> tuple[str, str | None]:
    """The precision a file is judged at (its format row's, or a stricter one its content shows), and
    a problem when its content is looser than the row allows (fp16 tensors in the fp32 ONNX file)."""
    from ..formats import strictness
    rank = strictness()    # the built-ins' and every plugin's declared precisions
    allowed = set(fmt.allowed_precisions)
    strictest = max(allowed, key=lambda p: rank.get(p, max(rank.values())))
    if content is None:
        return strictest, None    # unreadable here: the strictest rule its row allows
    if content in allowed or (content in rank and rank[content] > rank.get(strictest, 0)):
        return content, None
    return fmt.precision, f"{name} holds {content} arithmetic, but the {fmt.name} format is {'/'.join(sorted(allowed))}"


def file_facts(fmt, path: Path) -> tuple[str | None, int | None]:
    """What the file itself says (its row's ``facts`` reader): its arithmetic and, where the format
    has one, its opset; None where it cannot be read here (its runner then reports that)."""
    if path.is_symlink() or not (path.is_file() or path.is_dir()) or fmt.facts is None:
        return None, None
    return fmt.facts(path)
