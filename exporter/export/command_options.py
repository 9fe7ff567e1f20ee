"""The options a command shares, declared once and added to its signature: the model options (every
command that takes a model) and the export options (the pipeline's and every format plugin's,
:mod:`exporter.kit.options`). typer reads a command's parameters from its signature; :func:`_extend`
writes the shared ones there and hands their values to the command as one dict.
"""
from __future__ import annotations

import functools
import inspect
import typing
from pathlib import Path
from typing import Optional

import typer

from ...kernel.errors import UserInputError


ARCH_HELP = "Architecture name (see 'bsconv-export models'). Omit it, and --checkpoint, for the shipped trained model."
CKPT_HELP = "Checkpoint file: .pt/.pth state_dict (raw, {'model_state_dict': ...}, {'state_dict': ...}) or .safetensors."
# The three model sources, the same options on every command that takes a model (see models/source.py).
MODEL_OPT = typer.Option(None, "--model", help="Your own network: package.module:factory, a function returning an nn.Module. "
                         "This IMPORTS AND RUNS that Python code (the current folder is importable). Weights from "
                         "--checkpoint, or from the factory itself; needs an input spec.")
MODEL_ARG_OPT = typer.Option([], "--model-arg", help="key=value passed to the --model factory (repeatable); values are "
                             "read as Python literals (2, 0.5, True, 'x') where they parse, else as text.")
PROGRAM_OPT = typer.Option(None, "--program", help="An ExportedProgram saved by torch.export.save (.pt2), loaded "
                           "without unpickling or running code from it; needs an input spec.")
SPEC_OPT = typer.Option(None, "--input-spec", help="JSON input spec for --model/--program: size, channels, mean, std, "
                        "value_range, color_order, labels, num_classes.")
MEAN_OPT = typer.Option(None, "--mean", help="--model/--program: per-channel mean the app subtracts, e.g. 0.485,0.456,0.406.")
STD_OPT = typer.Option(None, "--std", help="--model/--program: per-channel std the app divides by.")
LABELS_OPT = typer.Option(None, "--labels", help="--model/--program: text file, one class label per line.")


def _extend(command, extra: list[inspect.Parameter], into: str, first: bool = False):
    """``command`` with ``extra`` parameters in its signature (typer reads them from there); their
    values reach it as one dict, keyword ``into``."""
    sig = inspect.signature(command)
    hints = typing.get_type_hints(command)
    own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values() if p.name != into]
    params = [*extra, *own] if first else [*own, *extra]
    names = [p.name for p in extra]

    @functools.wraps(command)
    def wrapper(**kwargs):
        return command(**{k: v for k, v in kwargs.items() if k not in names},
                       **{into: {k: kwargs[k] for k in names}})

    wrapper.__signature__ = sig.replace(parameters=[p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params])
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


def _param(name: str, annotation, default) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


def with_model_options(command):
    """The model options every command that takes a model shares (see models/source.py), declared
    once: ``command`` receives them as ``model_options`` (request_from_options' keywords)."""
    return _extend(command, [
        _param("arch", Optional[str], typer.Argument(None, help=ARCH_HELP)),
        _param("checkpoint", Optional[Path], typer.Option(None, "--checkpoint", "-c", help=CKPT_HELP)),
        _param("model", Optional[str], MODEL_OPT), _param("model_arg", list[str], MODEL_ARG_OPT),
        _param("program", Optional[Path], PROGRAM_OPT), _param("input_spec", Optional[Path], SPEC_OPT),
        _param("mean", Optional[str], MEAN_OPT), _param("std", Optional[str], STD_OPT),
        _param("labels", Optional[Path], LABELS_OPT)], "model_options", first=True)


def with_format_options(command):
    """Give ``command`` one parameter per declared export option (the pipeline's and every format
    plugin's, see exporter/kit/options.py), passed to it as ``format_options``: the options the user
    gave, by name, each as its declaration reads it."""
    from ..formats import declared_options
    declared = declared_options()
    extra = []
    for o in declared.values():
        help_ = o.help + (f" One of: {', '.join(map(str, o.choices))}." if o.choices and o.type is not bool else "")
        if o.type is bool:
            annotation, default = bool, False
        elif o.repeatable:
            annotation, default = list[o.type], []
        else:
            annotation, default = Optional[o.type], None
        extra.append(_param(o.name, annotation, typer.Option(default, o.flag, help=help_)))

    def given(values: dict) -> dict:
        out = {}
        for name, value in values.items():
            o = declared[name]
            if o.type is bool:
                if value:
                    out[name] = not o.default   # the flag flips the default ("--no-simplify")
            elif o.repeatable:
                if value:
                    out[name] = tuple(value)
            elif value is not None:
                out[name] = value
        return out

    @functools.wraps(command)
    def convert(**kwargs):
        return command(**{**kwargs, "format_options": given(kwargs["format_options"])})

    return _extend(convert, extra, "format_options")


def parse_threads(text: str, cores: int) -> int | str | None:
    """--threads: 'default' (None), 'auto', or a count from 1 to the usable cores."""
    if text in ("default", "auto"):
        return None if text == "default" else "auto"
    if not text.isdigit() or not 1 <= int(text) <= cores:
        raise UserInputError(f"--threads must be 1..{cores} (the usable cores), 'auto' or 'default', not {text!r}")
    return int(text)


def csv_values(text: str, cast=str) -> tuple:
    """A comma-separated option value, each item cast; an empty or unreadable list is refused."""
    try:
        items = tuple(cast(t.strip()) for t in text.split(",") if t.strip())
    except ValueError:
        raise UserInputError(f"cannot read {text!r} as a comma-separated list") from None
    if not items:
        raise UserInputError("an empty list was given")
    return items
