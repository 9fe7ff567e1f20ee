"""ONNX stage: the captured program through the dynamo exporter, named I/O, metadata, a full check.

By default the file comes from the bundle's ``torch.export`` capture
(``torch.onnx.export(program, dynamo=True)``, which needs ``onnxscript``): the
same graph every other format starts from. That exporter writes opset 18 and
newer. ``--legacy-exporter`` switches to the TorchScript exporter
(``torch.jit.trace``, ``dynamo=False``), which torch deprecates but which is the
only way to an opset below 18 (runtimes that predate 2023); it is never chosen
silently. Both write byte-identical files for the same weights.

The dynamo exporter annotates every node with the exporting machine's stack
trace and module paths; those are removed (they are local file paths, not
model), and its progress chatter never reaches stdout.
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import sys
import time
import warnings

from pathlib import Path

import numpy as np
import onnx
import torch

from ...kit import ArtifactRecord, ExportContext, INPUT_NAME, OUTPUT_NAME, Status, UserInputError, __version__


ONNX_NAME = "model.onnx"
MIN_OPSET = 11          # the TorchScript exporter's oldest useful opset
DYNAMO_MIN_OPSET = 18   # the dynamo exporter writes 18 when asked for less
TORCH_MAX_OPSET = 20    # the newest opset both exporters write without a version conversion


def _tiny_model(opset: int) -> bytes:
    node = onnx.helper.make_node("Relu", ["x"], ["y"])
    graph = onnx.helper.make_graph(
        [node], "probe", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 10)
    return model.SerializeToString()


@functools.lru_cache(maxsize=1)
def newest_runnable_opset() -> int:
    """The newest opset both the exporter writes and the installed onnxruntime loads."""
    from ...kit import onnxruntime
    ort = onnxruntime()
    for opset in range(min(TORCH_MAX_OPSET, onnx.defs.onnx_opset_version()), MIN_OPSET - 1, -1):
        try:
            ort.InferenceSession(_tiny_model(opset), providers=["CPUExecutionProvider"])
            return opset
        except Exception:  # noqa: BLE001 - any load failure means "not this opset"
            continue
    raise RuntimeError("onnxruntime loads no opset the exporter writes")


def resolve_opset(requested: int | None, *, legacy: bool = False) -> int:
    """The opset to write: the dynamo exporter's own (18) unless asked; below 18 needs --legacy-exporter."""
    newest = newest_runnable_opset()
    lowest = MIN_OPSET if legacy else DYNAMO_MIN_OPSET
    if requested is None:
        return newest if legacy else DYNAMO_MIN_OPSET
    if not legacy and MIN_OPSET <= requested < DYNAMO_MIN_OPSET:
        raise UserInputError(f"--opset {requested} needs the TorchScript exporter: add --legacy-exporter "
                             f"(the torch.export-based exporter writes opset {DYNAMO_MIN_OPSET} and newer)")
    if not lowest <= requested <= newest:
        raise UserInputError(f"--opset {requested} is out of range: this exporter and the installed "
                             f"onnxruntime run opsets {lowest}..{newest}")
    return requested


def opset_of(ctx: ExportContext) -> int:
    """The opset this export writes (validated before any stage ran, see :func:`validate_onnx`)."""
    return resolve_opset(ctx.options.opset, legacy=ctx.options.legacy_exporter)


def validate_onnx(opts, spec) -> None:
    """Before any work: an opset the chosen exporter writes and the installed onnxruntime runs."""
    resolve_opset(opts.opset, legacy=opts.legacy_exporter)


def onnx_source(ctx: ExportContext) -> tuple[str, Path]:
    """The best ONNX artifact built so far: simplified if it succeeded, else plain."""
    from .. import preferred
    rec = preferred(ctx.records.values(), "onnx")
    if rec is None:
        raise RuntimeError("no ONNX artifact to start from")  # the pipeline runs requirements first
    return rec.format, ctx.workdir / rec.path


#: the metadata keys an ONNX (and .ort) file of ours carries for apps: nothing else, nothing stale
CONTRACT_KEYS = ("arch", "input_size", "input_spec", "normalization", "labels", "producer", "checkpoint_sha256")


def keep_contract_metadata(model) -> None:
    """Drop what tools leave in ``metadata_props`` (onnxsim's run report, the quantiser's pre-process
    flags): an app reads the contract's keys and should find nothing stale beside them."""
    kept = [p for p in model.metadata_props if p.key in CONTRACT_KEYS]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)


