"""ExecuTorch stage: the captured program lowered to XNNPACK and written as ``model.pte``.

``to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])``
hands every subgraph XNNPACK supports to it; what remains runs on ExecuTorch's
portable kernels. The record says which is which (node counts by operator,
delegated and not), because what stays outside the delegate is what makes a
``.pte`` slower than it could be. ``.to_executorch()`` plans memory and
serialises the flatbuffer.

ExecuTorch ships native code built against one torch release. When the torch in
this environment does not match, importing it fails (or its ops do not
register); the stage then fails with that reason and the install command,
never silently skipping the format.
"""
from __future__ import annotations

import contextlib
import sys
import time

import numpy as np
import torch

from ...kit import ArtifactRecord, ExportContext, MAX_BATCH, Status, op_counts
from .backend import abi_hint

PTE_NAME = "model.pte"
BACKEND = "XnnpackBackend"


class ExecuTorchUnavailable(RuntimeError):
    """ExecuTorch is not installed, or its native code does not load beside this torch."""


def import_lowering():
    """``(to_edge_transform_and_lower, XnnpackPartitioner)``, imported quietly, or a clear error."""
    from ...kit import quiet_logs
    try:
        with quiet_logs():
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
            from executorch.exir import to_edge_transform_and_lower
    except ImportError as e:
        raise ExecuTorchUnavailable(abi_hint(e)) from e
    return to_edge_transform_and_lower, XnnpackPartitioner


def delegation(edge_program) -> dict:
    """What XNNPACK runs and what it does not, by operator, from the lowered edge program."""
    gm = edge_program.graph_module
    delegated: dict[str, int] = {}
    delegates = 0
    for node in edge_program.graph.nodes:
        if node.op == "get_attr" and node.target.startswith("lowered_module"):
            lowered = getattr(gm, node.target)
            delegates += 1
            for op, n in op_counts(lowered.original_module).items():
                delegated[op] = delegated.get(op, 0) + n
    outside = {op: n for op, n in op_counts(edge_program).items()
               if op not in ("executorch_call_delegate", "getitem")}
    return {"backend": BACKEND, "delegates": delegates,
            "delegated_nodes": sum(n for op, n in delegated.items() if op != "getitem"),
            "outside_nodes": sum(outside.values()),
            "delegated_ops": dict(sorted(delegated.items())), "outside_ops": outside}


def lower_to_pte(program) -> tuple[bytes, dict]:
    """The ``.pte`` bytes of ``program`` lowered to XNNPACK, and its delegation summary."""
    from ...kit import quiet_logs
    lower, partitioner = import_lowering()
    with quiet_logs(), contextlib.redirect_stdout(sys.stderr):
        edge = lower(program, partitioner=[partitioner()])
        summary = delegation(edge.exported_program())
        buffer = edge.to_executorch().buffer
    return buffer, summary


def export_pte(ctx: ExportContext) -> ArtifactRecord:
    t0 = time.perf_counter()
    buffer, summary = lower_to_pte(ctx.program())
    (ctx.workdir / PTE_NAME).write_bytes(buffer)
    from importlib.metadata import PackageNotFoundError, version
    try:
        et_version = version("executorch")
    except PackageNotFoundError:
        et_version = "unknown"
    return ArtifactRecord(format="pte", status=Status.OK, path=PTE_NAME, seconds=time.perf_counter() - t0,
                          nodes=summary["delegated_nodes"] + summary["outside_nodes"],
                          details={**summary, "executorch": et_version,
                                   "dynamic_batch": ctx.options.dynamic_batch,
                                   "input_shape": ["batch", *ctx.example.shape[1:]] if ctx.options.dynamic_batch
                                   else list(ctx.example.shape)})


PTE_INT8_NAME = "model.int8.pte"


#: the activation observers the quantizer calibrates with: ExecuTorch's XNNPACK default, a histogram
#: whose range minimises the L2 quantisation error (it clips the tails), or the plain range seen
ACTIVATION_OBSERVERS = ("histogram", "minmax")


def chosen_observer(equalised_pairs: int) -> str:
    """The observer the stage calibrates with, chosen by measurement (``make bench-pte-calibration``,
    docs/int8.md): on an equalised program (BSConv-U's pointwise → depthwise pairs) the intermediates'
    channels no longer differ by up to 7x, and the plain range seen keeps the logits' scale (trained
    V1 at 224: slope 0.965, passing, against the histogram's 0.950, failing); a program with nothing
    to equalise keeps the recipe's histogram."""
    return "minmax" if equalised_pairs else "histogram"


