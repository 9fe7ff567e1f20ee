"""What an artifact tells an app, held to the bundle's manifest and the model.

The contract names (``input``, ``logits``) and labels, the declared input shape, the metadata
apps normalise from (input spec, normalization, arch, checkpoint), the ONNX opset, and CoreML's
model description. Each miss is one line naming both sides; the check fails the artifact on it.
"""
from __future__ import annotations

import json

import numpy as np

from ..models.errors import UserInputError
from ..models.safe_io import loads_json
from .bundle_files import BundleFile
from .context import INPUT_NAME, OUTPUT_NAME
from .runners import Runner

def contract_problem(runner: Runner, labels: list[str]) -> str | None:
    """Names and labels the app relies on, as the loaded artifact declares them."""
    if runner.input_names != [INPUT_NAME]:
        return f"input names {runner.input_names} differ from the contract ['{INPUT_NAME}']"
    if OUTPUT_NAME not in runner.output_names:
        return f"output names {runner.output_names} lack the contract's '{OUTPUT_NAME}'"
    found = artifact_labels(runner)
    if found is not None and list(found) != list(labels):
        diff = next(i for i, (a, b) in enumerate(zip(found + [None] * len(labels), labels)) if a != b)
        return (f"labels differ from the manifest's at index {diff} "
                f"({found[diff] if diff < len(found) else 'missing'!r} vs {labels[diff]!r})")
    return None


def artifact_labels(runner: Runner) -> list[str] | None:
    """The class labels an artifact carries: the CoreML classifier's, or the ONNX metadata's."""
    program = getattr(runner, "program", None)
    if program is not None and program.classes is not None:
        return list(program.classes)
    session = getattr(runner, "session", None)
    if session is not None:
        text = session.get_modelmeta().custom_metadata_map.get("labels")
        if text is not None:
            try:
                return [str(v) for v in loads_json(text, "labels", "re-export")]
            except (UserInputError, TypeError):
                return ["<unreadable labels metadata>"]
    return None


def declared_problem(runner: Runner, manifest, target: BundleFile) -> str | None:
    """What the loaded artifact tells an app, held to the manifest and the model: its input shape,
    the metadata apps normalise from (input spec, normalization, arch, checkpoint), its opset, and
    for CoreML the model description (input shape or image size, label and probability types)."""
    spec = manifest.model.input_spec
    shape = list(manifest.export.input_shape)
    got = list(runner.input_shape or ())
    if got and (len(got) != 4 or [int(v) if isinstance(v, (int, np.integer)) else v for v in got[1:]] != shape[1:]
                or (not manifest.export.dynamic_batch and isinstance(got[0], (int, np.integer)) and got[0] != shape[0])):
        return f"input shape {got} differs from the export's {shape}"
    meta = runner.metadata()
    if meta is not None:
        want = {"arch": manifest.model.arch, "normalization": spec.normalization,
                "checkpoint_sha256": manifest.model.checkpoint_sha256 or "untrained"}
        if target.fmt is not None and target.fmt.kind in ("onnx", "ort"):
            want["input_size"] = str(spec.size)
        for key, value in want.items():
            if meta.get(key) != value:
                return f"metadata '{key}' is {meta.get(key)!r}, the manifest's is {value!r}"
        try:
            declared = loads_json(meta.get("input_spec", ""), "its 'input_spec' metadata", "re-export")
        except UserInputError as e:
            return str(e)
        expected = json.loads(json.dumps(spec.to_dict()))
        if declared != expected:
            keys = sorted(set(expected) | set(declared if isinstance(declared, dict) else {}))
            key = next((k for k in keys if not isinstance(declared, dict) or declared.get(k) != expected.get(k)), "?")
            return (f"metadata input_spec differs from the manifest's at '{key}' "
                    f"({declared.get(key) if isinstance(declared, dict) else declared!r} vs {expected.get(key)!r}): "
                    "an app that normalises from it gets other inputs")
        if meta.get("precision") not in (None, target.precision):
            return f"metadata 'precision' is {meta['precision']!r}, but the file computes in {target.precision}"
    if target.opset is not None:
        recorded = [target.record.opset if target.record is not None else None]
        if target.fmt is not None and target.fmt.name == "onnx":
            recorded.append(manifest.export.opset)
        for value in recorded:
            if value is not None and target.opset != value:
                return f"opset {target.opset} differs from the {value} the export recorded"
    program = getattr(runner, "program", None)
    if program is not None and getattr(program, "spec", None) is not None:
        return _coreml_description_problem(program.spec.description, shape)
    return None


def _coreml_description_problem(desc, shape: list[int]) -> str | None:
    """The CoreML description an app builds its inputs from and reads its outputs by."""
    kind = desc.input[0].type.WhichOneof("Type")
    if kind == "imageType":
        image = desc.input[0].type.imageType
        if [image.height, image.width] != shape[2:]:
            return f"the image input is {image.width}x{image.height}, the export's {shape[3]}x{shape[2]}"
    elif kind == "multiArrayType":
        if list(desc.input[0].type.multiArrayType.shape) != shape:
            return f"the input is declared {list(desc.input[0].type.multiArrayType.shape)}, the export's {shape}"
    else:
        return f"the input is a {kind}, not an image or a multi-array"
    for out in desc.output:
        t = out.type.WhichOneof("Type")
        if out.name == desc.predictedFeatureName and t != "stringType":
            return f"the predicted label '{out.name}' is a {t}, not the string labels apps read"
        if out.name == desc.predictedProbabilitiesName and t == "dictionaryType" and \
                out.type.dictionaryType.WhichOneof("KeyType") != "stringKeyType":
            return f"the probabilities '{out.name}' are keyed by {out.type.dictionaryType.WhichOneof('KeyType')}, not labels"
    return None
