"""Capture: the prepared model as one ``torch.export`` ExportedProgram per bundle.

Every format that can come from the program does: the ONNX file (the dynamo
exporter), the CoreML package (coremltools converts the program after
``run_decompositions({})``), the ExecuTorch ``.pte`` (XNNPACK lowering) and the
``model.pt2`` file itself. One capture means one graph: the formats cannot
disagree about what the model is.

A fixed batch is captured as it is; ``--dynamic-batch`` captures a ``Dim`` batch
from 1 to :data:`MAX_BATCH`. The example input then has batch 2, because
``torch.export`` specialises a dimension whose example is 1.

A model read from a ``--program`` file whose batch is already a ``Dim`` is not
captured again for ``--dynamic-batch``: its own program (with its own bounds) is
the bundle's program.

The program keeps no example inputs (they would be a pickle of a whole input
tensor in ``model.pt2``) and no source provenance (stack traces name the files
of whoever exported it, and the ``from_node`` chains only slow lowering down).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from ...kernel.limits import MAX_BATCH


@dataclass
class Capture:
    program: "torch.export.ExportedProgram"
    seconds: float
    dynamic_batch: bool

    def op_counts(self) -> dict[str, int]:
        return op_counts(self.program)


def capture_program(model: nn.Module, example: torch.Tensor, *, dynamic_batch: bool) -> Capture:
    """``torch.export.export`` of ``model`` (prepared, eval mode) on ``example``'s shape."""
    t0 = time.perf_counter()
    given = getattr(model, "exported", None)
    if given is not None and dynamic_batch:
        return Capture(program=given, seconds=time.perf_counter() - t0, dynamic_batch=True)
    dynamic_shapes = None
    if dynamic_batch:
        if example.shape[0] < 2:
            example = torch.cat([example, example])
        dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes, strict=False)
    program.example_inputs = None
    for node in program.graph.nodes:
        for key in ("stack_trace", "from_node"):
            node.meta.pop(key, None)
    return Capture(program=program, seconds=time.perf_counter() - t0, dynamic_batch=dynamic_batch)


def op_name(target) -> str:
    """A readable operator name: ``aten.conv2d.default``, ``getitem``, ``executorch_call_delegate``."""
    text = str(target)
    if text.startswith("<EdgeOpOverload: "):
        return text[len("<EdgeOpOverload: "):].split(">", 1)[0]
    return getattr(target, "__name__", text) if text.startswith("<") else text


def op_counts(program) -> dict[str, int]:
    """Call nodes of an ExportedProgram (or a GraphModule) by operator."""
    graph = program.graph
    ops: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_function":
            name = op_name(node.target)
            ops[name] = ops.get(name, 0) + 1
    return dict(sorted(ops.items()))
