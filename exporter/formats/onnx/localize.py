"""First divergence: where along the network an ONNX export stops matching PyTorch.

Every node output of the ONNX graph is exposed and computed with graph
optimisations off; the PyTorch model runs with a forward hook on each block
(conv blocks, units, SE units, pooling, the classifier). A block's output is
matched to the last ONNX node inside its scope (the exporter names nodes
``/backbone/stage1/unit1/conv1/...``) with the same shape. BatchNorms are folded
into convolutions in the graph, so single convolutions and BatchNorms are not
compared on their own; their block's output is. The first block, in execution
order, whose error exceeds the tolerance (relative to the block output's
largest magnitude, at least 1) is reported.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from ...kit import prepare_for_export

_LEAF_BLOCKS = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Identity)


def _block_outputs(model: nn.Module, x: np.ndarray) -> list[tuple[str, np.ndarray]]:
    prepared = prepare_for_export(model)
    seen: list[tuple[str, np.ndarray]] = []
    hooks = []
    for name, module in prepared.named_modules():
        if not name or name == "backbone" or isinstance(module, _LEAF_BLOCKS):
            continue
        if type(module).__name__ in ("BSConvU", "BSConvS"):
            continue  # followed by a BatchNorm that the graph folds into their last conv
        hooks.append(module.register_forward_hook(
            lambda m, i, o, name=name: seen.append((name, o.detach().numpy().copy()))))
    try:
        with torch.no_grad():
            prepared(torch.from_numpy(x))
    finally:
        for h in hooks:
            h.remove()
    return seen


def _onnx_values(path: Path, x: np.ndarray, threads: int | None = None) -> tuple[list[tuple[str, str]], dict[str, np.ndarray]]:
    from ...kit import onnxruntime
    ort = onnxruntime()
    model = onnx.load(path)
    nodes = [(n.name, out) for n in model.graph.node for out in n.output if out]
    existing = {o.name for o in model.graph.output}
    for _, out in nodes:
        if out not in existing:
            model.graph.output.append(onnx.ValueInfoProto(name=out))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    values = dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: x})))
    return nodes, values


def _fit_batch(path: Path, x: np.ndarray) -> np.ndarray:
    """``x`` repeated to the graph's fixed batch, if it has one (a ``--batch 4`` export takes 4)."""
    dim = onnx.load(path, load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
    if dim.dim_value and dim.dim_value != len(x):
        return np.repeat(x[:1], dim.dim_value, axis=0)
    return x


def first_divergence(onnx_path: str | Path, model: nn.Module, x: np.ndarray, tol: float,
                     threads: int | None = None) -> dict:
    """The first block whose ONNX output differs from PyTorch's by more than ``tol``."""
    x = _fit_batch(Path(onnx_path), x.astype(np.float32))
    nodes, values = _onnx_values(Path(onnx_path), x, threads)
    compared = 0
    for module_name, ref in _block_outputs(model, x.astype(np.float32)):
        scope = "/" + module_name.replace(".", "/") + "/"
        candidates = [(node, out) for node, out in nodes
                      if node.startswith(scope) and values.get(out) is not None
                      and values[out].shape == ref.shape]
        if not candidates:
            continue
        node, out = candidates[-1]
        compared += 1
        err = float(np.abs(values[out].astype(np.float64) - ref).max())
        scale = max(1.0, float(np.abs(ref).max()))
        if err > tol * scale:
            return {"found": True, "torch_module": module_name, "onnx_node": node, "onnx_value": out,
                    "max_abs_error": err, "scale": scale, "tolerance": tol * scale, "blocks_compared": compared}
    return {"found": False, "blocks_compared": compared,
            "note": "no block exceeded the tolerance; the difference arises after the last matched block"}
