"""A third-party format plugin for bsconv-export, in one module: ``toy``.

A ``model.toy`` file is a zip of the bundle's best ONNX file (``model.onnx``), the
class labels (``labels.json``) and a free-text note (``--toy-note``). Installing this
package is all it takes: bsconv-export finds ``PLUGIN`` through the
``bsconv_export.formats`` entry point in ``pyproject.toml``, then lists the format,
exports it, checks it against PyTorch (its labels against the manifest's too),
benchmarks it and names it and its option in the reproduce command.

It uses only bsconv-export's plugin interface (``exporter.formats``, ``exporter.options``,
``exporter.runners``, ``exporter.records``) and onnxruntime.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from bsconv_export.exporter.formats import Format, Plugin, preferred
from bsconv_export.exporter.kit.options import Option
from bsconv_export.exporter.kit.records import ArtifactRecord, Status
from bsconv_export.exporter.runners import Runner

TOY_NAME = "model.toy"
MAX_MEMBER_BYTES = 1 << 30     # a model.toy is untrusted input: bound what is unzipped
FIXED_TIME = (2020, 1, 1, 0, 0, 0)   # the same bytes for the same model


def _member(z: zipfile.ZipFile, name: str) -> bytes:
    info = z.getinfo(name)
    if info.file_size > MAX_MEMBER_BYTES:
        raise ValueError(f"{name} in the .toy file declares {info.file_size} bytes; at most {MAX_MEMBER_BYTES}")
    with z.open(info) as f:
        data = f.read(MAX_MEMBER_BYTES + 1)
    if len(data) > MAX_MEMBER_BYTES:
        raise ValueError(f"{name} in the .toy file is over {MAX_MEMBER_BYTES} bytes")
    return data


def export_toy(ctx) -> ArtifactRecord:
    """The stage: the best ONNX file built so far (the ``onnx`` row is required), zipped with the labels."""
    source = preferred(ctx.records.values(), "onnx")
    with zipfile.ZipFile(ctx.workdir / TOY_NAME, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in (("model.onnx", (ctx.workdir / source.path).read_bytes()),
                           ("labels.json", json.dumps(ctx.spec.class_labels()).encode()),
                           ("note.txt", ctx.options.toy_note.encode())):
            z.writestr(zipfile.ZipInfo(name, FIXED_TIME), data)
    return ArtifactRecord(format="toy", status=Status.OK, path=TOY_NAME, details={"source": source.format})


class ToyRunner(Runner):
    """Runs the ONNX file inside a ``.toy`` on onnxruntime's CPU provider."""

    name = "toy-onnxruntime"
    kinds = ("toy",)

    def load(self) -> "ToyRunner":
        import onnxruntime as ort
        with zipfile.ZipFile(self.path) as z:
            model = _member(z, "model.onnx")
            self._labels = [str(v) for v in json.loads(_member(z, "labels.json"))]
        so = ort.SessionOptions()
        if self.threads:
            so.intra_op_num_threads = self.threads
        if not self.spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.input_shape = tuple(self.session.get_inputs()[0].shape)
        self.fixed_batch = self.input_shape[0] if isinstance(self.input_shape[0], int) else None
        return self

    def labels(self) -> list[str] | None:
        return list(self._labels)

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, inputs)))

    def close(self) -> None:
        self.session = None


def _facts(path: Path) -> tuple[str | None, int | None]:
    return "fp32", None     # the zip holds the fp32 ONNX file as it is


PLUGIN = Plugin(
    name="toy",
    order=500,
    options=(Option("toy_note", "--toy-note", str, "", "toy: a note stored in the .toy file."),),
    tools=("onnxruntime",),
    formats=(Format("toy", export_toy, TOY_NAME, "toy", "a third-party example: ONNX and labels in a zip",
                    requires=("onnx",), options=("toy_note",), facts=_facts,
                    note=lambda r: f"from {r.details.get('source')}"),),
    runners=(ToyRunner,),
)