def xnnpack_quantization_config(observer: str = "histogram"):
    """ExecuTorch's XNNPACK int8 recipe (symmetric per-channel weights, per-tensor activations), its
    activations observed by ``observer`` (:data:`ACTIVATION_OBSERVERS`)."""
    import dataclasses
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config
    from torchao.quantization.pt2e.observer import MinMaxObserver
    if observer not in ACTIVATION_OBSERVERS:
        raise ValueError(f"unknown activation observer {observer!r}: one of {', '.join(ACTIVATION_OBSERVERS)}")
    config = get_symmetric_quantization_config(is_per_channel=True)
    if observer == "histogram":
        return config
    act = dataclasses.replace(config.input_activation,   # eps: the recipe's own smallest scale
                              observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2 ** -12))
    return dataclasses.replace(config, input_activation=act, output_activation=act)


def quantize_program(program, x, batch: int, observer: str | None = None, equalised: bool = True):
    """The program's module quantised for XNNPACK (:func:`xnnpack_quantization_config`), calibrated
    by running ``x`` through the observed module ``batch`` samples at a time, and what equalisation
    did (with the observer used, ``equalising["observer"]``). ``equalised``: every pointwise →
    depthwise intermediate is equalised on ``x`` first (:mod:`exporter.kit.equalise`: exact in float;
    BSConv-U's blocks). ``observer``: one of :data:`ACTIVATION_OBSERVERS`; None chooses it
    (:func:`chosen_observer`)."""
    from ...kit import equalise, quiet_logs
    try:
        with quiet_logs():
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as e:
        raise ExecuTorchUnavailable(abi_hint(e)) from e
    module = program.module()
    equalising = {"pairs": 0}
    if equalised:
        module, equalising = equalise(module, x, batch)
    observer = observer or chosen_observer(equalising["pairs"])
    equalising = {**equalising, "observer": observer}
    with quiet_logs():
        quantizer = XNNPACKQuantizer().set_global(xnnpack_quantization_config(observer))
    with quiet_logs(), contextlib.redirect_stdout(sys.stderr):
        observed = prepare_pt2e(module, quantizer)
        with torch.no_grad():
            for i in range(0, len(x) - batch + 1, batch):
                observed(torch.from_numpy(x[i:i + batch]))
        return convert_pt2e(observed), equalising


def export_pte_int8(ctx: ExportContext) -> ArtifactRecord:
    from ...kit import calibration_data
    t0 = time.perf_counter()
    x, _, origin = calibration_data(ctx)
    batch = int(ctx.example.shape[0]) if not ctx.options.dynamic_batch else 1
    if len(x) < batch:
        x = np.repeat(x, batch, axis=0)[:batch]
    program = ctx.program()
    quantized, equalising = quantize_program(program, x, batch)
    example = ctx.example if not ctx.options.dynamic_batch else torch.cat([ctx.example, ctx.example])[:max(2, len(ctx.example))]
    dynamic = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},) if ctx.options.dynamic_batch else None
    with torch.no_grad():
        requantized = torch.export.export(quantized, (example,), dynamic_shapes=dynamic, strict=False)
    buffer, summary = lower_to_pte(requantized)
    (ctx.workdir / PTE_INT8_NAME).write_bytes(buffer)
    fp32 = ctx.records.get("pte")
    return ArtifactRecord(format="pte-int8", status=Status.OK, path=PTE_INT8_NAME, seconds=time.perf_counter() - t0,
                          nodes=summary["delegated_nodes"] + summary["outside_nodes"],
                          details={**summary, "precision": "int8", "calibration": origin,
                                   "calibration_samples": int(len(x)),
                                   "recipe": "XNNPACKQuantizer: int8 symmetric per-channel weights, int8 "
                                             "per-tensor activations (torchao pt2e; activation ranges by a "
                                             + ("min/max" if equalising["observer"] == "minmax" else "histogram")
                                             + " observer, weight ranges by per-channel min/max)"
                                             + (f"; {equalising['pairs']} pointwise → depthwise intermediates "
                                                "equalised on the calibration samples first" if equalising["pairs"]
                                                else ""),
                                   "equalised": equalising,
                                   **({"bytes_ratio_to_fp32": round(len(buffer) / (ctx.workdir / fp32.path).stat().st_size, 3)}
                                      if fp32 is not None and fp32.ok and fp32.path else {})})
