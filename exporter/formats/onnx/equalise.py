"""Equalising BSConv-U's pointwise → depthwise intermediates in an ONNX graph before int8.

The same move as the ``.pte`` int8 stage's (:mod:`exporter.kit.equalise`, where the reasoning is), on
the graph onnxruntime quantises: every ``Conv`` with a 1×1 kernel and one group whose output feeds
only a depthwise ``Conv`` (groups = channels) gets each output channel (weights and bias) times
``s_c`` and the depthwise channel's weights divided by it, ``s_c`` from the channel's largest
magnitude on the calibration samples (the kit's :func:`channel_factors`). Exact in float; the
weights are quantised per output channel, so the moved factors cost them nothing, and the
intermediate's one activation scale is spent on every channel alike.

A weight another node also reads is never changed (the pair is left out).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from ...kit import channel_factors, onnxruntime, range_spread


def _attrs(node) -> dict:
    import onnx
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def pointwise_depthwise_pairs(graph) -> list[tuple]:
    """(pointwise node, depthwise node) for every pair that can be equalised in ``graph``."""
    inits = {i.name: i for i in graph.initializer}
    readers = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    outputs = {o.name for o in graph.output}
    pairs = []
    for pw in graph.node:
        if pw.op_type != "Conv" or _attrs(pw).get("group", 1) != 1 or len(pw.input) < 2:
            continue
        w = inits.get(pw.input[1])
        if w is None or len(w.dims) != 4 or list(w.dims[2:]) != [1, 1]:
            continue
        y = pw.output[0]
        users = readers[y]
        if y in outputs or len(users) != 1 or users[0].op_type != "Conv" or users[0].input[0] != y:
            continue
        dw = users[0]
        wd = inits.get(dw.input[1]) if len(dw.input) > 1 else None
        channels = int(w.dims[0])
        if wd is None or _attrs(dw).get("group", 1) != channels or list(wd.dims[:2]) != [channels, 1]:
            continue
        own = [pw.input[1], dw.input[1]] + ([pw.input[2]] if len(pw.input) > 2 and pw.input[2] else [])
        if any(name not in inits or len(readers[name]) != 1 for name in own):
            continue
        pairs.append((pw, dw))
    return pairs


def _ranges(model, names: list[str], x: np.ndarray, batch: int, threads: int) -> dict[str, np.ndarray]:
    """Each named intermediate's largest magnitude per channel on ``x``, by onnxruntime."""
    import onnx
    ort = onnxruntime()
    watched = onnx.ModelProto()
    watched.CopyFrom(model)
    for name in names:
        watched.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(watched.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    ranges: dict[str, np.ndarray] = {}
    for i in range(0, max(1, len(x) - batch + 1), batch):
        got = session.run(names, {feed: np.ascontiguousarray(x[i:i + batch], np.float32)})
        for name, value in zip(names, got):
            r = np.abs(value).max(axis=(0, 2, 3))
            ranges[name] = np.maximum(ranges[name], r) if name in ranges else r
    return ranges


def equalise_onnx(path: Path, x: np.ndarray, batch: int, threads: int = 1) -> dict:
    """Equalise every pair in the ONNX file at ``path`` (rewritten in place) on ``x``, ``batch``
    samples at a time; what was done, as the ``.pte`` stage reports it."""
    import onnx
    from onnx import numpy_helper
    model = onnx.load(path)
    pairs = pointwise_depthwise_pairs(model.graph)
    if not pairs:
        return {"pairs": 0}
    ranges = _ranges(model, [pw.output[0] for pw, _ in pairs], x, batch, threads)
    inits = {i.name: i for i in model.graph.initializer}

    def scale(name: str, factor: np.ndarray, divide: bool = False) -> None:
        value = numpy_helper.to_array(inits[name])
        shape = (-1,) + (1,) * (value.ndim - 1)
        f = factor.reshape(shape)
        new = value.astype(np.float64) / f if divide else value.astype(np.float64) * f
        inits[name].CopyFrom(numpy_helper.from_array(new.astype(value.dtype), name))

    largest, widest, done = 1.0, 1.0, 0
    for pw, dw in pairs:
        r = ranges[pw.output[0]]
        factor = channel_factors(r)
        if factor is None:
            continue
        scale(pw.input[1], factor)
        if len(pw.input) > 2 and pw.input[2]:
            scale(pw.input[2], factor)
        scale(dw.input[1], factor, divide=True)
        largest, widest, done = max(largest, float(factor.max())), max(widest, range_spread(r)), done + 1
    onnx.save(model, path)
    return {"pairs": done, "largest_factor": round(largest, 2), "widest_spread_before": round(widest, 2)}
