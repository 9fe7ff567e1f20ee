"""Where a model comes from: a zoo name, a Python entry point, or an ExportedProgram file.

Every command that takes a model reads a :class:`ModelRequest` and gets back a
:class:`~.checkpoint.LoadedCheckpoint` whose ``source`` says which of the three it
was; the manifest records that source and the reproduce command is built from it.

* **zoo** — ``ARCH`` and/or ``--checkpoint``: the model zoo, loaded as before.
* **entry point** — ``--model package.module:factory`` with ``--model-arg key=value``:
  imports the user's module and calls the factory, which must return an
  ``nn.Module``. This runs the user's code, which is what they ask for. Weights
  come from ``--checkpoint`` (the same safe loader) or from the factory itself.
* **program** — ``--program model.pt2``: an ExportedProgram read by
  :func:`.program.load_program`, which never unpickles or executes code from the file.

A model outside the zoo has no input spec of its own: it comes from
``--input-spec spec.json`` or ``--input-size`` (with ``--mean``/``--std``/``--labels``),
and is an error that names those flags when missing. A zoo model keeps its own.
"""
from __future__ import annotations

import ast
import importlib
import math
import os
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator

import torch
from torch import nn

from .errors import UserInputError
from .limits import check_input_size
from .safe_io import loads_json, read_regular
from .registry import InputSpec

ENTRY_POINT = re.compile(r"^(?P<module>[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*):(?P<attr>[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*)$")
MODEL_ARG = re.compile(r"^(?P<key>[A-Za-z_]\w*)=(?P<value>.*)$", re.S)
MAX_SPEC_BYTES = 1 << 20
MAX_LABELS = 100_000
SPEC_KEYS = {"size", "channels", "num_classes", "mean", "std", "value_range", "color_order", "labels",
             "normalization"}
SPEC_HINT = "pass --input-spec spec.json, or --input-size N (with --mean, --std, --labels as needed)"


class ModelSource:
    """Where a model came from: one class per kind (:class:`ZooSource`, :class:`EntryPointSource`,
    :class:`ProgramSource`), each with its manifest record (``to_dict`` / :func:`source_from_dict`),
    its command-line spelling, its loading from a request (``load``) and its way of rebuilding the
    original a bundle came from (``reload``)."""

    kind: ClassVar[str] = ""
    #: loading it imports and runs the user's code (which can change under the same name)
    runs_user_code: ClassVar[bool] = False

    def __init_subclass__(cls, **kw) -> None:
        super().__init_subclass__(**kw)
        if cls.kind:
            SOURCES[cls.kind] = cls

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def cli_args(self) -> list[str]:
        """How a command line names this source (without the checkpoint or spec options)."""
        raise NotImplementedError

    @property
    def label(self) -> str:
        """A short name for tables and the manifest's ``arch``."""
        raise NotImplementedError

    def reproduce_args(self, loaded) -> list[str]:
        """How the reproduce command names the model: the source, its checkpoint and its spec options."""
        return [*self.cli_args(), *loaded.spec_args]

    def input_files(self, loaded) -> tuple[Path, ...]:
        """The files an export reads for this model (never to be replaced by its bundle)."""
        return (Path(loaded.path),) if loaded.sha256 else ()

    @classmethod
    def load(cls, req: "ModelRequest"):
        """The model ``req`` names, loaded (a :class:`~.checkpoint.LoadedCheckpoint`)."""
        raise NotImplementedError

    def reload(self, model_info, *, checkpoint: str | Path | None = None, entry_point: str | None = None,
               program: str | Path | None = None) -> nn.Module:
        """The PyTorch model a bundle was exported from, by this source as its manifest records it
        (``model_info``); the caller's flags confirm or replace what the manifest says."""
        raise NotImplementedError

    def _refuse(self, entry_point, program) -> None:
        """A --model or --program given for a bundle that came from elsewhere."""
        if program is not None and not isinstance(self, ProgramSource):
            raise UserInputError(f"the bundle was exported from {self.label}, not a program file; drop --program")
        if entry_point is not None and not isinstance(self, EntryPointSource):
            raise UserInputError(f"the bundle was exported from {self.label}, not a Python entry point; drop --model")


