"""INT8 stage: onnxruntime static quantization, QDQ format, per-channel weights.

Recipe: onnxruntime's pre-processing (``quant_pre_process``: symbolic shape
inference and graph optimisation), BSConv-U's pointwise → depthwise
intermediates equalised on the calibration samples (:mod:`.equalise`, exact in
float), then ``quantize_static`` with QDQ nodes,
per-channel int8 weights, uint8 activations ("U8S8") and MinMax calibration on
*real* samples. U8S8, not onnxruntime's default S8S8: on x86 (AVX2/AVX-512/VNNI)
onnxruntime's int8 kernels want unsigned activations; measured here S8S8 ran
MobileNetV2 at 1.07x and V3-large at 2.35x the FP32 latency, U8S8 at 0.55x and 0.85x. Weights use a
reduced range (7 bits, ``reduce_range``): x86 CPUs without VNNI (AVX2, AVX-512F)
multiply uint8 by int8 pairwise into int16, which saturates with full 8-bit
weights — on an AVX2 AMD EPYC the shipped model's int8 file agreed with PyTorch
on 76 % of inputs with 8-bit weights and on 100 % with 7-bit ones (the check
caught it). 7-bit weights run correctly everywhere, so the file does not depend
on the CPU that made it. Calibration data: see :mod:`exporter.calibration`.

Where int8 is used is decided by measurement (``--int8-plan measured``, see
:mod:`exporter.mixed_precision`): the calibration is computed once and cached,
each candidate plan is quantised from it, float convolutions in a mixed file
are shielded from onnxruntime's load-time weight quantisation
(:func:`shield_float_convs`), and the shipped file is compacted (:func:`compact`).
``--keep-fp32 NODE…`` leaves named nodes in float whatever the plan. A
per-layer pass (onnxruntime's QDQ debugging: activation SQNR of each quantised
tensor against the float model, and against itself before its own
quantise/dequantise pair) names the weakest layers and orders the gate's
fallbacks.
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from ...kit import (ArtifactRecord, DEFAULT_TOLERANCES, ExportContext, INPUT_NAME, Status, UserInputError,
                   calibration_data, gate_data)

from .export import keep_contract_metadata, onnx_source, op_histogram, opset_of
from .equalise import equalise_onnx

INT8_NAME = "model.int8.onnx"


@contextlib.contextmanager
def _quietly():
    """The quantiser logs advice at WARNING on the root logger and prints to stdout."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def array_reader(x: np.ndarray, batch: int):
    from .reader import ArrayReader
    return ArrayReader(x, batch)


def preprocess(src: Path, dst: Path) -> None:
    """onnxruntime's pre-processing (shape inference, basic optimisation): the float graph the int8
    one is made from, node for node (its node names are what ``--keep-fp32`` and the plan name)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process
    with _quietly():
        quant_pre_process(str(src), str(dst))


def quantize_int8(pre: Path, dst: Path, x: np.ndarray | None, batch: int, exclude: tuple[str, ...] = (),
                  calibration_cache: Path | None = None) -> None:
    """Quantise the pre-processed float model ``pre`` into ``dst``, leaving the nodes in ``exclude``
    in float. With ``calibration_cache``, the first call calibrates on ``x`` and writes the ranges
    there; later calls reuse them (``x`` may then be None)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    cached = calibration_cache is not None and calibration_cache.is_file()
    with _quietly():
        quantize_static(str(pre), str(dst), None if cached else array_reader(x, batch), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=list(exclude) or None,
                        calibration_cache_path=str(calibration_cache) if calibration_cache else None,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})


