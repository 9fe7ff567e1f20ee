"""INT8 stage: onnxruntime static quantization, QDQ format, per-channel weights.

Recipe: onnxruntime's pre-processing (``quant_pre_process``: symbolic shape
inference and graph optimisation), then ``quantize_static`` with QDQ nodes,
per-channel int8 weights, uint8 activations ("U8S8") and MinMax calibration on
*real* samples. U8S8, not onnxruntime's default S8S8: on x86 (AVX2/AVX-512/VNNI)
onnxruntime's int8 kernels want unsigned activations; measured here S8S8 ran
MobileNetV2 at 1.07x and V3-large at 2.35x the FP32 latency, U8S8 at 0.55x and 0.85x. Weights use a
reduced range (7 bits, ``reduce_range``): x86 CPUs without VNNI (AVX2, AVX-512F)
multiply uint8 by int8 pairwise into int16, which saturates with full 8-bit
weights — on an AVX2 AMD EPYC the shipped model's int8 file agreed with PyTorch
on 76 % of inputs with 8-bit weights and on 100 % with 7-bit ones (the check
caught it). 7-bit weights run correctly everywhere, so the file does not depend
on the CPU that made it. Calibration data, in order of preference: ``--calibration FILE.npz``
(an ``input`` array); for a digits model, 256 images of the digits' *training*
split (never the held-out split the check measures on); ``--calibration random``
(uniform noise: for latency work only — the quality gate says what it costs).
``--keep-fp32 NODE…`` leaves named nodes in float. When the artifact's outputs
drift, a per-layer pass (onnxruntime's QDQ debugging: activation SQNR of each
quantised tensor against the float model) names the weakest layers, to keep in
fp32.
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from ..models.data import digits_to_input, is_digits_model, load_npz_inputs, split_digits
from ..models.errors import UserInputError

from .context import INPUT_NAME, ExportContext
from .onnx_export import op_histogram
from .records import ArtifactRecord, Status

INT8_NAME = "model.int8.onnx"
CALIBRATION_SAMPLES = 256


def _reader_base():
    from onnxruntime.quantization import CalibrationDataReader
    return CalibrationDataReader


class ArrayReader(_reader_base()):
    """onnxruntime's CalibrationDataReader over an [N, C, H, W] array, ``batch`` samples at a time."""

    def __init__(self, x: np.ndarray, batch: int = 1, input_name: str = INPUT_NAME):
        if x.ndim != 4 or len(x) < 1:
            raise UserInputError(f"calibration data must be [N, C, H, W] with N >= 1, got shape {list(x.shape)}")
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.batch = batch
        self.input_name = input_name
        self.i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i + self.batch > len(self.x):
            return None
        out = {self.input_name: self.x[self.i:self.i + self.batch]}
        self.i += self.batch
        return out

    def rewind(self) -> None:
        self.i = 0

    def __len__(self) -> int:
        return len(self.x) // self.batch


def calibration_data(ctx: ExportContext) -> tuple[np.ndarray, str]:
    """The calibration inputs for ``ctx`` and where they came from."""
    source = ctx.options.calibration
    spec = ctx.spec
    if source == "random":
        lo, hi = spec.value_range
        x = np.random.default_rng(0).uniform(lo, hi, (64,) + spec.shape).astype(np.float32)
        return x, "random uniform (latency work only)"
    if source:
        x, _ = load_npz_inputs(source, spec)
        return x, str(source)
    if is_digits_model(spec):
        images, _, _, _ = split_digits()
        idx = np.random.default_rng(0).permutation(len(images))[:CALIBRATION_SAMPLES]
        return digits_to_input(images[idx], spec.size), f"{len(idx)} digits from the training split"
    raise UserInputError("int8 needs real calibration samples: pass --calibration FILE.npz (an 'input' array "
                         f"[N, {', '.join(map(str, spec.shape))}]), or --calibration random for latency work only")


def quantize_int8(src: Path, dst: Path, x: np.ndarray, batch: int, keep_fp32: tuple[str, ...] = (),
                  preprocessed: Path | None = None) -> None:
    """Quantise ``src`` into ``dst``; keep the pre-processed float model at ``preprocessed`` if given
    (the float graph the int8 one is made from, tensor for tensor, for :func:`layer_sensitivity`)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = preprocessed or Path(tmp) / "pre.onnx"
        quiet = logging.getLogger()
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # the quantiser logs advice at WARNING on the root logger
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                quant_pre_process(str(src), str(pre))
                _check_node_names(pre, keep_fp32)
                quantize_static(str(pre), str(dst), ArrayReader(x, batch), quant_format=QuantFormat.QDQ,
                                per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                calibrate_method=CalibrationMethod.MinMax,
                                nodes_to_exclude=list(keep_fp32) or None,
                                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        finally:
            quiet.setLevel(level)


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


def layer_sensitivity(float_path: Path, qdq_path: Path, x: np.ndarray, batch: int, worst: int = 5) -> list[dict]:
    """The ``worst`` quantised activations by SQNR (dB, lower is worse), with the nodes producing them."""
    import onnx
    from onnxruntime.quantization import qdq_loss_debug as dbg

    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        f_aug, q_aug = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        dbg.modify_model_output_intermediate_tensors(str(float_path), str(f_aug))
        dbg.modify_model_output_intermediate_tensors(str(qdq_path), str(q_aug))
        sample = x[:min(len(x), 16 * batch)]
        f_act = dbg.collect_activations(str(f_aug), ArrayReader(sample, batch))
        q_act = dbg.collect_activations(str(q_aug), ArrayReader(sample, batch))
        matching = {k: v for k, v in dbg.create_activation_matching(q_act, f_act).items() if "float" in v}
        errors = dbg.compute_activation_error(matching)
    producers = {out: n.name for n in onnx.load(float_path).graph.node for out in n.output}
    rows = [{"tensor": t, "node": producers.get(t, t), "sqnr_db": float(e["xmodel_err"])}
            for t, e in errors.items() if "xmodel_err" in e and np.isfinite(e["xmodel_err"])]
    return sorted(rows, key=lambda r: r["sqnr_db"])[:worst]


def export_int8(ctx: ExportContext) -> ArtifactRecord:
    t0 = time.perf_counter()
    source_name, src = ctx.onnx_source()
    x, origin = calibration_data(ctx)
    batch = int(ctx.example.shape[0]) if not ctx.options.dynamic_batch else 1
    x = x[:len(x) - len(x) % batch] if len(x) >= batch else np.repeat(x, batch, axis=0)[:batch]
    dst = ctx.workdir / INT8_NAME
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quantize_int8(src, dst, x, batch, ctx.options.keep_fp32, preprocessed=pre)
        sensitivity = layer_sensitivity(pre, dst, x, batch)
    import onnx
    model = onnx.load(dst)
    return ArtifactRecord(
        format="int8", status=Status.OK, path=INT8_NAME, seconds=time.perf_counter() - t0,
        nodes=len(model.graph.node), opset=ctx.opset,
        details={"precision": "int8", "source": source_name, "calibration": origin,
                 "calibration_samples": int(len(x)), "recipe": "QDQ, per-channel int8 weights (symmetric, 7-bit reduced range), "
                 "uint8 activations (asymmetric), MinMax", "kept_fp32": list(ctx.options.keep_fp32),
                 "weakest_layers": sensitivity, "op_types": op_histogram(model),
                 "bytes_ratio_to_fp32": round((dst.stat().st_size) / src.stat().st_size, 3)})
