"""What the check verifies, decided by a bundle's files and the format table — never by its manifest.

The manifest is written by whoever hands over a bundle, so it may only *add* checks: every model
file in the bundle is verified whether the manifest lists it or not; each is judged at the
precision its format row allows and its own content shows (the stricter wins); every format the
export recorded must have its file; a row that names another format's file fails.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .records import CheckRecord, Status

MODEL_SUFFIXES = (".onnx", ".ort", ".pte", ".pt2", ".mlpackage", ".mlmodel", ".tflite", ".mlmodelc")
#: how strict each precision's rule is: a file is never judged more loosely than its table row allows
STRICTNESS = {"int8": 0, "fp16": 1, "fp32": 2}


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


def bundle_files(bundle: Path, manifest) -> tuple[list[BundleFile], list[CheckRecord]]:
    """What the check verifies, decided by the files and the format table, never by the manifest:
    every model file in the bundle (listed or not), each judged at the precision its format row
    allows and its content shows (the stricter wins); plus a failed record for every format the
    export recorded whose file is missing, and for every row that names another format's file.
    A manifest can add checks this way, never remove or loosen one."""
    from .formats import FORMATS
    from .manifest import BUILD_MARKER, MANIFEST
    by_file = {f.filename: f for f in FORMATS.values()}
    present = sorted(p.name for p in Path(bundle).iterdir() if p.name not in (MANIFEST, BUILD_MARKER))
    rows = {a.path: a for a in manifest.artifacts if a.path}
    targets, problems = [], []
    for name in present:
        fmt = by_file.get(name)
        if fmt is None and not name.endswith(MODEL_SUFFIXES):
            continue   # side files (ORT's operator config, bench.json, the report)
        target = BundleFile(name=name, fmt=fmt, record=rows.get(name))
        if fmt is not None:
            content, target.opset = file_facts(fmt.kind, Path(bundle) / name)
            target.precision, target.problem = judged_precision(fmt, content, name)
        targets.append(target)
    required = set(manifest.export.formats) | {a.format for a in manifest.artifacts if a.ok}
    for name in sorted(required):
        fmt = FORMATS.get(name)
        if fmt is not None and fmt.filename not in present:
            problems.append(CheckRecord(artifact=name, runner="-", status=Status.FAILED, precision=fmt.precision,
                                        reason=f"the export recorded {name}, but its file {fmt.filename} is missing"))
    for a in manifest.artifacts:
        fmt = FORMATS.get(a.format)
        if a.path and fmt is not None and a.path != fmt.filename:
            problems.append(CheckRecord(artifact=a.format, runner="-", status=Status.FAILED, precision=fmt.precision,
                                        reason=f"the manifest's {a.format} row names {a.path}, but {a.format}'s file "
                                               f"is {fmt.filename}: the row does not describe that file"))
    return targets, problems


def judged_precision(fmt, content: str | None, name: str) -> tuple[str, str | None]:
    """The precision a file is judged at (its format row's, or a stricter one its content shows), and
    a problem when its content is looser than the row allows (fp16 tensors in the fp32 ONNX file)."""
    from .context import COREML_PRECISIONS
    allowed = set(COREML_PRECISIONS) if fmt.precision_option else {fmt.precision}
    strictest = max(allowed, key=STRICTNESS.get)
    if content is None:
        return strictest, None    # unreadable here: the strictest rule its row allows
    if content in allowed or STRICTNESS[content] > STRICTNESS[strictest]:
        return content, None
    return fmt.precision, f"{name} holds {content} arithmetic, but the {fmt.name} format is {'/'.join(sorted(allowed))}"


_QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
                  "MatMulInteger", "DynamicQuantizeLinear", "QLinearAdd"}


def file_facts(kind: str, path: Path) -> tuple[str | None, int | None]:
    """What the file itself says: its arithmetic (int8 where it quantises, fp16 where it holds fp16
    tensors, else fp32) and, for ONNX, its opset; None where it cannot be read here (its runner then
    reports that)."""
    if path.is_symlink() or not (path.is_file() or path.is_dir()):
        return None, None
    if kind == "onnx":
        import onnx
        try:
            model = onnx.load(path, load_external_data=False)
        except Exception:  # noqa: BLE001 - an unreadable file fails when its runner loads it
            return None, None
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        if any(n.op_type in _QUANTIZED_OPS for n in model.graph.node):
            return "int8", opset
        fp16 = onnx.TensorProto.FLOAT16
        if any(t.data_type == fp16 for t in model.graph.initializer) or any(
                v.type.tensor_type.elem_type == fp16 for v in [*model.graph.input, *model.graph.output]) or any(
                n.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in n.attribute)
                for n in model.graph.node):
            return "fp16", opset
        return "fp32", opset
    if kind == "mlpackage":
        return _mlpackage_precision(path), None
    return None, None


def _mlpackage_precision(path: Path) -> str | None:
    """fp16 when any op of the ML Program computes in fp16, else fp32 (the spec, not its metadata)."""
    from importlib.util import find_spec
    if find_spec("coremltools") is None:
        return None
    from .runners.mil import load_spec
    try:
        spec = load_spec(path)
    except Exception:  # noqa: BLE001 - an unreadable package fails when its runner loads it
        return None
    fp16 = 10   # MILSpec.DataType.FLOAT16
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                if any(o.type.tensorType.dataType == fp16 for o in op.outputs):
                    return "fp16"
    return "fp32"
