"""What a ``.tflite`` tells an app: the contract's names, the labels and the input spec, in the
forms Android's tooling reads — and reading them back.

The converter names its tensors ``serving_default_args_0`` / ``…output_0`` and embeds
nothing else. :func:`finish` renames the input and output tensors and the signature's
entries to ``input`` / ``logits`` and adds two entries to the model's ``metadata`` list:

* ``TFLITE_METADATA``: a ``ModelMetadata`` flatbuffer (TFLite Metadata schema 1.1, file
  identifier ``M001``) with the input's normalisation (what maps 8-bit pixels to the
  input's value range) and its value range, and the output's label file, an associated
  file of type TENSOR_AXIS_LABELS. No maintained writer of this schema exists for current
  Python (tflite-support is unmaintained), so it is written here with the ``flatbuffers``
  package, field by field from the schema; the label file is packed the way that schema's
  tools pack it: a zip appended to the flatbuffer (``labels.txt``).
* ``bsconv_export``: the same facts the ONNX file's metadata carries (arch, input spec,
  normalisation, labels, checkpoint, precision), as JSON, for the check.

It also gives every other tensor a short name. The converter names a tensor by the full module
path of each layer fused into it (``bsconv_export.models.mobilenet.MobileNet/torch.nn.modules.
container.Sequential_backbone/…;;…``): 650 bytes a tensor on average, 11 % of the shipped model's
fp32 file and a quarter of its int8 one. :func:`short_tensor_names` keeps the first fused layer's
attribute path (``backbone.stage1.unit1.conv2.activation``), unique within the graph, as the
quantizer needs (it keys its ranges by tensor name).

The model itself is read and written with ai-edge-litert's own schema code.
"""
from __future__ import annotations

import io
import json
import zipfile

import flatbuffers

from ...kit import INPUT_NAME, OUTPUT_NAME, ExportContext

TFLITE_METADATA = "TFLITE_METADATA"
OUR_METADATA = "bsconv_export"
LABELS_FILE = "labels.txt"
METADATA_IDENTIFIER = b"M001"
MAX_METADATA_BYTES = 1 << 24

# TFLite Metadata schema enums
TENSOR_AXIS_LABELS = 2
FEATURE_PROPERTIES = 1          # ContentProperties union: FeatureProperties
NORMALIZATION_OPTIONS = 1       # ProcessUnitOptions union: NormalizationOptions


def _strings(b: flatbuffers.Builder, values: list[str]) -> list[int]:
    return [b.CreateString(v) for v in values]


def _table(b: flatbuffers.Builder, fields: list[tuple[int, str, object]]) -> int:
    """One table: ``(slot, kind, value)`` with kind 'offset', 'byte' or 'string-offset'."""
    b.StartObject(max(slot for slot, _, _ in fields) + 1 if fields else 0)
    for slot, kind, value in fields:
        if value is None:
            continue
        if kind == "byte":
            b.PrependInt8Slot(slot, value, 0)
        else:
            b.PrependUOffsetTRelativeSlot(slot, value, 0)
    return b.EndObject()


