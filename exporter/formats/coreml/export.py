"""CoreML stage: ``coremltools.convert`` to an ML Program ``.mlpackage``.

Source: the bundle's ``torch.export`` capture after ``run_decompositions({})``
(coremltools refuses the raw TRAINING dialect; an empty decomposition table
gives the ATen inference IR it converts). The MIL program is the same as from
``torch.jit.trace`` (same op histogram) and the conversion is faster.
``--legacy-exporter`` converts a ``torch.jit.trace`` instead, as before.

Input: a plain float tensor named ``input`` by default, the same contract as
the ONNX files (RGB in [0, 1], normalisation inside the model), so one check
covers both. ``--coreml-input image`` makes it an ``ImageType`` (8-bit RGB
pixels, scale 1/255 and per-channel bias folded in) for Vision pipelines.
Output: a classifier — ``classLabel`` (top label) and ``logits`` (label → logit).
The pass ``common::fuse_elementwise_to_batchnorm`` is removed from coremltools'
default pipeline: it rewrites the input's per-channel Mul/Add as a batch_norm with
variance 1 and epsilon 1e-5, which scales the input by 1/sqrt(1 + 1e-5) — a real
error of ~1e-4 on the shipped model's logits, found by the MIL check.
Linux can convert and validate the spec but not predict (Apple's runtime is
macOS-only); running it belongs to the check stage.
"""
from __future__ import annotations

import contextlib
import io
import json
import time
import warnings
from pathlib import Path

import torch

from ...kit import (ArtifactRecord, ExportContext, INPUT_NAME, LABEL_OUTPUT, OUTPUT_NAME, Status, __version__,
                   pixel_normalization)
from .backend import import_coremltools

COREML_NAME = "model.mlpackage"
DEPLOYMENT_TARGET = "iOS16"   # ML Programs need iOS 15; 16 adds fp16 I/O and newer ops


def _input_type(ct, ctx: ExportContext):
    shape = tuple(ctx.example.shape)
    if ctx.options.coreml_input == "tensor":
        return ct.TensorType(name=INPUT_NAME, shape=shape)
    spec = ctx.spec
    mean, std = pixel_normalization(spec)   # input = (pixel - mean_c) / std_c; ImageType: scale * pixel + bias_c
    scale, bias = 1.0 / std[0], [0.0 - m / std[0] + 0.0 for m in mean]
    return ct.ImageType(name=INPUT_NAME, shape=shape, scale=scale, bias=bias,
                        color_layout=ct.colorlayout.RGB if spec.color_order == "RGB" else ct.colorlayout.BGR)


def convert_coreml(ctx: ExportContext, compression: tuple[tuple[str, dict], ...] = (),
                   precision_name: str | None = None, target: str = DEPLOYMENT_TARGET):
    """The converted ``MLModel`` (not yet saved), optionally compressed in the same pipeline:
    ``compression`` is coremltools passes appended to it in order, each (its name, its options), and
    ``precision_name`` the precision the metadata then tells an app (the compressed precision, not the
    compute's). ``target``: the minimum deployment target (``ct.target`` name).

    Compression runs as a pass of the conversion pipeline, not afterwards: ``palettize_weights`` or
    ``linear_quantize_weights`` on a finished model re-runs coremltools' default pipeline, which
    brings the removed pass back.
    """
    ct = import_coremltools()
    if ctx.options.dynamic_batch:
        raise ValueError("CoreML export takes a fixed batch; drop --dynamic-batch or the coreml format")
    if ctx.options.legacy_exporter:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch deprecates tracing: see the docstring
            source = torch.jit.trace(ctx.model, ctx.example)
    else:
        source = ctx.program().run_decompositions({})
    precision = ct.precision.FLOAT16 if ctx.options.coreml_precision == "fp16" else ct.precision.FLOAT32
    labels = ctx.spec.class_labels()
    pipeline = ct.PassPipeline.DEFAULT
    pipeline.remove_passes(["common::fuse_elementwise_to_batchnorm"])
    for pass_name, options in compression:
        pipeline.append_pass(pass_name)
        if options:
            pipeline.set_options(pass_name, options)
    from ...kit import quiet_logs
    with quiet_logs(), contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlmodel = ct.convert(
            source, inputs=[_input_type(ct, ctx)],
            classifier_config=ct.ClassifierConfig(labels, predicted_feature_name=LABEL_OUTPUT),
            convert_to="mlprogram", minimum_deployment_target=getattr(ct.target, target),
            compute_precision=precision, pass_pipeline=pipeline)
    spec = mlmodel.get_spec()
    probs_name = spec.description.predictedProbabilitiesName
    if probs_name != OUTPUT_NAME:
        ct.utils.rename_feature(spec, probs_name, OUTPUT_NAME)
        mlmodel = ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir)
    mlmodel.author = "bsconv-export"
    mlmodel.license = "same as the checkpoint's"
    mlmodel.version = __version__
    mlmodel.short_description = (f"{ctx.arch} ({ctx.spec.num_classes} classes), input {ctx.spec.size}x{ctx.spec.size} "
                                 f"RGB in [{ctx.spec.value_range[0]}, {ctx.spec.value_range[1]}]")
    mlmodel.user_defined_metadata.update({"arch": ctx.arch, "checkpoint_sha256": ctx.checkpoint_sha256 or "untrained",
                                          "normalization": ctx.spec.normalization,
                                          "precision": precision_name or ctx.options.coreml_precision,
                                          "input_spec": json.dumps(ctx.spec.to_dict(), sort_keys=True)})
    return mlmodel


