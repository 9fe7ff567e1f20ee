"""Loading a model from a request, and rebuilding the original a bundle came from, for each kind of
source (:mod:`.source`): the zoo through :mod:`.checkpoint`, a Python entry point by importing and
calling the user's factory (which is what they ask for; weights from ``--checkpoint`` through the same
safe loader, or from the factory itself), a program file through :func:`.program.load_program`.

A bundle may come from anyone: rebuilding its original never imports code because its manifest says
so — an entry point is imported only when the caller names the same one (``--model``).
"""
from __future__ import annotations

import importlib
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..kernel.errors import UserInputError
from .checkpoint import LoadedCheckpoint, file_sha256, load_checkpoint, load_state_into, resolve_model
from .request import ModelRequest, _check_exclusive, literal, parse_model_args, spec_for
from .source import EntryPointSource, ModelSource, ProgramSource, ZooSource

ENTRY_POINT = re.compile(r"^(?P<module>[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*):(?P<attr>[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*)$")


def recorded_checkpoint(model_info) -> Path | None:
    """The manifest's checkpoint, checked to be here and unchanged; None when it records none."""
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


def _loaded(model: nn.Module, source: ModelSource, spec, path: Path, digest: str, req: ModelRequest
            ) -> LoadedCheckpoint:
    model.eval()
    model.arch = source.label
    model.input_spec = spec
    return LoadedCheckpoint(model=model, arch=source.label, path=path, sha256=digest, input_spec=spec,
                            source=source, spec_args=tuple(req.spec.cli_args(include_size=False)))


def resolve_request(req: ModelRequest) -> LoadedCheckpoint:
    """The model a command means, loaded, with its source and input spec set."""
    _check_exclusive(req)
    if req.entry_point is not None:
        return _load_entry_point(req)
    if req.program is not None:
        return _load_program(req)
    return _load_zoo(req)


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


def _refuse(source: ModelSource, entry_point, program) -> None:
    """A --model or --program given for a bundle that came from elsewhere."""
    if program is not None and not isinstance(source, ProgramSource):
        raise UserInputError(f"the bundle was exported from {source.label}, not a program file; drop --program")
    if entry_point is not None and not isinstance(source, EntryPointSource):
        raise UserInputError(f"the bundle was exported from {source.label}, not a Python entry point; drop --model")


def _load_zoo(req: ModelRequest) -> LoadedCheckpoint:
    if req.spec.spec_file or req.spec.mean or req.spec.std or req.spec.labels_file:
        raise UserInputError("a zoo model has its own input spec; --input-spec, --mean, --std and --labels "
                             "are for --model and --program")
    return resolve_model(req.arch, req.checkpoint)


def _reload_zoo(source: ZooSource, model_info, checkpoint, entry_point, program) -> nn.Module:
    path = Path(checkpoint) if checkpoint is not None else recorded_checkpoint(model_info)
    if path is not None:
        return load_checkpoint(path, model_info.arch).model
    return resolve_model(model_info.arch).model  # untrained: seeded, so rebuilt identically


def _load_entry_point(req: ModelRequest) -> LoadedCheckpoint:
    pairs = parse_model_args(req.model_args)
    model = call_entry_point(req.entry_point, {k: literal(v) for k, v in pairs})
    source = EntryPointSource(entry_point=req.entry_point, model_args=pairs)
    digest, header = "", {}
    if req.checkpoint is not None:
        digest, header = load_state_into(model, req.checkpoint, req.entry_point)
    spec = spec_for(model, req.spec, header.get("input_spec"), label=req.entry_point)
    return _loaded(model, source, spec, req.checkpoint or Path(""), digest, req)


def _reload_entry_point(source: EntryPointSource, model_info, checkpoint, entry_point, program) -> nn.Module:
    """A Python entry point is code, and a bundle may come from anyone: it is imported only when
    the caller names the same entry point (the CLI's ``--model``), never because a manifest says so."""
    if entry_point is None:
        raise UserInputError(f"the bundle was exported from the Python entry point {source.entry_point}; running "
                             f"it imports that code, so confirm it: pass --model {source.entry_point}")
    if entry_point != source.entry_point:
        raise UserInputError(f"the bundle was exported from {source.entry_point}, not {entry_point}")
    path = Path(checkpoint) if checkpoint is not None else recorded_checkpoint(model_info)
    model = call_entry_point(source.entry_point, {k: literal(v) for k, v in source.model_args})
    if path is not None:
        load_state_into(model, path, source.entry_point)
    model.input_spec = model_info.input_spec
    return model.eval()


def _load_program(req: ModelRequest) -> LoadedCheckpoint:
    if req.checkpoint is not None:
        raise UserInputError("--program holds its weights; drop --checkpoint")
    if req.model_args:
        raise UserInputError("--model-arg goes with --model, not --program")
    model, digest = load_program_module(req.program)
    source = ProgramSource(program=str(req.program), program_sha256=digest)
    spec = spec_for(model, req.spec, None, label=req.program.name, fixed_shape=model.program_input_shape)
    # the program's hash lives in the source, not as a checkpoint
    return _loaded(model, source, spec, req.program, "", req)


def _reload_program(source: ProgramSource, model_info, checkpoint, entry_point, program) -> nn.Module:
    path = Path(program) if program is not None else Path(source.program)
    if path.suffix != ".pt2":
        raise UserInputError(f"{path} is not a .pt2 program file; pass --program PATH")
    if not path.is_file():
        raise UserInputError(f"the bundle's program {path} is not here; pass --program PATH")
    model, digest = load_program_module(path)
    if digest != source.program_sha256:
        raise UserInputError(f"{path} is not the program this bundle was exported from (sha256 differs); "
                             "pass the original with --program or re-export")
    return model.eval()


RELOADERS = {ZooSource: _reload_zoo, EntryPointSource: _reload_entry_point, ProgramSource: _reload_program}


def reload_model(source: ModelSource, model_info, *, checkpoint: str | Path | None = None,
                 entry_point: str | None = None, program: str | Path | None = None) -> nn.Module:
    """The PyTorch model a bundle was exported from, by its source as its manifest records it
    (``model_info``); the caller's flags confirm or replace what the manifest says."""
    _refuse(source, entry_point, program)
    return RELOADERS[type(source)](source, model_info, checkpoint, entry_point, program)