SOURCES: dict[str, type[ModelSource]] = {}


@dataclass(frozen=True)
class ZooSource(ModelSource):
    """``ARCH`` and/or ``--checkpoint``: the model zoo."""

    kind: ClassVar[str] = "zoo"
    arch: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "arch": self.arch}

    @classmethod
    def from_dict(cls, r, d: dict) -> "ZooSource":
        return cls(arch=r.get(d, "arch", str))

    def cli_args(self) -> list[str]:
        return [self.arch] if self.arch else []

    @property
    def label(self) -> str:
        return self.arch

    def reproduce_args(self, loaded) -> list[str]:
        return ["--checkpoint", str(loaded.path)] if loaded.sha256 else [loaded.arch]

    @classmethod
    def load(cls, req: "ModelRequest"):
        from .checkpoint import resolve_model
        if req.spec.spec_file or req.spec.mean or req.spec.std or req.spec.labels_file:
            raise UserInputError("a zoo model has its own input spec; --input-spec, --mean, --std and --labels "
                                 "are for --model and --program")
        return resolve_model(req.arch, req.checkpoint)

    def reload(self, model_info, *, checkpoint=None, entry_point=None, program=None) -> nn.Module:
        from .checkpoint import load_checkpoint, resolve_model
        self._refuse(entry_point, program)
        path = Path(checkpoint) if checkpoint is not None else recorded_checkpoint(model_info)
        if path is not None:
            return load_checkpoint(path, model_info.arch).model
        return resolve_model(model_info.arch).model  # untrained: seeded, so rebuilt identically


@dataclass(frozen=True)
class EntryPointSource(ModelSource):
    """``--model package.module:factory`` with ``--model-arg key=value``: the user's own code."""

    kind: ClassVar[str] = "entry_point"
    runs_user_code: ClassVar[bool] = True
    entry_point: str = ""
    model_args: tuple[tuple[str, str], ...] = ()  # as typed, in order

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "entry_point": self.entry_point, "model_args": {k: v for k, v in self.model_args}}

    @classmethod
    def from_dict(cls, r, d: dict) -> "EntryPointSource":
        args = r.get(d, "model_args", dict, optional=True, default={})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in args.items()):
            raise r.bad("'model_args' must map names to strings")
        return cls(entry_point=r.get(d, "entry_point", str), model_args=tuple(args.items()))

    def cli_args(self) -> list[str]:
        return ["--model", self.entry_point] + [a for k, v in self.model_args for a in ("--model-arg", f"{k}={v}")]

    @property
    def label(self) -> str:
        return self.entry_point

    def reproduce_args(self, loaded) -> list[str]:
        ckpt = ["--checkpoint", str(loaded.path)] if loaded.sha256 else []
        return [*self.cli_args(), *ckpt, *loaded.spec_args]

    @classmethod
    def load(cls, req: "ModelRequest"):
        from .checkpoint import load_state_into
        pairs = parse_model_args(req.model_args)
        model = call_entry_point(req.entry_point, {k: literal(v) for k, v in pairs})
        source = cls(entry_point=req.entry_point, model_args=pairs)
        digest, header = "", {}
        if req.checkpoint is not None:
            digest, header = load_state_into(model, req.checkpoint, req.entry_point)
        spec = spec_for(model, req.spec, header.get("input_spec"), label=req.entry_point)
        return _loaded(model, source, spec, req.checkpoint or Path(""), digest, req)

    def reload(self, model_info, *, checkpoint=None, entry_point=None, program=None) -> nn.Module:
        """A Python entry point is code, and a bundle may come from anyone: it is imported only when
        the caller names the same entry point (the CLI's ``--model``), never because a manifest says so."""
        from .checkpoint import load_state_into
        self._refuse(entry_point, program)
        if entry_point is None:
            raise UserInputError(f"the bundle was exported from the Python entry point {self.entry_point}; running "
                                 f"it imports that code, so confirm it: pass --model {self.entry_point}")
        if entry_point != self.entry_point:
            raise UserInputError(f"the bundle was exported from {self.entry_point}, not {entry_point}")
        path = Path(checkpoint) if checkpoint is not None else recorded_checkpoint(model_info)
        model = call_entry_point(self.entry_point, {k: literal(v) for k, v in self.model_args})
        if path is not None:
            load_state_into(model, path, self.entry_point)
        model.input_spec = model_info.input_spec
        return model.eval()


