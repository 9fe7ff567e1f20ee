"""CoreML without a Mac: a NumPy interpreter of the ML Program in an ``.mlpackage``.

The program is read with coremltools' own reader (``milproto.load``) and run op
by op. fp16 programs are honoured: an fp16 input, a ``cast`` to fp16, and every op whose
output type is fp16, rounds its result to float16 (the arithmetic inside an op
runs in float32, as on Apple's GPU and Neural Engine, which accumulate wider
than they store). An op outside :data:`OPS` raises :class:`UnsupportedOp`, which
a check reports as *skipped*, never as passed.
"""
from __future__ import annotations

import contextlib
import json
import io
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...kit import InputSpec, Runner, RunnerUnavailable, UnsupportedOp, pixel_normalization


def _pads(pad_type: str, pad, x_hw, k_hw, strides, dilations) -> list[tuple[int, int]]:
    out = []
    for i in range(2):
        eff = (k_hw[i] - 1) * dilations[i] + 1
        if pad_type == "valid":
            out.append((0, 0))
        elif pad_type in ("same", "same_lower"):
            o = -(-x_hw[i] // strides[i])
            total = max((o - 1) * strides[i] + eff - x_hw[i], 0)
            small, big = total // 2, total - total // 2
            out.append((big, small) if pad_type == "same_lower" else (small, big))
        elif pad_type == "custom":
            out.append((int(pad[2 * i]), int(pad[2 * i + 1])))
        else:
            raise UnsupportedOp(f"pad_type {pad_type}")
    return out


def _windows(x: np.ndarray, k_hw, strides, dilations, pads, value=0.0) -> np.ndarray:
    """[N, C, H, W] → strided view [N, C, Ho, Wo, kh, kw]."""
    x = np.pad(x, ((0, 0), (0, 0), pads[0], pads[1]), constant_values=value)
    eff = [(k_hw[i] - 1) * dilations[i] + 1 for i in range(2)]
    w = np.lib.stride_tricks.sliding_window_view(x, eff, axis=(2, 3))
    return w[:, :, ::strides[0], ::strides[1], ::dilations[0], ::dilations[1]]


def conv(x, weight, bias=None, strides=(1, 1), pad_type="valid", pad=(0, 0, 0, 0), dilations=(1, 1), groups=1):
    x = x.astype(np.float32)
    weight = weight.astype(np.float32)
    o, cg, kh, kw = weight.shape
    strides, dilations = [int(s) for s in strides], [int(d) for d in dilations]
    pads = _pads(pad_type, pad, x.shape[2:], (kh, kw), strides, dilations)
    n, c = x.shape[:2]
    g = int(groups)
    if g == 1 and kh == kw == 1 and all(p == (0, 0) for p in pads):
        # pointwise: one matrix product over the (strided) pixels, no window view
        x = x[:, :, ::strides[0], ::strides[1]]
        y = np.matmul(weight.reshape(o, c), x.reshape(n, c, -1)).reshape(n, o, *x.shape[2:])
        return y if bias is None else y + bias.astype(np.float32).reshape(1, -1, 1, 1)
    win = _windows(x, (kh, kw), strides, dilations, pads)
    ho, wo = win.shape[2:4]
    if g == 1:
        y = np.tensordot(win, weight, axes=([1, 4, 5], [1, 2, 3]))  # [N, Ho, Wo, O]
        y = y.transpose(0, 3, 1, 2)
    elif g == c and cg == 1 and o == c:
        # depthwise: kh·kw shifted multiply-adds over strided views, no im2col copy
        y = np.zeros((n, c, ho, wo), np.float32)
        tap = np.empty_like(y)
        for i in range(kh):
            for j in range(kw):
                np.multiply(win[:, :, :, :, i, j], weight[None, :, 0, i, j, None, None], out=tap)
                y += tap
    elif g == c and cg == 1:
        m = o // c
        w = weight.reshape(c, m, kh, kw)
        y = np.einsum("nchwij,cmij->ncmhw", win, w, optimize=True).reshape(n, o, ho, wo)
    else:
        win = win.reshape(n, g, c // g, ho, wo, kh, kw)
        w = weight.reshape(g, o // g, cg, kh, kw)
        y = np.einsum("ngchwij,gocij->ngohw", win, w, optimize=True).reshape(n, o, ho, wo)
    if bias is not None:
        y = y + bias.astype(np.float32).reshape(1, -1, 1, 1)
    return y


def _pool(x, kernel_sizes, strides, pad_type, pad, reduce, pad_value, exclude_padding=False, ceil_mode=False):
    if ceil_mode:
        raise UnsupportedOp("pooling with ceil_mode")
    k = [int(v) for v in kernel_sizes]
    s = [int(v) for v in strides]
    pads = _pads(pad_type, pad, x.shape[2:], k, s, (1, 1))
    win = _windows(x.astype(np.float32), k, s, (1, 1), pads, value=pad_value)
    if reduce == "max":
        return win.max(axis=(4, 5))
    total = win.sum(axis=(4, 5))
    if exclude_padding and any(p != (0, 0) for p in pads):
        ones = _windows(np.ones((1, 1) + x.shape[2:], np.float32), k, s, (1, 1), pads)
        return total / ones.sum(axis=(4, 5))
    return total / (k[0] * k[1])


def _axes(axes, ndim):
    return None if axes is None else tuple(int(a) % ndim for a in np.atleast_1d(axes))


def _batch_norm(x, mean, variance, gamma=None, beta=None, epsilon=1e-5):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (x - mean.reshape(shape)) / np.sqrt(variance.reshape(shape) + epsilon)
    if gamma is not None:
        y = y * gamma.reshape(shape)
    if beta is not None:
        y = y + beta.reshape(shape)
    return y


def _reshape(x, shape):
    shape = [int(s) for s in shape]
    if shape and shape[0] == 1 and x.shape[0] != 1:  # run a batch through a batch-1 program
        shape[0] = x.shape[0]
    return x.reshape(shape)


_DTYPES = {"fp16": np.float16, "fp32": np.float32, "int32": np.int32, "bool": np.bool_, "fp64": np.float64}


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def _along(v, axis, ndim: int):
    """A quantisation parameter broadcast against the data: a scalar as it is, a vector on ``axis``."""
    v = np.asarray(v, dtype=np.float32)
    if v.ndim == 0 or axis is None:
        return v
    shape = [1] * ndim
    shape[int(axis)] = -1
    return v.reshape(shape)


def _quantize(input, scale, output_dtype, zero_point=None, axis=None):
    """iOS 17 ``quantize``: clip(round(x / scale) + zero_point) in int8 or uint8 (round half to even)."""
    dtype = {"int8": np.int8, "uint8": np.uint8}.get(str(output_dtype))
    if dtype is None:
        raise UnsupportedOp(f"quantize to {output_dtype}")
    x = np.asarray(input, dtype=np.float32)
    zero = 0 if zero_point is None else _along(zero_point, axis, x.ndim)
    q = np.rint(x / _along(scale, axis, x.ndim)) + zero
    info = np.iinfo(dtype)
    return np.clip(q, info.min, info.max).astype(dtype)


def _dequantize(input, scale, zero_point=None, axis=None):
    """iOS 17 ``dequantize``: scale * (q - zero_point)."""
    q = np.asarray(input, dtype=np.float32)
    zero = 0 if zero_point is None else _along(zero_point, axis, q.ndim)
    return (_along(scale, axis, q.ndim) * (q - zero)).astype(np.float32)


OPS: dict[str, Callable[..., Any]] = {
    "conv": conv,
    "add": lambda x, y: np.add(x, y),
    "sub": lambda x, y: np.subtract(x, y),
    "mul": lambda x, y: np.multiply(x, y),
    "real_div": lambda x, y: np.divide(x, y),
    "maximum": lambda x, y: np.maximum(x, y),
    "minimum": lambda x, y: np.minimum(x, y),
    "relu": lambda x: np.maximum(x, 0),
    "relu6": lambda x: np.clip(x, 0, 6),
    "thresholded_relu": lambda x, alpha=1.0: np.where(x > alpha, x, 0).astype(x.dtype),
    "clip": lambda x, alpha, beta: np.clip(x, alpha, beta),
    "sigmoid": _sig,
    "sigmoid_hard": lambda x, alpha=0.2, beta=0.5: np.clip(alpha * x + beta, 0, 1),
    "silu": lambda x: x * _sig(x),
    "batch_norm": _batch_norm,
    "reduce_mean": lambda x, axes=None, keep_dims=False: np.mean(x, axis=_axes(axes, x.ndim), keepdims=bool(keep_dims)),
    "avg_pool": lambda x, kernel_sizes, strides, pad_type, pad=(0, 0, 0, 0), exclude_padding_from_average=False, ceil_mode=False:
        _pool(x, kernel_sizes, strides, pad_type, pad, "avg", 0.0, exclude_padding_from_average, ceil_mode),
    "max_pool": lambda x, kernel_sizes, strides, pad_type, pad=(0, 0, 0, 0), ceil_mode=False:
        _pool(x, kernel_sizes, strides, pad_type, pad, "max", -np.inf, False, ceil_mode),
    "matmul": lambda x, y, transpose_x=False, transpose_y=False:
        np.matmul(np.swapaxes(x, -1, -2) if transpose_x else x, np.swapaxes(y, -1, -2) if transpose_y else y),
    "linear": lambda x, weight, bias=None: x @ weight.T + (0 if bias is None else bias),
    "reshape": _reshape,
    "squeeze": lambda x, axes=None: np.squeeze(x, axis=_axes(axes, x.ndim)),
    "expand_dims": lambda x, axes: np.expand_dims(x, axis=tuple(int(a) for a in np.atleast_1d(axes))),
    "concat": lambda values, axis, interleave=False: np.concatenate(values, axis=int(axis)),
    "transpose": lambda x, perm: np.transpose(x, [int(p) for p in perm]),
    "identity": lambda x: x,
    "cast": lambda x, dtype: x.astype(_DTYPES[str(dtype)]),
    "quantize": _quantize,
    "dequantize": _dequantize,
}


def load_spec(path: str | Path):
    """The package's model spec (description and ML Program), without loading weights or running it."""
    from .backend import import_coremltools
    ct = import_coremltools()
    if not (Path(path) / "Manifest.json").is_file():
        raise FileNotFoundError(f"{path} is not an .mlpackage")
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ct.models.MLModel(str(path), skip_model_load=True).get_spec()


class MilProgram:
    """An ML Program's main function, ready to interpret."""

    def __init__(self, path: str | Path):
        from .backend import import_coremltools
        ct = import_coremltools()
        from coremltools.converters.mil.frontend.milproto.load import load as load_mil
        path = Path(path)
        if not (path / "Manifest.json").is_file():
            raise FileNotFoundError(f"{path} is not an .mlpackage")
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
            spec = mlmodel.get_spec()
            program = load_mil(spec, specification_version=spec.specificationVersion,
                               file_weights_dir=mlmodel.weights_dir)
        self.spec = spec
        self.function = program.functions["main"]
        self.input_names = list(self.function.inputs)
        self.input_shapes = {k: tuple(v.shape) for k, v in self.function.inputs.items()}
        self.ops = list(self.function.operations)
        self.last_uses = self._last_uses()
        self.op_types = sorted({op.op_type for op in self.ops})
        self.classes: list[str] | None = None
        for op in self.ops:
            if op.op_type == "classify":
                self.classes = [str(c) for c in op.inputs["classes"].val]
        desc = spec.description
        self.output_names = [o.name for o in desc.output]
        self.scores_name = desc.predictedProbabilitiesName or self.output_names[-1]
        self.metadata = dict(desc.metadata.userDefined)
        self.image = desc.input[0].type.imageType if desc.input[0].type.WhichOneof("Type") == "imageType" else None

    def image_pixels(self, x: np.ndarray, spec) -> np.ndarray:
        """The image planes an image-input program receives for the float tensor ``x`` (the ONNX files'
        input, its channels already in the spec's colour order, which is the ImageType's layout):
        pixels 0..255, by inverting the contract's pixel rule for ``spec``
        (the bundle's input spec, never the package's own metadata, which a changed package could move
        together with its scale and bias). Pixels stay float, not rounded to 8 bits, so the comparison
        measures the program's preprocessing, not the app's quantisation."""
        mean, std = pixel_normalization(spec)
        shape = (1, len(mean), 1, 1)
        pixels = x.astype(np.float32) * np.asarray(std, np.float32).reshape(shape) + np.asarray(
            mean, np.float32).reshape(shape)
        space = {10: "GRAYSCALE", 20: "RGB", 30: "BGR"}.get(self.image.colorSpace, self.image.colorSpace)
        if space not in ("RGB", "BGR"):
            raise UnsupportedOp(f"image colour space {space}")
        if space != spec.color_order:   # a fault of the file, not a gap of this interpreter
            raise ValueError(f"the image input's layout is {space}, the input spec's colour order {spec.color_order}")
        return pixels

    def _last_uses(self) -> list[list[str]]:
        """For each op, the values no later op reads: ``run`` drops them after it, so an
        activation lives only as long as it is needed (all of them kept, a V2 at 224 held
        1.5 GiB)."""
        last: dict[str, int] = {}

        def names(var):
            if isinstance(var, (list, tuple)):
                for v in var:
                    yield from names(v)
            else:
                yield var.name

        for i, op in enumerate(self.ops):
            for var in op.inputs.values():
                for name in names(var):
                    last[name] = i
        outputs = {v.name for v in self.function.outputs}
        drops: list[list[str]] = [[] for _ in self.ops]
        for name, i in last.items():
            if name not in outputs:
                drops[i].append(name)
        return drops

    def unsupported_ops(self) -> list[str]:
        return [t for t in self.op_types
                if t not in OPS and t not in ("const", "classify") and not t.startswith("constexpr_")]

    def run(self, x: np.ndarray, spec=None, observe: Callable[[str, Any], None] | None = None,
            weights: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Logits [N, classes] for input x [N, C, H, W] (float32) as ``spec`` (an InputSpec) says;
        ``observe(name, value)`` sees every op's output on the way (activation ranges); ``weights``
        replaces constants by name (what a compression would make of them: measuring sensitivity)."""
        missing = self.unsupported_ops()
        if missing:
            raise UnsupportedOp(f"op {', '.join(missing)} not supported")
        if self.image is not None:
            if spec is None:   # no spec given: the package's own claim (never in the check)
                spec = InputSpec.from_dict(json.loads(self.metadata.get("input_spec", "{}")))
            x = self.image_pixels(x, spec)
        in_var = self.function.inputs[self.input_names[0]]
        if "fp16" in str(in_var.dtype):  # an fp16 program input (iOS16+ fp16 models)
            x = x.astype(np.float16)
        env: dict[str, Any] = {**(weights or {}), self.input_names[0]: x}

        def value(var):
            if isinstance(var, (list, tuple)):
                return [value(v) for v in var]
            if var.name in env:
                return env[var.name]
            if var.val is not None:
                return var.val
            raise KeyError(f"MIL value {var.name} used before it is defined")

        for op, drops in zip(self.ops, self.last_uses):
            if op.op_type == "const":
                continue
            if op.op_type.startswith("constexpr_"):  # compressed weights (palettised, sparse, quantised)
                val = op.outputs[0].val
                if val is None:
                    val = op.materialized_val_inference()  # coremltools' own decompression
                env[op.outputs[0].name] = np.asarray(val)
                continue
            if op.op_type == "classify":
                return np.asarray(value(op.inputs["probabilities"]), dtype=np.float32)
            args = {k: value(v) for k, v in op.inputs.items()}
            result = OPS[op.op_type](**args)
            out_var = op.outputs[0]
            if out_var.dtype is not None and "fp16" in str(out_var.dtype):
                result = np.asarray(result).astype(np.float16)
            elif isinstance(result, np.ndarray) and result.dtype == np.float64:
                result = result.astype(np.float32)
            env[out_var.name] = result
            if observe is not None:
                observe(out_var.name, result)
            for name in drops:
                env.pop(name, None)
        outputs = self.function.outputs
        return np.asarray(env[outputs[-1].name], dtype=np.float32)


class MilReferenceRunner(Runner):
    """CoreML ``.mlpackage`` run by the NumPy MIL interpreter (any OS). It verifies; it is not
    timed (an interpreter's speed says nothing about a phone's)."""

    name = "coreml-mil-reference"
    kinds = ("mlpackage",)
    timeable = False
    max_batch = 2  # the interpreter's im2col views grow with the batch: bound peak memory

    def __init__(self, path: str | Path, *, provider: str = "cpu", threads: int | None = None,
                 spinning: bool = True):
        super().__init__(path, provider=provider, threads=threads, spinning=spinning)
        self.program: MilProgram | None = None

    def unavailable_reason(self) -> str | None:
        from importlib.util import find_spec
        return None if find_spec("coremltools") else "coremltools is not installed"

    def load(self) -> "MilReferenceRunner":
        self.program = MilProgram(self.path)
        self.input_names = list(self.program.input_names)
        self.output_names = list(self.program.output_names)
        self.input_shape = self.program.input_shapes[self.input_names[0]]
        return self

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.program is None:
            self.load()
        (x,) = inputs.values()
        return {self.program.scores_name: self.program.run(np.asarray(x, dtype=np.float32), self.input_spec)}

    def metadata(self) -> dict[str, str] | None:
        return dict(self.program.metadata) if self.program is not None else None

    def labels(self) -> list[str] | None:
        return list(self.program.classes) if self.program is not None and self.program.classes is not None else None

    def declared_problem(self, input_shape: list[int]) -> str | None:
        return description_problem(self.program.spec.description, input_shape) if self.program is not None else None


class CoreMLRunner(Runner):
    """CoreML ``.mlpackage`` run by Apple's runtime (``MLModel.predict``): macOS only."""

    name = "coreml-apple"
    kinds = ("mlpackage",)

    def __init__(self, path: str | Path, *, provider: str = "cpu", threads: int | None = None,
                 spinning: bool = True):
        super().__init__(path, provider=provider, threads=threads, spinning=spinning)
        self.model = None
        self.classes: list[str] = []

    def unavailable_reason(self) -> str | None:
        import platform
        if platform.system() != "Darwin":
            return f"Apple's CoreML runtime runs on macOS only (this is {platform.system()})"
        return None

    def load(self) -> "CoreMLRunner":
        reason = self.unavailable_reason()
        if reason:
            raise RunnerUnavailable(reason)
        from .backend import import_coremltools
        ct = import_coremltools()
        self.model = ct.models.MLModel(str(self.path))
        program = MilProgram(self.path)
        self.classes = program.classes or []
        self.scores_name = program.scores_name
        self.input_names, self.output_names = program.input_names, program.output_names
        self.input_shape = program.input_shapes[self.input_names[0]]
        self.fixed_batch = int(self.input_shape[0])
        return self

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.model is None:
            self.load()
        (name, x), = inputs.items()
        rows = []
        for i in range(0, len(x), self.fixed_batch):
            out = self.model.predict({name: x[i:i + self.fixed_batch]})[self.scores_name]
            rows.append([out[c] for c in self.classes])
        return {self.scores_name: np.asarray(rows, dtype=np.float32)}


def description_problem(desc, shape: list[int]) -> str | None:
    """The CoreML model description an app builds its inputs from and reads its outputs by, held
    to the export's input shape; None when it agrees."""
    kind = desc.input[0].type.WhichOneof("Type")
    if kind == "imageType":
        image = desc.input[0].type.imageType
        if [image.height, image.width] != shape[2:]:
            return f"the image input is {image.width}x{image.height}, the export's {shape[3]}x{shape[2]}"
    elif kind == "multiArrayType":
        if list(desc.input[0].type.multiArrayType.shape) != shape:
            return f"the input is declared {list(desc.input[0].type.multiArrayType.shape)}, the export's {shape}"
    else:
        return f"the input is a {kind}, not an image or a multi-array"
    for out in desc.output:
        t = out.type.WhichOneof("Type")
        if out.name == desc.predictedFeatureName and t != "stringType":
            return f"the predicted label '{out.name}' is a {t}, not the string labels apps read"
        if out.name == desc.predictedProbabilitiesName and t == "dictionaryType" and \
                out.type.dictionaryType.WhichOneof("KeyType") != "stringKeyType":
            return f"the probabilities '{out.name}' are keyed by {out.type.dictionaryType.WhichOneof('KeyType')}, not labels"
    return None


def program_precision(path: Path) -> str | None:
    """What the ML Program computes in, from the spec (never its metadata): ``w8a8`` when it quantises
    activations (``quantize`` ops) and its weights are int8, ``palette-<N>bit`` when its
    weights are look-up tables of 2**N values (``palette-mixed`` when the tables differ in width),
    ``int8-weights`` when they are int8 with a scale, else
    fp16 when any op computes in fp16, else fp32; ``compressed`` for a compression this tool does not
    make (no row allows it). None when it cannot be read here (its runner then reports that)."""
    from importlib.util import find_spec
    if find_spec("coremltools") is None:
        return None
    try:
        spec = load_spec(path)
    except Exception:  # noqa: BLE001 - an unreadable package fails when its runner loads it
        return None
    fp16, int8, uint8 = 10, 21, 25   # MILSpec.DataType: FLOAT16, INT8, UINT8
    half, lut_widths, int8_weights, other, int8_activations = False, set(), False, False, False
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                if op.type == "constexpr_lut_to_dense" and "lut" in op.attributes:
                    size = [d.constant.size for d in op.attributes["lut"].type.tensorType.dimensions]
                    lut_widths.add(max(1, (int(size[-1]) - 1).bit_length()) if size else 8)
                elif op.type == "constexpr_affine_dequantize" and "quantized_data" in op.attributes:
                    dtype = op.attributes["quantized_data"].type.tensorType.dataType
                    int8_weights |= dtype in (int8, uint8)
                    other |= dtype not in (int8, uint8)
                elif op.type.startswith("constexpr_"):
                    other = True
                elif op.type == "quantize":
                    int8_activations = True
                half |= any(o.type.tensorType.dataType == fp16 for o in op.outputs)
    if other or (int8_activations and (lut_widths or not int8_weights)):
        return "compressed"
    if int8_activations:
        return "w8a8"
    if len(lut_widths) > 1:
        return "palette-mixed"
    if lut_widths:
        return f"palette-{lut_widths.pop()}bit"
    if int8_weights:
        return "int8-weights"
    return "fp16" if half else "fp32"
