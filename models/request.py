"""What a command was given to name its model: the request, its input-spec options and spec files.

Every command that takes a model builds a :class:`ModelRequest` from its flags
(:func:`request_from_options`); :func:`.loaders.resolve_request` loads it. A model outside the zoo has
no input spec of its own: it comes from ``--input-spec spec.json`` or ``--input-size`` (with
``--mean``/``--std``/``--labels``), and is an error that names those flags when missing
(:func:`spec_for`). A zoo model keeps its own.
"""
from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..kernel.errors import UserInputError
from ..kernel.limits import check_input_size
from ..kernel.safe_io import loads_json, read_regular
from .registry import InputSpec

MODEL_ARG = re.compile(r"^(?P<key>[A-Za-z_]\w*)=(?P<value>.*)$", re.S)
MAX_SPEC_BYTES = 1 << 20
MAX_LABELS = 100_000
SPEC_KEYS = {"size", "channels", "num_classes", "mean", "std", "value_range", "color_order", "labels",
             "normalization"}
SPEC_HINT = "pass --input-spec spec.json, or --input-size N (with --mean, --std, --labels as needed)"


@dataclass(frozen=True)
class SpecOptions:
    """The input-spec flags: a JSON file, or the pieces given one by one."""

    spec_file: Path | None = None
    input_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    labels_file: Path | None = None

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.spec_file, self.input_size, self.mean, self.std, self.labels_file))

    def cli_args(self, include_size: bool = True) -> list[str]:
        args: list[str] = []
        if self.spec_file is not None:
            args += ["--input-spec", str(self.spec_file)]
        if self.input_size is not None and include_size:
            args += ["--input-size", str(self.input_size)]
        if self.mean is not None:
            args += ["--mean", ",".join(repr(v) for v in self.mean)]
        if self.std is not None:
            args += ["--std", ",".join(repr(v) for v in self.std)]
        if self.labels_file is not None:
            args += ["--labels", str(self.labels_file)]
        return args


def request_from_options(arch, checkpoint, model, model_arg, program, input_spec=None, input_size=None,
                         mean=None, std=None, labels=None) -> "ModelRequest":
    """A command's model options as one request; ``--input-size`` is part of the spec only for a
    model outside the zoo (a zoo model keeps its own spec and exports at that size)."""
    outside = model is not None or program is not None
    if input_size is not None:
        check_input_size(input_size)
    spec = SpecOptions(spec_file=input_spec, input_size=input_size if outside else None,
                       mean=parse_floats(mean, "--mean"), std=parse_floats(std, "--std"), labels_file=labels)
    return ModelRequest(arch=arch, checkpoint=checkpoint, entry_point=model, model_args=tuple(model_arg),
                        program=program, spec=spec)


@dataclass(frozen=True)
class ModelRequest:
    """Everything a command was told about its model."""

    arch: str | None = None
    checkpoint: Path | None = None
    entry_point: str | None = None
    model_args: tuple[str, ...] = ()
    program: Path | None = None
    spec: SpecOptions = field(default_factory=SpecOptions)

    @property
    def outside_zoo(self) -> bool:
        return self.entry_point is not None or self.program is not None


def _check_exclusive(req: ModelRequest) -> None:
    given = [flag for flag, v in (("ARCH", req.arch), ("--model", req.entry_point), ("--program", req.program))
             if v is not None]
    if len(given) > 1:
        raise UserInputError(f"{' and '.join(given)} each name a model; pass only one")
    if req.model_args and req.entry_point is None:
        raise UserInputError("--model-arg needs --model package.module:factory")


