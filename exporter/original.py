"""The PyTorch model a bundle was exported from, rebuilt by the source its manifest records.

Used by ``check`` and ``bench --vs-torch``. Nothing here runs code a bundle names on its own:
a Python entry point is imported only when the caller names the same one.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..models.errors import UserInputError


def load_original(manifest, checkpoint: str | Path | None = None, entry_point: str | None = None,
                  program: str | Path | None = None) -> nn.Module:
    """The PyTorch model a bundle was exported from, by the source its manifest records.

    A zoo model: its checkpoint (sha256 verified) or the seeded architecture. A program file:
    the manifest's path (or ``program``), sha256 verified, through the safe loader. A Python
    entry point is code, and the bundle may come from anyone: it is imported only when the
    caller names the same entry point (``entry_point``, the CLI's ``--model``), never because
    a manifest says so.
    """
    from ..models.checkpoint import load_checkpoint, load_state_into, resolve_model
    m = manifest.model
    src = m.source
    if src.kind == "program":
        return _original_program(src, program)
    if program is not None:
        raise UserInputError(f"the bundle was exported from {src.label}, not a program file; drop --program")
    path = Path(checkpoint) if checkpoint is not None else _recorded_checkpoint(m)
    if src.kind == "entry_point":
        from ..models.source import call_entry_point, literal
        if entry_point is None:
            raise UserInputError(f"the bundle was exported from the Python entry point {src.entry_point}; running "
                                 f"it imports that code, so confirm it: pass --model {src.entry_point}")
        if entry_point != src.entry_point:
            raise UserInputError(f"the bundle was exported from {src.entry_point}, not {entry_point}")
        model = call_entry_point(src.entry_point, {k: literal(v) for k, v in src.model_args})
        if path is not None:
            load_state_into(model, path, src.entry_point)
        model.input_spec = m.input_spec
        return model.eval()
    if entry_point is not None:
        raise UserInputError(f"the bundle was exported from {src.label}, not a Python entry point; drop --model")
    if path is not None:
        return load_checkpoint(path, m.arch).model
    return resolve_model(m.arch).model  # untrained: seeded, so rebuilt identically


def _recorded_checkpoint(m) -> Path | None:
    """The manifest's checkpoint, checked to be here and unchanged; None when it records none."""
    from ..models.checkpoint import file_sha256
    if not m.checkpoint:
        return None
    path = Path(m.checkpoint)
    if path.suffix not in (".pt", ".pth", ".safetensors"):
        raise UserInputError(f"the manifest names {path} as its checkpoint, which is not a checkpoint file; "
                             "pass --checkpoint PATH")
    if not path.is_file():
        raise UserInputError(f"the bundle's checkpoint {path} is not here; pass --checkpoint PATH")
    if file_sha256(path) != m.checkpoint_sha256:
        raise UserInputError(f"{path} changed since the export (sha256 differs); pass the original "
                             "with --checkpoint or re-export")
    return path


def _original_program(src, program: str | Path | None) -> nn.Module:
    from ..models.source import load_program_module
    path = Path(program) if program is not None else Path(src.program)
    if path.suffix != ".pt2":
        raise UserInputError(f"{path} is not a .pt2 program file; pass --program PATH")
    if not path.is_file():
        raise UserInputError(f"the bundle's program {path} is not here; pass --program PATH")
    model, digest = load_program_module(path)
    if digest != src.program_sha256:
        raise UserInputError(f"{path} is not the program this bundle was exported from (sha256 differs); "
                             "pass the original with --program or re-export")
    return model.eval()