def shield_float_convs(path: Path) -> int:
    """Keep the float convolutions of a mixed file float on onnxruntime; returns how many it shielded.

    onnxruntime's ``WeightBiasQuantization`` pass (graph optimisation level 1, on by default)
    finds a Conv or Gemm whose input comes from a per-tensor DequantizeLinear and whose weight is a
    float initializer, and quantises that weight at session load: per-tensor, symmetric int8. For a
    depthwise convolution, whose channels' weights differ by orders of magnitude, that destroys the
    output (measured: a digits model with one depthwise convolution kept in float agreed with the
    float model on 47 % of inputs; 100 % once shielded). The shield gives each such convolution its
    own DequantizeLinear with the same scale repeated per channel (``axis=1``): the same values,
    but not the per-tensor pattern the pass looks for."""
    import onnx
    from onnx import helper, numpy_helper
    model = onnx.load(path)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    inserts = []
    for n in g.node:
        if n.op_type not in ("Conv", "Gemm") or len(n.input) < 2 or n.input[1] not in inits \
                or inits[n.input[1]].data_type != onnx.TensorProto.FLOAT:
            continue
        dq = producer.get(n.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[1] not in inits:
            continue
        scale = numpy_helper.to_array(inits[dq.input[1]])
        if scale.size != 1:
            continue
        has_zp = len(dq.input) > 2 and dq.input[2] in inits
        zp = numpy_helper.to_array(inits[dq.input[2]]) if has_zp else np.zeros((), np.uint8)
        w = list(inits[n.input[1]].dims)
        if n.op_type == "Conv":
            channels = w[1] * next((a.i for a in n.attribute if a.name == "group"), 1)
        else:
            channels = w[1] if next((a.i for a in n.attribute if a.name == "transB"), 0) else w[0]
        name = f"{n.input[0]}_for_float_{len(inserts)}"
        g.initializer.extend([numpy_helper.from_array(np.full(channels, scale.reshape(()), scale.dtype), name + "_scale"),
                              numpy_helper.from_array(np.full(channels, zp.reshape(()), zp.dtype), name + "_zero_point")])
        inserts.append((n, helper.make_node("DequantizeLinear", [dq.input[0], name + "_scale", name + "_zero_point"],
                                            [name], name=name, axis=1)))
    for consumer, node in inserts:
        g.node.insert(list(g.node).index(consumer), node)
        consumer.input[0] = node.output[0]
    if inserts:
        onnx.save(model, path)
    return len(inserts)


def compact(src: Path, dst: Path) -> dict:
    """Rewrite a QDQ file without what it does not need (the same graph, the same outputs):
    all-zero zero points of dequantised weights and biases (zero is the default), the intermediate
    shape annotations (value_info), quantiser-generated tensor names (replaced by short ones; the
    graph's input and output names stay) and the names of QuantizeLinear/DequantizeLinear nodes.
    Compute nodes keep their names. Returns the bytes each step saved."""
    import onnx
    from onnx import numpy_helper
    model = onnx.load(src)
    g = model.graph
    before = model.ByteSize()
    inits = {t.name: t for t in g.initializer}
    for n in g.node:
        if n.op_type == "DequantizeLinear" and len(n.input) == 3 and n.input[0] in inits and n.input[2] in inits:
            zp = numpy_helper.to_array(inits[n.input[2]])
            if zp.dtype in (np.int8, np.int32) and not zp.any():
                del n.input[2]
    used = {i for n in g.node for i in n.input}
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    after_zero_points = model.ByteSize()
    del g.value_info[:]
    after_value_info = model.ByteSize()
    io = {v.name for v in g.input} | {v.name for v in g.output}
    short: dict[str, str] = {}

    def rename(name: str) -> str:
        if not name or name in io:
            return name
        return short.setdefault(name, format(len(short), "x"))
    for t in g.initializer:
        t.name = rename(t.name)
    for n in g.node:
        n.input[:] = [rename(i) for i in n.input]
        n.output[:] = [rename(o) for o in n.output]
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            n.name = ""
    keep_contract_metadata(model)
    onnx.save(model, dst)
    return {"zero_points": before - after_zero_points, "value_info": after_zero_points - after_value_info,
            "names": after_value_info - model.ByteSize()}


def _check_node_names(model_path: Path, names: tuple[str, ...]) -> None:
    """--keep-fp32 names nodes of the graph the quantiser sees; an unknown one is a typo."""
    if not names:
        return
    import difflib

    import onnx
    known = {n.name for n in onnx.load(model_path, load_external_data=False).graph.node}
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=2)
            raise UserInputError(f"--keep-fp32 {name}: no such node in the graph int8 quantises"
                                 + (f"; did you mean {', '.join(close)}?" if close else
                                    "; the manifest's int8 weakest_layers lists node names"))


