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

import torch

from .capture import op_counts
from .context import ExportContext
from .records import ArtifactRecord, Status

PTE_NAME = "model.pte"
BACKEND = "XnnpackBackend"


class ExecuTorchUnavailable(RuntimeError):
    """ExecuTorch is not installed, or its native code does not load beside this torch."""


def import_lowering():
    """``(to_edge_transform_and_lower, XnnpackPartitioner)``, imported quietly, or a clear error."""
    from .quiet import quiet_logs
    try:
        with quiet_logs():
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
            from executorch.exir import to_edge_transform_and_lower
    except ImportError as e:
        raise ExecuTorchUnavailable(abi_hint(e)) from e
    return to_edge_transform_and_lower, XnnpackPartitioner


def abi_hint(e: BaseException) -> str:
    return (f"ExecuTorch does not load beside torch {torch.__version__} ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}); install the pinned pair: "
            "pip install -c constraints.txt -e .")


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
    from .quiet import quiet_logs
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
