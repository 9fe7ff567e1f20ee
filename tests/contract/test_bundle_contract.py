"""docs/bundle.md and exporter/bundle/manifest.schema.json are the contract apps read: the schema is live
(every manifest the tool writes is validated against it, so a field the code adds without the schema
fails the export), and the document names every field, metadata key and file the code writes."""
import json
import math
import re
from pathlib import Path

import jsonschema
import pytest

from bsconv_export.exporter.bundle import manifest as manifest_module
from bsconv_export.exporter.formats import FORMATS
from bsconv_export.exporter.formats.onnx.export import CONTRACT_KEYS
from bsconv_export.exporter.bundle.manifest import SCHEMA_FILE
from bsconv_export.exporter.bundle.manifest_io import finite, manifest_json, read_manifest

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "bundle.md").read_text()
SCHEMA = json.loads((ROOT / "exporter" / "bundle" / SCHEMA_FILE).read_text())


def _property_names(node, out: set) -> set:
    if isinstance(node, dict):
        out |= set(node.get("properties", {}))
        for v in node.values():
            _property_names(v, out)
    elif isinstance(node, list):
        for v in node:
            _property_names(v, out)
    return out


def test_the_schema_is_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_the_document_names_every_field_metadata_key_and_file():
    missing = [k for k in sorted(_property_names(SCHEMA, set())) if f"`{k}`" not in DOC]
    assert not missing, f"docs/bundle.md does not explain {missing}"
    assert not [k for k in CONTRACT_KEYS if f"`{k}`" not in DOC]
    assert not [f.filename for f in FORMATS.values() if f"`{f.filename}`" not in DOC]
    assert f"schema_version {manifest_module.SCHEMA_VERSION}" in DOC and \
        SCHEMA["properties"]["schema_version"]["const"] == manifest_module.SCHEMA_VERSION


def test_a_manifest_that_breaks_the_schema_is_never_written(shared_bundle, tmp_path):
    """The validation on write is live: a field the schema does not know, or a wrong type, stops it."""
    m = read_manifest(shared_bundle("onnx-ort-coreml"))
    json.loads(manifest_json(m))   # the real one passes
    m.artifacts[0].details = "fine"   # the schema says an object
    with pytest.raises(RuntimeError, match="manifest.schema.json at artifacts/0"):
        manifest_json(m)


def test_the_manifest_is_strict_json():
    assert finite({"a": [1.0, float("nan")], "b": {"c": float("inf")}, "d": "x"}) == {"a": [1.0, None],
                                                                                     "b": {"c": None}, "d": "x"}
    assert not re.search(r"\bNaN\b|Infinity", json.dumps(finite([math.nan, -math.inf])))