def layer_sensitivity(float_path: Path, qdq_path: Path, x: np.ndarray, batch: int) -> list[dict]:
    """Every quantised activation by SQNR (dB, lower is worse, worst first), with the node producing it:
    ``sqnr_db`` against the float model (the error accumulated up to that tensor) and
    ``local_sqnr_db`` against the same tensor before its own quantise/dequantise pair (the damage
    int8 does at that point alone)."""
    import onnx
    from onnxruntime.quantization import qdq_loss_debug as dbg

    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        f_aug, q_aug = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        dbg.modify_model_output_intermediate_tensors(str(float_path), str(f_aug))
        dbg.modify_model_output_intermediate_tensors(str(qdq_path), str(q_aug))
        sample = x[:min(len(x), 16 * batch)]
        f_act = dbg.collect_activations(str(f_aug), array_reader(sample, batch))
        q_act = dbg.collect_activations(str(q_aug), array_reader(sample, batch))
        matching = {k: v for k, v in dbg.create_activation_matching(q_act, f_act).items() if "float" in v}
        errors = dbg.compute_activation_error(matching)
    producers = {out: n.name for n in onnx.load(float_path).graph.node for out in n.output}
    rows = [{"tensor": t, "node": producers.get(t, t), "sqnr_db": float(e["xmodel_err"]),
             "local_sqnr_db": float(e.get("qdq_err", np.nan))}
            for t, e in errors.items() if "xmodel_err" in e and np.isfinite(e["xmodel_err"])]
    return sorted(rows, key=lambda r: r["sqnr_db"])


def interleaved_latencies(paths: dict[str, Path], x: np.ndarray, budget_s: float = 3.0, min_rounds: int = 8,
                          block: int = 6, settle: int = 2, threads: int | None = None) -> dict[str, np.ndarray]:
    """Per round, each file's median seconds per run over a block of ``block`` runs (the first
    ``settle`` dropped), the files' blocks in rotating order, for ``budget_s``: onnxruntime's CPU
    provider as an app runs it, on the export's ``threads`` (thread spinning on — worth ~35 % to fp32 and
    little to int8 on a 2-core AVX2 CPU, so timing without it would favour int8). Blocks, not
    single runs: a session's spinning threads slow the next session's first run."""
    from ...kit import onnxruntime
    ort = onnxruntime()
    sessions = {}
    for name, p in paths.items():
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
        sessions[name] = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
    feed = {INPUT_NAME: x}
    names = list(sessions)
    for s in sessions.values():
        for _ in range(3):
            s.run(None, feed)
    medians: dict[str, list[float]] = {n: [] for n in names}
    rounds, deadline = 0, time.perf_counter() + budget_s
    while rounds < min_rounds or time.perf_counter() < deadline:
        for n in names[rounds % len(names):] + names[:rounds % len(names)]:
            runs = []
            for _ in range(block):
                t = time.perf_counter()
                sessions[n].run(None, feed)
                runs.append(time.perf_counter() - t)
            medians[n].append(float(np.median(runs[settle:])))
        rounds += 1
    return {n: np.asarray(v) for n, v in medians.items()}