def _vector_of_offsets(b: flatbuffers.Builder, offsets: list[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for o in reversed(offsets):
        b.PrependUOffsetTRelative(o)
    return b.EndVector()


def _vector_of_floats(b: flatbuffers.Builder, values: list[float]) -> int:
    b.StartVector(4, len(values), 4)
    for v in reversed(values):
        b.PrependFloat32(float(v))
    return b.EndVector()


def model_metadata(arch: str, description: str, version: str, pixel_mean: list[float], pixel_std: list[float],
                   value_range: tuple[float, float], channels: int) -> bytes:
    """The ``ModelMetadata`` flatbuffer: one subgraph, the input's normalisation and range, the
    output's label file. Field slots follow metadata_schema.fbs (a union takes two slots)."""
    b = flatbuffers.Builder(1024)
    # input tensor: FeatureProperties content, NormalizationOptions process unit, Stats
    in_name, in_desc = _strings(b, [INPUT_NAME, "Image, channels first (N, C, H, W), in the value range below: "
                                    "pixel values normalised by the process unit (x - mean) / std"])
    feature = _table(b, [])
    content = _table(b, [(0, "byte", FEATURE_PROPERTIES), (1, "offset", feature)])
    mean, std = _vector_of_floats(b, pixel_mean), _vector_of_floats(b, pixel_std)
    norm = _table(b, [(0, "offset", mean), (1, "offset", std)])
    unit = _table(b, [(0, "byte", NORMALIZATION_OPTIONS), (1, "offset", norm)])
    units = _vector_of_offsets(b, [unit])
    smax, smin = _vector_of_floats(b, [value_range[1]] * channels), _vector_of_floats(b, [value_range[0]] * channels)
    stats = _table(b, [(0, "offset", smax), (1, "offset", smin)])
    tin = _table(b, [(0, "offset", in_name), (1, "offset", in_desc), (3, "offset", content), (4, "offset", units),
                     (5, "offset", stats)])
    # output tensor: its label file
    out_name, out_desc, file_name, file_desc = _strings(b, [OUTPUT_NAME, "Class logits, one per label",
                                                            LABELS_FILE, "One class label per line"])
    label_file = _table(b, [(0, "offset", file_name), (1, "offset", file_desc), (2, "byte", TENSOR_AXIS_LABELS)])
    files = _vector_of_offsets(b, [label_file])
    feature_out = _table(b, [])
    content_out = _table(b, [(0, "byte", FEATURE_PROPERTIES), (1, "offset", feature_out)])
    tout = _table(b, [(0, "offset", out_name), (1, "offset", out_desc), (3, "offset", content_out),
                      (6, "offset", files)])
    inputs, outputs = _vector_of_offsets(b, [tin]), _vector_of_offsets(b, [tout])
    sg_name = b.CreateString(arch)
    subgraph = _table(b, [(0, "offset", sg_name), (2, "offset", inputs), (3, "offset", outputs)])
    subgraphs = _vector_of_offsets(b, [subgraph])
    name, desc, ver, author, parser = _strings(b, [arch, description, version, "bsconv-export", "1.0.0"])
    root = _table(b, [(0, "offset", name), (1, "offset", desc), (2, "offset", ver), (3, "offset", subgraphs),
                      (4, "offset", author), (7, "offset", parser)])
    b.Finish(root, file_identifier=METADATA_IDENTIFIER)
    return bytes(b.Output())


# --- reading the ModelMetadata back (the fields this tool writes) ---------------------------------

def _field(tab, slot: int) -> int:
    return tab.Offset(4 + 2 * slot)


def _sub(tab, slot: int):
    o = _field(tab, slot)
    return None if o == 0 else flatbuffers.table.Table(tab.Bytes, tab.Indirect(o + tab.Pos))


def _byte(tab, slot: int) -> int:
    o = _field(tab, slot)
    return 0 if o == 0 else tab.Get(flatbuffers.number_types.Uint8Flags, o + tab.Pos)


def _str(tab, slot: int) -> str | None:
    o = _field(tab, slot)
    return None if o == 0 else tab.String(o + tab.Pos).decode("utf-8", "replace")


def _vec_tables(tab, slot: int) -> list:
    o = _field(tab, slot)
    if o == 0:
        return []
    start, n = tab.Vector(o), tab.VectorLen(o)
    return [flatbuffers.table.Table(tab.Bytes, tab.Indirect(start + 4 * i)) for i in range(min(n, 1024))]


def _vec_floats(tab, slot: int) -> list[float]:
    import struct
    o = _field(tab, slot)
    if o == 0:
        return []
    start, n = tab.Vector(o), tab.VectorLen(o)
    return [struct.unpack_from("<f", tab.Bytes, start + 4 * i)[0] for i in range(min(n, 4096))]


def read_model_metadata(buf: bytes) -> dict:
    """The facts :func:`model_metadata` writes, read back: the label file of the output, and the
    input's normalisation and range. Raises ValueError on a buffer that is not ModelMetadata."""
    if len(buf) < 8 or buf[4:8] != METADATA_IDENTIFIER:
        raise ValueError("the TFLITE_METADATA buffer is not a ModelMetadata flatbuffer (identifier M001)")
    root = flatbuffers.table.Table(bytearray(buf), flatbuffers.encode.Get(flatbuffers.packer.uoffset, buf, 0))
    subgraphs = _vec_tables(root, 3)
    if not subgraphs:
        raise ValueError("the TFLITE_METADATA has no subgraph metadata")
    ins, outs = _vec_tables(subgraphs[0], 2), _vec_tables(subgraphs[0], 3)
    out: dict = {"name": _str(root, 0), "inputs": [_str(t, 0) for t in ins], "outputs": [_str(t, 0) for t in outs]}
    if ins:
        for unit in _vec_tables(ins[0], 4):
            norm = _sub(unit, 1) if _byte(unit, 0) == NORMALIZATION_OPTIONS else None
            if norm is not None:
                out["mean"], out["std"] = _vec_floats(norm, 0), _vec_floats(norm, 1)
        stats = _sub(ins[0], 5)
        if stats is not None:
            out["max"], out["min"] = _vec_floats(stats, 0), _vec_floats(stats, 1)
    if outs:
        for f in _vec_tables(outs[0], 6):
            if _byte(f, 2) == TENSOR_AXIS_LABELS:
                out["label_file"] = _str(f, 0)
                break
    return out


# --- the model: names, metadata entries, the packed label file ---------------------------------

MAX_TENSOR_NAME = 96


def short_tensor_name(name: str) -> str:
    """``root.Class/pkg.Class_attr/…/pkg.Class_attr;K;;other layers`` -> ``attr.….attr:K``: the first
    fused layer's attribute path (the converter's location names), or the name as it is, capped."""
    first = name.split(";;")[0]
    path, _, index = first.partition(";")
    parts = path.split("/")
    if len(parts) > 1:
        attrs = [seg.rsplit(".", 1)[-1].partition("_")[2] for seg in parts[1:]]
        path = ".".join(a for a in attrs if a) or path
    out = path + (f":{index}" if index else "")
    return out[:MAX_TENSOR_NAME]


def short_tensor_names(names: list[str]) -> list[str]:
    """:func:`short_tensor_name` of each, made unique (``#2``, ``#3``, … on repeats)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        short = short_tensor_name(name)
        seen[short] = seen.get(short, 0) + 1
        out.append(short if seen[short] == 1 else f"{short}#{seen[short]}")
    taken = set(out)
    if len(taken) != len(out):       # a short name that was also another's "#k": the index keeps them apart
        out = [f"{short}@{i}" for i, short in enumerate(out)]
    return out


def finish(raw: bytes, *, arch: str, description: str, version: str, ours: dict[str, str], labels: list[str],
           pixel_mean: list[float], pixel_std: list[float], value_range: tuple[float, float], channels: int) -> bytes:
    """The converter's file with the contract's names, both metadata entries and the label file."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(raw))
    if len(model.subgraphs) != 1:
        raise ValueError(f"the converter wrote {len(model.subgraphs)} subgraphs; expected one")
    graph = model.subgraphs[0]
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ValueError(f"the converted model takes {len(graph.inputs)} inputs and returns {len(graph.outputs)} "
                         "outputs; expected one of each")
    for tensor, name in zip(graph.tensors, short_tensor_names([(t.name or b"").decode("utf-8", "replace")
                                                                if isinstance(t.name, bytes) else (t.name or "")
                                                                for t in graph.tensors])):
        tensor.name = name
    graph.tensors[graph.inputs[0]].name = INPUT_NAME
    graph.tensors[graph.outputs[0]].name = OUTPUT_NAME
    for sig in model.signatureDefs or []:
        for entry, name in ((sig.inputs, INPUT_NAME), (sig.outputs, OUTPUT_NAME)):
            if entry and len(entry) == 1:
                entry[0].name = name
    entries = {TFLITE_METADATA: model_metadata(arch, description, version, pixel_mean, pixel_std, value_range,
                                               channels),
               OUR_METADATA: json.dumps(ours, sort_keys=True).encode()}
    model.metadata = [m for m in (model.metadata or []) if m.name not in entries]
    for name, data in entries.items():
        buffer = schema.BufferT()
        buffer.data = list(data)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = name, len(model.buffers) - 1
        model.metadata.append(entry)
    packed = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        z.writestr(zipfile.ZipInfo(LABELS_FILE, (1980, 1, 1, 0, 0, 0)), "\n".join(labels) + "\n")
    return packed + archive.getvalue()


def metadata_entries(data: bytes) -> dict[str, bytes]:
    """The model's ``metadata`` entries by name (bounded), read with ai-edge-litert's schema."""
    from ai_edge_litert import schema_py_generated as schema
    model = schema.Model.GetRootAs(data, 0)
    out = {}
    for i in range(min(model.MetadataLength(), 64)):
        entry = model.Metadata(i)
        name = (entry.Name() or b"").decode("utf-8", "replace")
        if entry.Buffer() >= model.BuffersLength():
            raise ValueError(f"metadata entry {name!r} points past the model's buffers")
        buf = model.Buffers(entry.Buffer())
        if buf.Offset():
            raw = data[buf.Offset():buf.Offset() + buf.Size()]
        else:
            raw = buf.DataAsNumpy().tobytes() if buf.DataLength() else b""
        if len(raw) > MAX_METADATA_BYTES:
            raise ValueError(f"metadata entry {name!r} is over {MAX_METADATA_BYTES} bytes")
        out[name] = raw
    return out


def packed_labels(path, name: str) -> list[str] | None:
    """The label file packed into the model (a zip appended to the flatbuffer), or None."""
    try:
        with zipfile.ZipFile(path) as z:
            info = z.getinfo(name)
            if info.file_size > MAX_METADATA_BYTES:
                raise ValueError(f"{name} in the .tflite declares {info.file_size} bytes")
            with z.open(info) as f:
                text = f.read(MAX_METADATA_BYTES + 1).decode("utf-8", "replace")
    except (zipfile.BadZipFile, KeyError):
        return None
    return [line for line in text.splitlines()]


def op_counts(data: bytes) -> dict[str, int]:
    from ai_edge_litert import schema_py_generated as schema
    model = schema.Model.GetRootAs(data, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        c = model.OperatorCodes(i)
        code = max(c.BuiltinCode(), c.DeprecatedBuiltinCode())
        codes.append(names.get(code, str(code)) if code != schema.BuiltinOperator.CUSTOM
                     else (c.CustomCode() or b"custom").decode())
    counts: dict[str, int] = {}
    graph = model.Subgraphs(0)
    for i in range(graph.OperatorsLength()):
        op = codes[graph.Operators(i).OpcodeIndex()]
        counts[op] = counts.get(op, 0) + 1
    return dict(sorted(counts.items()))


def finished_tflite(ctx: ExportContext, raw: bytes, *, precision: str, extra: dict | None = None) -> bytes:
    """``raw`` with the contract's names, short tensor names, TFLITE_METADATA, our metadata (``extra``
    added) and the label file."""
    from ...kit import __version__, pixel_normalization
    from . import converter
    spec = ctx.spec
    pixel_mean, pixel_std = pixel_normalization(spec)
    ours = {"arch": ctx.arch, "input_size": str(spec.size), "input_spec": json.dumps(spec.to_dict(), sort_keys=True),
            "normalization": spec.normalization, "labels": json.dumps(spec.class_labels()),
            "checkpoint_sha256": ctx.checkpoint_sha256 or "untrained", "precision": precision,
            "producer": f"bsconv-export {__version__}; litert-torch {converter.pinned('litert-torch')}"
                        + (f"; ai-edge-quantizer {converter.pinned('ai-edge-quantizer')}" if precision != "fp32" else ""),
            **{k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in (extra or {}).items()}}
    return finish(raw, arch=ctx.arch, description=f"{ctx.arch} exported by bsconv-export", version=__version__,
                  ours=ours, labels=spec.class_labels(), pixel_mean=pixel_mean, pixel_std=pixel_std,
                  value_range=spec.value_range, channels=spec.channels)
