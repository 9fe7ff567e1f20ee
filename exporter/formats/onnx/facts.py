"""What an ONNX file says about itself, read without running it: its arithmetic and its opset."""
from __future__ import annotations

from pathlib import Path

_QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
                  "MatMulInteger", "DynamicQuantizeLinear", "QLinearAdd"}


def onnx_facts(path: Path) -> tuple[str | None, int | None]:
    """int8 where it quantises, fp16 where it holds fp16 tensors, else fp32; and its default-domain
    opset. (None, None) when it cannot be read here (its runner then reports that)."""
    import onnx
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception:  # noqa: BLE001 - an unreadable file fails when its runner loads it
        return None, None
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if any(n.op_type in _QUANTIZED_OPS for n in model.graph.node):
        return "int8", opset
    fp16 = onnx.TensorProto.FLOAT16
    if any(t.data_type == fp16 for t in model.graph.initializer) or any(
            v.type.tensor_type.elem_type == fp16 for v in [*model.graph.input, *model.graph.output]) or any(
            n.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in n.attribute)
            for n in model.graph.node):
        return "fp16", opset
    return "fp32", opset