def parse_model_args(args: tuple[str, ...] | list[str]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for a in args:
        m = MODEL_ARG.match(a)
        if not m:
            raise UserInputError(f"--model-arg {a!r} is not key=value (a Python identifier, '=', a value)")
        pairs.append((m["key"], m["value"]))
    keys = [k for k, _ in pairs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise UserInputError(f"--model-arg {dup[0]} is given twice")
    return tuple(pairs)


def literal(text: str) -> Any:
    """A --model-arg value: a Python literal (number, bool, None, string, tuple/list/dict of them)
    where it parses as one, else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def spec_for(model: nn.Module, opts: SpecOptions, header_spec: dict | None, *, label: str,
             fixed_shape: tuple[int, ...] | None = None) -> InputSpec:
    """The input spec of a model outside the zoo, from the flags (or a checkpoint header that has one)."""
    if opts.given:
        d = read_spec_file(opts.spec_file) if opts.spec_file is not None else {}
        if opts.input_size is not None:
            d["size"] = opts.input_size
        if opts.mean is not None:
            d["mean"] = list(opts.mean)
        if opts.std is not None:
            d["std"] = list(opts.std)
        if opts.labels_file is not None:
            d["labels"] = read_labels(opts.labels_file)
    elif header_spec:
        d = dict(header_spec)
    else:
        raise UserInputError(f"{label} is not a zoo model, so its input is unknown: {SPEC_HINT}")
    if "size" not in d:
        raise UserInputError(f"the input spec for {label} has no size: add \"size\" to the file or pass --input-size")
    if fixed_shape is not None:
        if d.get("channels", 3) != fixed_shape[1] and "channels" in d:
            raise UserInputError(f"the input spec says {d['channels']} channels, {label} takes {fixed_shape[1]}")
        d.setdefault("channels", fixed_shape[1])
        if d["size"] != fixed_shape[2]:
            raise UserInputError(f"the input spec says size {d['size']}, {label} takes {fixed_shape[2]}x{fixed_shape[3]}")
    if ("mean" in d) != ("std" in d):
        raise UserInputError("give both mean and std (--mean and --std), or neither")
    channels = d.get("channels", 3)
    if "mean" in d:
        d.setdefault("normalization", "mean_std")
        for key in ("mean", "std"):
            if not isinstance(d[key], list) or len(d[key]) not in (1, channels):
                raise UserInputError(f"{key} must list 1 or {channels} numbers, got {d[key]!r}")
            if len(d[key]) == 1:
                d[key] = d[key] * channels
        if any(isinstance(s, (int, float)) and not s > 0 for s in d["std"]):
            raise UserInputError(f"std must be positive, got {d['std']}")
    else:
        d.setdefault("normalization", "none")
        d.setdefault("mean", [0.0] * channels if isinstance(channels, int) else [])
        d.setdefault("std", [1.0] * channels if isinstance(channels, int) else [])
    d["num_classes"] = _num_classes(model, d, label)
    try:
        return InputSpec.from_dict(d)
    except (TypeError, ValueError) as e:
        raise UserInputError(f"the input spec for {label} is invalid: {e}") from None


def _num_classes(model: nn.Module, d: dict, label: str) -> int:
    """What the model returns for one input of the spec's shape: [1, num_classes] logits."""
    size, channels = d.get("size"), d.get("channels", 3)
    for name, v in (("size", size), ("channels", channels)):
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 4096:
            raise UserInputError(f"the input spec's {name} must be an integer in 1..4096, got {v!r}")
    shape = getattr(model, "program_input_shape", None)
    batch = shape[0] if shape and shape[0] else 1
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(batch, channels, size, size))
    except Exception as e:  # noqa: BLE001 - the user's model can raise anything on a wrong shape
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserInputError(f"{label} does not run on a [{batch}, {channels}, {size}, {size}] input "
                             f"({type(e).__name__}: {first}); fix the input spec") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != batch:
        what = f"a tensor of shape {list(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise UserInputError(f"{label} returns {what}; this tool exports classifiers that return [N, classes] logits")
    n = int(out.shape[1])
    if d.get("num_classes") not in (None, n):
        raise UserInputError(f"the input spec says {d['num_classes']} classes, {label} returns {n}")
    return n


def read_spec_file(path: Path) -> dict[str, Any]:
    """An input spec JSON: an object with only the keys of :data:`SPEC_KEYS`."""
    d = loads_json(read_regular(path, "--input-spec", max_bytes=MAX_SPEC_BYTES), f"--input-spec {path}",
                   "write one JSON object with the keys " + ", ".join(sorted(SPEC_KEYS)))
    if not isinstance(d, dict):
        raise UserInputError(f"--input-spec {path} holds a {type(d).__name__}, not an object")
    unknown = sorted(set(d) - SPEC_KEYS)
    if unknown:
        raise UserInputError(f"--input-spec {path}: unknown key {unknown[0]!r}; the keys are {', '.join(sorted(SPEC_KEYS))}")
    if isinstance(d.get("labels"), str):
        raise UserInputError(f"--input-spec {path}: labels must be a list of strings (or use --labels FILE)")
    return d


def read_labels(path: Path) -> list[str]:
    """One label per line (blank lines at the end ignored)."""
    try:
        lines = read_regular(path, "--labels", max_bytes=64 * MAX_LABELS).decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserInputError(f"--labels {path} is not UTF-8 text") from None
    while lines and not lines[-1].strip():
        lines.pop()
    labels = [line.strip() for line in lines]
    if not labels or any(not label for label in labels):
        raise UserInputError(f"--labels {path} has an empty line; write one non-empty label per line")
    return labels


def parse_floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(t) for t in text.split(","))
    except ValueError:
        raise UserInputError(f"{flag} {text!r} is not a comma-separated list of numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise UserInputError(f"{flag} {text!r} holds a non-finite number")
    return values