@dataclass(frozen=True)
class ProgramSource(ModelSource):
    """``--program model.pt2``: an ExportedProgram, read without unpickling or running code from it."""

    kind: ClassVar[str] = "program"
    program: str = ""                           # path of the .pt2
    program_sha256: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "program": self.program, "program_sha256": self.program_sha256}

    @classmethod
    def from_dict(cls, r, d: dict) -> "ProgramSource":
        return cls(program=r.get(d, "program", str), program_sha256=r.get(d, "program_sha256", str))

    def cli_args(self) -> list[str]:
        return ["--program", self.program]

    @property
    def label(self) -> str:
        return Path(self.program).name

    def input_files(self, loaded) -> tuple[Path, ...]:
        return (Path(self.program),)

    @classmethod
    def load(cls, req: "ModelRequest"):
        if req.checkpoint is not None:
            raise UserInputError("--program holds its weights; drop --checkpoint")
        if req.model_args:
            raise UserInputError("--model-arg goes with --model, not --program")
        model, digest = load_program_module(req.program)
        source = cls(program=str(req.program), program_sha256=digest)
        spec = spec_for(model, req.spec, None, label=req.program.name, fixed_shape=model.program_input_shape)
        # the program's hash lives in the source, not as a checkpoint
        return _loaded(model, source, spec, req.program, "", req)

    def reload(self, model_info, *, checkpoint=None, entry_point=None, program=None) -> nn.Module:
        self._refuse(entry_point, program)
        path = Path(program) if program is not None else Path(self.program)
        if path.suffix != ".pt2":
            raise UserInputError(f"{path} is not a .pt2 program file; pass --program PATH")
        if not path.is_file():
            raise UserInputError(f"the bundle's program {path} is not here; pass --program PATH")
        model, digest = load_program_module(path)
        if digest != self.program_sha256:
            raise UserInputError(f"{path} is not the program this bundle was exported from (sha256 differs); "
                                 "pass the original with --program or re-export")
        return model.eval()


def source_from_dict(r, d: Any, arch: str) -> ModelSource:
    """A manifest's source record (``r``: the manifest reader, which checks types and bounds); a
    manifest from before sources were recorded names a zoo model."""
    if d is None:
        return ZooSource(arch=arch)
    kind = r.get(d, "kind", str)
    cls = SOURCES.get(kind)
    if cls is None:
        raise r.bad(f"model source kind {kind!r} is unknown")
    return cls.from_dict(r, d)


def recorded_checkpoint(model_info) -> Path | None:
    """The manifest's checkpoint, checked to be here and unchanged; None when it records none."""
    from .checkpoint import file_sha256
    if not model_info.checkpoint:
        return None
    path = Path(model_info.checkpoint)
    if path.suffix not in (".pt", ".pth", ".safetensors"):
        raise UserInputError(f"the manifest names {path} as its checkpoint, which is not a checkpoint file; "
                             "pass --checkpoint PATH")
    if not path.is_file():
        raise UserInputError(f"the bundle's checkpoint {path} is not here; pass --checkpoint PATH")
    if file_sha256(path) != model_info.checkpoint_sha256:
        raise UserInputError(f"{path} changed since the export (sha256 differs); pass the original "
                             "with --checkpoint or re-export")
    return path


def _loaded(model: nn.Module, source: ModelSource, spec, path: Path, digest: str, req: "ModelRequest"):
    from .checkpoint import LoadedCheckpoint
    model.eval()
    model.arch = source.label
    model.input_spec = spec
    return LoadedCheckpoint(model=model, arch=source.label, path=path, sha256=digest, input_spec=spec,
                            source=source, spec_args=tuple(req.spec.cli_args(include_size=False)))


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


# --------------------------------------------------------------------------- resolving

def resolve_request(req: ModelRequest):
    """The model a command means, loaded, with its source and input spec set."""
    _check_exclusive(req)
    if req.entry_point is not None:
        return EntryPointSource.load(req)
    if req.program is not None:
        return ProgramSource.load(req)
    return ZooSource.load(req)


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