def metadata_props(ctx: ExportContext) -> dict[str, str]:
    return {
        "arch": ctx.arch,
        "input_size": str(ctx.spec.size),
        "input_spec": json.dumps(ctx.spec.to_dict(), sort_keys=True),
        "normalization": ctx.spec.normalization,
        "labels": json.dumps(ctx.spec.class_labels()),
        "producer": f"bsconv-export {__version__}; torch {torch.__version__}; onnx {onnx.__version__}",
        "checkpoint_sha256": ctx.checkpoint_sha256 or "untrained",
    }


def warm_exporter() -> None:
    """The dynamo exporter's imports (onnxscript and its opset tables), made ahead in a stage worker."""
    import importlib
    for name in ("onnxscript", "torch.onnx._internal.exporter._core"):
        importlib.import_module(name)


def export_onnx(ctx: ExportContext) -> ArtifactRecord:
    t0 = time.perf_counter()
    model = _legacy_onnx(ctx) if ctx.options.legacy_exporter else _dynamo_onnx(ctx)
    for k, v in metadata_props(ctx).items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    model.doc_string = f"{ctx.arch} exported by bsconv-export"
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, ctx.workdir / ONNX_NAME)
    return ArtifactRecord(format="onnx", status=Status.OK, path=ONNX_NAME, seconds=time.perf_counter() - t0,
                          nodes=len(model.graph.node), opset=opset_of(ctx),
                          details={"exporter": "torchscript" if ctx.options.legacy_exporter else "dynamo",
                                   "op_types": op_histogram(model),
                                   "input_shape": io_shape(model.graph.input[0]),
                                   "output_shape": io_shape(model.graph.output[0])})


def _dynamo_onnx(ctx: ExportContext) -> onnx.ModelProto:
    from ...kit import quiet_logs
    program = ctx.program()
    with quiet_logs(), contextlib.redirect_stdout(sys.stderr):
        onnx_program = torch.onnx.export(program, (ctx.example,), input_names=[INPUT_NAME],
                                         output_names=[OUTPUT_NAME], opset_version=opset_of(ctx), dynamo=True,
                                         verbose=False, optimize=True, external_data=False)
    model = onnx_program.model_proto
    if ctx.options.dynamic_batch:
        for value in (model.graph.input[0], model.graph.output[0]):
            value.type.tensor_type.shape.dim[0].dim_param = "batch"
    _scope_node_names(model)
    _strip_provenance(model)
    return model


def _scope_node_names(model: onnx.ModelProto) -> None:
    """Name nodes by the module that made them, ``/backbone/stage1/unit1/conv1/conv/Conv``, as the
    TorchScript exporter did: the check's localisation, ``--keep-fp32`` and the int8 report's
    weakest layers speak in these names. The dynamo exporter keeps the module path only in
    node metadata (``name_scopes``: the module path, then the FX node's own name). A
    convolution with its BatchNorm folded in carries the BatchNorm's scope there, so a node
    with a ``<module>.weight`` initializer is named after that module instead."""
    import ast
    weights = {i.name[:-len(".weight")] for i in model.graph.initializer if i.name.endswith(".weight")}
    taken: set[str] = set()
    for node in model.graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
        owner = next((i[:-len(".weight")] for i in node.input[1:2] if i[:-len(".weight")] in weights
                      and i.endswith(".weight")), None)
        try:
            parts = [s for s in ast.literal_eval(scopes)[:-1] if s] if scopes is not None else []
        except (ValueError, SyntaxError):
            parts = []
        module = owner or (parts[-1] if parts else "")
        if not module:
            taken.add(node.name)
            continue
        base = "/" + "/".join([*module.split("."), node.op_type]) if module else f"/{node.op_type}"
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        node.name = name
        taken.add(name)


def _strip_provenance(model: onnx.ModelProto) -> None:
    """Drop what describes the exporting machine, not the model: per-node stack traces and
    module paths, value-info annotations, the producer's own metadata."""
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info, *model.graph.initializer]:
        if hasattr(value, "metadata_props"):
            del value.metadata_props[:]
        value.doc_string = ""
    del model.metadata_props[:]


def _legacy_onnx(ctx: ExportContext) -> onnx.ModelProto:
    dynamic = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if ctx.options.dynamic_batch else None
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy-exporter notice, see module doc
        torch.onnx.export(ctx.model, (ctx.example,), buf, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=opset_of(ctx), dynamic_axes=dynamic,
                          do_constant_folding=True, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    ops: dict[str, int] = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return dict(sorted(ops.items()))


def io_shape(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def run_onnx(path_or_bytes, x: np.ndarray) -> np.ndarray:
    """One CPU inference, for the stages' own sanity checks."""
    from ...kit import onnxruntime
    ort = onnxruntime()
    src = str(path_or_bytes) if not isinstance(path_or_bytes, bytes) else path_or_bytes
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]
