"""The smallest faults the reduced-precision gates catch, on the shipped digits model.

Exports ONNX, fp16 and int8 of the shipped model once, then plants faults of growing size in the
fp16 and int8 files — one class's logit moved (a bias), every logit scaled, one depthwise layer's
weights scaled (fp16) — and runs each through onnxruntime against the check's own reference and
rules (the same inputs, tolerances and verdict as `bsconv-export check`). Prints, per fault, the
smallest size that fails and the gate that caught it.

    .venv/bin/python tests/benchmarks/bench_thresholds.py
"""
import os
import tempfile
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402

from bsconv_export.exporter.export.run import export_bundle  # noqa: E402
from bsconv_export.exporter.check.run import check_inputs, torch_reference, verdict  # noqa: E402
from bsconv_export.exporter.check.verdict import measure  # noqa: E402
from bsconv_export.exporter.kit.options import ExportOptions  # noqa: E402
from bsconv_export.exporter.runners import infer_batched  # noqa: E402
from bsconv_export.exporter.runners.onnx_runner import OnnxRunner  # noqa: E402
from bsconv_export.exporter.kit.tolerances import DEFAULT_TOLERANCES  # noqa: E402
from bsconv_export.models.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint  # noqa: E402

GRID = {"class bias": [0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 3.0],
        "logit scale": [1.002, 1.005, 1.01, 1.02, 1.05, 1.1, 1.2, 1.5],
        "depthwise gain": [1.001, 1.002, 1.005, 1.01, 1.02, 1.05, 1.1]}


def with_output_op(model: onnx.ModelProto, op: str, value: np.ndarray) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    producer = next(n for n in m.graph.node if "logits" in n.output)
    producer.output[list(producer.output).index("logits")] = "logits_before_fault"
    m.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), "planted_fault"))
    m.graph.node.append(helper.make_node(op, ["logits_before_fault", "planted_fault"], ["logits"]))
    return m


def with_depthwise_gain(model: onnx.ModelProto, gain: float) -> onnx.ModelProto | None:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    dw = next((n for n in m.graph.node if n.op_type == "Conv"
               and any(a.name == "group" and a.i > 1 for a in n.attribute)), None)
    w = next((t for t in m.graph.initializer if dw is not None and t.name == dw.input[1]), None)
    if w is None:
        return None     # int8: the weight sits behind a DequantizeLinear
    a = numpy_helper.to_array(w)
    w.CopyFrom(numpy_helper.from_array((a.astype(np.float64) * gain).astype(a.dtype), w.name))
    return m


def run(model: onnx.ModelProto, x: np.ndarray, tmp: Path) -> np.ndarray:
    path = tmp / "fault.onnx"
    onnx.save(model, path)
    with OnnxRunner(path, threads=1) as r:
        return infer_batched(r, x)["logits"]


def main() -> None:
    torch.set_num_threads(1)
    loaded = load_checkpoint(DEFAULT_CHECKPOINT)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        export_bundle(loaded, tmp / "b", ExportOptions(formats=("onnx", "fp16", "int8"), int8_plan="uniform"))
        inputs = check_inputs(loaded.input_spec, reduced=True)
        ref = torch_reference(loaded.model, inputs.x, half=True)
        labels = inputs.labels
        ref_acc = float(np.mean(ref.r32[:len(labels)].argmax(1) == labels))
        print(f"digits model, {len(inputs.x)} inputs ({inputs.source}); reference logits RMS "
              f"{np.sqrt(np.mean((ref.r64 - ref.r64.mean(1, keepdims=True)) ** 2)):.2f}")
        for precision, name in (("fp16", "model.fp16.onnx"), ("int8", "model.int8.onnx")):
            base = onnx.load(tmp / "b" / name)
            tol = DEFAULT_TOLERANCES[precision]
            for fault, sizes in GRID.items():
                caught = None
                for size in sizes:
                    if fault == "class bias":
                        v = np.zeros(10, np.float32)
                        v[3] = size
                        model = with_output_op(base, "Add", v)
                    elif fault == "logit scale":
                        model = with_output_op(base, "Mul", np.asarray(size, np.float32))
                    else:
                        model = with_depthwise_gain(base, size)
                        if model is None:
                            break
                    out = run(model, inputs.x, tmp)
                    m = measure(out, ref.r64, tol, inputs.edge_rows)
                    acc = float(np.mean(out[:len(labels)].argmax(1) == labels))
                    reason = verdict(out, ref, m, tol, acc, ref_acc)
                    if reason:
                        caught = (size, reason)
                        break
                if caught:
                    print(f"  {precision} {fault}: caught from {caught[0]:g} — {caught[1][:110]}")
                else:
                    print(f"  {precision} {fault}: not caught up to {sizes[-1]:g}" if model is not None
                          else f"  {precision} {fault}: not planted (quantised weights)")


if __name__ == "__main__":
    main()