@contextmanager
def _cwd_importable() -> Iterator[None]:
    # like `python -m`: the current folder is importable, for the duration of the import only
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def call_entry_point(entry_point: str, kwargs: dict[str, Any]) -> nn.Module:
    """Import ``package.module`` and call ``factory(**kwargs)``; it must return an nn.Module."""
    m = ENTRY_POINT.match(entry_point)
    if not m:
        raise UserInputError(f"--model {entry_point!r} is not package.module:factory")
    with _cwd_importable():
        try:
            module = importlib.import_module(m["module"])
        except ModuleNotFoundError as e:
            raise UserInputError(f"--model: cannot import {m['module']} ({e}); run from the folder that holds it, "
                                 "add it to PYTHONPATH or pip install it") from None
    obj: Any = module
    for part in m["attr"].split("."):
        if not hasattr(obj, part):
            raise UserInputError(f"--model: {m['module']} has no {m['attr']!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserInputError(f"--model: {entry_point} is a {type(obj).__name__}, not a callable factory")
    try:
        model = obj(**kwargs)
    except TypeError as e:
        raise UserInputError(f"--model: {entry_point}({', '.join(kwargs)}) failed: {e}; check --model-arg") from None
    if not isinstance(model, nn.Module):
        raise UserInputError(f"--model: {entry_point} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def load_program_module(path: Path) -> tuple[nn.Module, str]:
    """A .pt2 read by the safe loader, as a runnable module, and the file's sha256."""
    from .program import load_program
    program, digest = load_program(path)
    return program_module(program, path.name), digest


def program_module(program, label: str) -> nn.Module:
    """The program as a runnable module, with ``program_input_shape`` (batch 0 when dynamic)."""
    user_inputs = program.graph_signature.user_inputs
    if len(user_inputs) != 1:
        raise UserInputError(f"{label} takes {len(user_inputs)} inputs; this tool exports one image tensor")
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == user_inputs[0])
    val = node.meta.get("val")
    shape = getattr(val, "shape", None)
    if shape is None or len(shape) != 4:
        raise UserInputError(f"{label}'s input is not a 4-d [N, C, H, W] tensor ({list(shape or [])})")
    dims = [d if isinstance(d, int) else 0 for d in shape]
    if 0 in dims[1:]:
        raise UserInputError(f"{label}'s input has a symbolic channel or spatial size ({[str(d) for d in shape]}); "
                             "export it with a fixed [C, H, W]")
    if dims[2] != dims[3]:
        raise UserInputError(f"{label}'s input is {dims[2]}x{dims[3]}; this tool exports square inputs")
    if getattr(val, "dtype", torch.float32) != torch.float32:
        raise UserInputError(f"{label}'s input is {val.dtype}, not float32")
    return ProgramModule(program, tuple(dims))


class ProgramModule(nn.Module):
    """An ExportedProgram's module, run in slices of its fixed batch when the batch is not dynamic."""

    def __init__(self, exported, input_shape: tuple[int, ...]):
        super().__init__()
        self.program = exported.module()
        self.program_input_shape = input_shape
        self.exported = exported if not input_shape[0] else None   # a dynamic program is reused as it is

    def __deepcopy__(self, memo: dict) -> "ProgramModule":
        # copying the graph's tree specs trips pytree's LeafSpec deprecation notice: not the user's concern
        import copy
        import warnings
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            if self.exported is not None:
                memo[id(self.exported)] = self.exported   # read-only here: share it
            return copy._reconstruct(self, memo, *self.__reduce_ex__(4))

    def train(self, mode: bool = True) -> "ProgramModule":
        # an exported program is already in inference form; torch refuses train()/eval() on it
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fixed = self.program_input_shape[0]
        if not fixed or x.shape[0] == fixed:
            return self.program(x)
        if x.shape[0] % fixed:
            pad = fixed - x.shape[0] % fixed
            x = torch.cat([x, x[-1:].expand(pad, *x.shape[1:])])
            return self.forward(x)[:-pad]
        return torch.cat([self.program(c) for c in x.split(fixed)])


# --------------------------------------------------------------------------- the input spec

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