def export_int8(ctx: ExportContext) -> ArtifactRecord:
    from . import mixed_precision as mp
    t0 = time.perf_counter()
    source_name, src = onnx_source(ctx)
    x, labels, origin = calibration_data(ctx)
    batch = int(ctx.example.shape[0]) if not ctx.options.dynamic_batch else 1
    if len(x) >= batch:
        x, labels = x[:len(x) - len(x) % batch], None if labels is None else labels[:len(x) - len(x) % batch]
    else:
        x, labels = np.repeat(x, batch, axis=0)[:batch], None if labels is None else np.repeat(labels, batch)[:batch]
    dst = ctx.workdir / INT8_NAME
    user_kept = tuple(ctx.options.keep_fp32)
    details: dict = {}
    import onnx
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pre, cache = tmp / "pre.onnx", tmp / "calibration.json"
        preprocess(src, pre)
        _check_node_names(pre, user_kept)
        details["equalised"] = equalise_onnx(pre, x, batch, ctx.threads)
        groups = mp.GraphGroups.of(onnx.load(pre, load_external_data=False))
        built: dict[tuple[str, ...], Path] = {}

        def build(kept: list[str]) -> Path:
            key = tuple(kept)
            if key not in built:
                built[key] = tmp / f"int8_{len(built)}.onnx"
                quantize_int8(pre, built[key], x, batch, user_kept + tuple(groups.nodes(kept)), cache)
                shield_float_convs(built[key])
            return built[key]
        full = build([])
        sensitivity = layer_sensitivity(pre, full, x, batch)
        chosen = full
        if ctx.options.int8_plan == "measured" and groups.groups:
            gx, gy, gate_origin = gate_data(ctx, x, labels)
            gx = gx[:len(gx) - len(gx) % batch] if len(gx) >= batch else np.repeat(gx, batch, axis=0)[:batch]
            gy = gy[:len(gx)] if gy is not None else None
            reference = mp.logits(pre, gx, batch, ctx.threads)
            tol = DEFAULT_TOLERANCES["int8"]
            local = sorted(sensitivity, key=lambda r: r["local_sqnr_db"] if np.isfinite(r["local_sqnr_db"]) else np.inf)
            order = list(dict.fromkeys(g for g in (groups.tensor_group.get(r["tensor"]) for r in local) if g))
            one = ctx.example.detach().cpu().numpy()[:batch].astype(np.float32)

            def time_models(files: dict[str, Path]) -> dict[str, np.ndarray]:
                return interleaved_latencies({"fp32": pre, **files}, one, threads=ctx.threads)

            def gate(path: Path) -> dict:
                return mp.top1_gate(path, reference, gx, batch, tol.min_top1_agreement, gy, tol.max_accuracy_drop,
                                    threads=ctx.threads)
            plan, chosen = mp.decide(groups.groups, mp.profile_groups(pre, one, groups, threads=ctx.threads),
                                     mp.profile_groups(full, one, groups, threads=ctx.threads), build, time_models, gate, order,
                                     weights=groups.weights)
            details["plan"] = {"method": "measured: onnxruntime's profiler per group (float vs all-int8) proposes "
                               "float regions at three granularities; the fastest file (timed interleaved with "
                               "the others; a mixed one must be surely and at least 5 % faster than all-int8 and "
                               "keep at most half its weights in float) is gated on agreement with float", "gate_inputs": gate_origin,
                               **plan.to_dict()}
        elif ctx.options.int8_plan == "measured":
            details["plan"] = {"method": "skipped: the graph's node names carry no module paths to group by",
                               "chosen": "all int8"}
        saved = compact(chosen, dst)
    model = onnx.load(dst)
    return ArtifactRecord(
        format="int8", status=Status.OK, path=INT8_NAME, seconds=time.perf_counter() - t0,
        nodes=len(model.graph.node), opset=opset_of(ctx),
        details={"precision": "int8", "source": source_name, "calibration": origin,
                 "calibration_samples": int(len(x)), "recipe": "QDQ, per-channel int8 weights (symmetric, 7-bit reduced range), "
                 "uint8 activations (asymmetric), MinMax" + (
                     f"; {details['equalised']['pairs']} pointwise → depthwise intermediates equalised on the "
                     "calibration samples first" if details["equalised"]["pairs"] else ""),
                 "kept_fp32": list(user_kept),
                 **details, "weakest_layers": sensitivity[:5], "op_types": op_histogram(model),
                 "bytes_saved_by_compaction": saved,
                 "bytes_ratio_to_fp32": round((dst.stat().st_size) / src.stat().st_size, 3)})