def validate_spec(mlmodel, ctx: ExportContext) -> dict:
    """Check names, shapes and types of the spec; raise ValueError on a mismatch."""
    desc = mlmodel.get_spec().description
    inputs = {i.name: i for i in desc.input}
    outputs = {o.name: o for o in desc.output}
    if list(inputs) != [INPUT_NAME]:
        raise ValueError(f"CoreML inputs are {list(inputs)}, expected ['{INPUT_NAME}']")
    if set(outputs) != {LABEL_OUTPUT, OUTPUT_NAME}:
        raise ValueError(f"CoreML outputs are {sorted(outputs)}, expected {sorted([LABEL_OUTPUT, OUTPUT_NAME])}")
    inp = inputs[INPUT_NAME].type
    if ctx.options.coreml_input == "tensor":
        shape = list(inp.multiArrayType.shape)
        kind = "tensor"
    else:
        shape = [ctx.example.shape[0], ctx.spec.channels, inp.imageType.height, inp.imageType.width]
        kind = "image"
    if shape != list(ctx.example.shape):
        raise ValueError(f"CoreML input shape {shape} differs from the export shape {list(ctx.example.shape)}")
    if outputs[OUTPUT_NAME].type.WhichOneof("Type") != "dictionaryType":
        raise ValueError("CoreML 'logits' output is not a label → value dictionary")
    return {"input_kind": kind, "input_shape": shape, "outputs": sorted(outputs),
            "spec_version": mlmodel.get_spec().specificationVersion}


def save_reproducibly(mlmodel, path: Path) -> None:
    """``mlmodel.save``, then the same package made byte-reproducible: coremltools writes the spec's
    metadata map in hash order and names the package's items with random UUIDs, so two saves of one
    model differ. The spec is re-serialised deterministically and each item named by a UUID derived
    from its path; the model, its weights and what a runtime reads are unchanged."""
    import uuid
    from coremltools.proto import Model_pb2
    mlmodel.save(str(path))
    manifest_path = path / "Manifest.json"
    manifest = json.loads(manifest_path.read_text())
    renamed = {old: str(uuid.uuid5(uuid.NAMESPACE_URL, f"bsconv-export/{info['path']}"))
               for old, info in manifest["itemInfoEntries"].items()}
    manifest["itemInfoEntries"] = {renamed[k]: v for k, v in sorted(manifest["itemInfoEntries"].items(),
                                                                     key=lambda kv: renamed[kv[0]])}
    manifest["rootModelIdentifier"] = renamed[manifest["rootModelIdentifier"]]
    manifest_path.write_text(json.dumps(manifest, indent=4, sort_keys=True) + "\n")
    root = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]["path"]
    spec_path = path / "Data" / root
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    spec_path.write_bytes(spec.SerializeToString(deterministic=True))


def export_coreml(ctx: ExportContext) -> ArtifactRecord:
    t0 = time.perf_counter()
    mlmodel = convert_coreml(ctx)
    details = validate_spec(mlmodel, ctx)
    details["precision"] = ctx.options.coreml_precision
    save_reproducibly(mlmodel, ctx.workdir / COREML_NAME)
    ops = mil_op_histogram(mlmodel)
    return ArtifactRecord(format="coreml", status=Status.OK, path=COREML_NAME,
                          seconds=time.perf_counter() - t0, nodes=sum(n for op, n in ops.items() if op != "const"),
                          deployment_target=DEPLOYMENT_TARGET, details={**details, "op_types": ops})


def mil_op_histogram(mlmodel) -> dict[str, int]:
    ops: dict[str, int] = {}
    spec = mlmodel.get_spec()
    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            for op in block.operations:
                ops[op.type] = ops.get(op.type, 0) + 1
    return dict(sorted(ops.items()))
