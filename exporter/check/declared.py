"""What an artifact tells an app, held to the bundle's manifest and the model.

The contract names (``input``, ``logits``) and labels, the declared input shape, the metadata
apps normalise from (input spec, normalization, arch, checkpoint), the opset a file declares,
and whatever else its runner reads from it (:meth:`Runner.declared_problem`). Each miss is one
line naming both sides; the check fails the artifact on it.
"""
from __future__ import annotations

import json

import numpy as np

from ...kernel.errors import UserInputError
from ...kernel.safe_io import loads_json
from .files import BundleFile
from ...kernel.contract import INPUT_NAME, OUTPUT_NAME
from ..runners import Runner

def contract_problem(runner: Runner, labels: list[str]) -> str | None:
    """Names and labels the app relies on, as the loaded artifact declares them."""
    if runner.input_names != [INPUT_NAME]:
        return f"input names {runner.input_names} differ from the contract ['{INPUT_NAME}']"
    if OUTPUT_NAME not in runner.output_names:
        return f"output names {runner.output_names} lack the contract's '{OUTPUT_NAME}'"
    found = runner.labels()
    if found is not None and list(found) != list(labels):
        diff = next(i for i, (a, b) in enumerate(zip(found + [None] * len(labels), labels)) if a != b)
        return (f"labels differ from the manifest's at index {diff} "
                f"({found[diff] if diff < len(found) else 'missing'!r} vs {labels[diff]!r})")
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
        if "input_size" in runner.metadata_keys:
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
        if target.fmt is not None and "opset" in target.fmt.options:   # the format the --opset option set
            recorded.append(manifest.export.options.get("opset"))
        for value in recorded:
            if value is not None and target.opset != value:
                return f"opset {target.opset} differs from the {value} the export recorded"
    return runner.declared_problem(shape)
