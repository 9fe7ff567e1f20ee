"""The format table: one row per artifact format, read by everyone.

A row says how the format is made (its stage function and file name), what it
needs first (``requires``), its precision, which runners load it (``kind``:
runners declare the kinds they load, see :mod:`exporter.runners`), whether
``bench`` times it, which export options only it reads, and the batch layouts
it supports. The CLI's ``--formats`` help, option validation, stage order, the
reproduce command, the check's choice of runners, bench's targets and the
printed tables all read this table; adding a format is one module with a stage
function and one :func:`register_format` call.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable

from ..models.errors import UserInputError
from ..models.registry import InputSpec
from .context import ExportContext, ExportOptions
from .records import ArtifactRecord


@dataclass(frozen=True)
class Format:
    name: str
    stage: Callable[[ExportContext], ArtifactRecord]
    filename: str
    kind: str                               # what runners load; see runners.runners_for
    help: str
    precision: str = "fp32"                 # decides the check's tolerance
    precision_option: str | None = None     # an ExportOptions field that sets the precision instead
    requires: tuple[str, ...] = ()          # formats whose records the stage reads
    selectable: bool = True                 # named in --formats (else it follows its requirement)
    default: bool = False                   # in the default --formats
    benchmark: bool = True                  # bench times it
    supersedes: str | None = None           # a better build of that format: bench and later stages prefer it
    options: tuple[str, ...] = ()           # ExportOptions fields that only this format reads
    batch_one: bool = False                 # takes batch 1 only, no dynamic batch
    included_when: Callable[[ExportOptions], bool] | None = None  # a non-selectable row's condition
    validate: Callable[[ExportOptions, InputSpec], None] | None = None  # option checks of its own
    note: Callable[[ArtifactRecord], str] | None = None  # what the bundle table says about it


FORMATS: dict[str, Format] = {}


def register_format(fmt: Format) -> Format:
    """Add a row; stage order is registration order (a row's requirements come first)."""
    if fmt.name in FORMATS:
        raise ValueError(f"format {fmt.name!r} is registered twice")
    missing = [r for r in fmt.requires if r not in FORMATS]
    if missing:
        raise ValueError(f"format {fmt.name!r} requires unregistered {', '.join(missing)}")
    FORMATS[fmt.name] = fmt
    return fmt


def get_format(name: str) -> Format | None:
    return FORMATS.get(name)


def selectable() -> list[str]:
    return [f.name for f in FORMATS.values() if f.selectable]


def default_formats() -> tuple[str, ...]:
    return tuple(f.name for f in FORMATS.values() if f.default)


def formats_help() -> str:
    rows = [f"{f.name} ({f.help})" for f in FORMATS.values() if f.selectable]
    return f"Comma-separated formats: {'; '.join(rows)}. Default: {','.join(default_formats())}."


def describe_formats() -> list[dict]:
    """The table as plain rows, with the runners that check and time each format."""
    from .runners import runners_for
    return [{"name": f.name, "file": f.filename, "precision": f.precision, "requires": list(f.requires),
             "selectable": f.selectable, "default": f.default,
             "verified_by": [r.name for r in runners_for(f.kind)],
             "timed_by": [r.name for r in runners_for(f.kind, purpose="time")] if f.benchmark else [],
             "options": [OPTION_FLAGS[o] for o in f.options], "description": f.help} for f in FORMATS.values()]


def parse_formats(text: str) -> tuple[str, ...]:
    """``--formats`` as written: known lower-case names, each once (a typo is refused, never guessed)."""
    given = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in given if f not in selectable()]
    if unknown or not given:
        hint = "; format names are lower-case" if any(f.lower() in selectable() for f in unknown) else ""
        raise UserInputError(f"unknown format {', '.join(unknown) or repr(text)}{hint}; choose from "
                             f"{','.join(selectable())}")
    repeated = sorted({f for f in given if given.count(f) > 1})
    if repeated:
        raise UserInputError(f"--formats names {', '.join(repeated)} more than once; name each format once")
    return tuple(given)


def plan(opts: ExportOptions) -> list[Format]:
    """The rows to build for ``opts``, in stage order: the chosen formats, what they require,
    and the non-selectable rows whose requirement is planned and whose condition holds."""
    wanted: set[str] = set()

    def add(name: str) -> None:
        if name not in wanted:
            wanted.add(name)
            for r in FORMATS[name].requires:
                add(r)

    for name in opts.formats:
        add(name)
    for f in FORMATS.values():
        if (not f.selectable and f.name not in wanted and all(r in wanted for r in f.requires)
                and f.included_when is not None and f.included_when(opts)):
            wanted.add(f.name)
    return [f for f in FORMATS.values() if f.name in wanted]


# --- options --------------------------------------------------------------------------------

#: the flag of each ExportOptions field (the CLI's spelling), for messages and the reproduce command
OPTION_FLAGS = {"input_size": "--input-size", "batch": "--batch", "dynamic_batch": "--dynamic-batch",
                "opset": "--opset", "coreml_precision": "--coreml-precision", "coreml_input": "--coreml-input",
                "simplify": "--no-simplify", "calibration": "--calibration", "keep_fp32": "--keep-fp32", "int8_plan": "--int8-plan",
                "palettize_bits": "--palettize-bits", "legacy_exporter": "--legacy-exporter"}
_DEFAULTS = {f.name: f.default for f in fields(ExportOptions)}


def _is_set(opts: ExportOptions, name: str) -> bool:
    return getattr(opts, name) != _DEFAULTS[name]


def validate_options(opts: ExportOptions, spec: InputSpec) -> None:
    """Refuse options that cannot work, before any work: unknown formats, a format's option
    without that format, batch layouts a planned format cannot take, each row's own checks."""
    unknown = [f for f in opts.formats if f not in selectable()]
    if unknown or not opts.formats:
        raise UserInputError(f"unknown format {', '.join(unknown) or 'none given'}; choose from {','.join(selectable())}")
    rows = plan(opts)
    if opts.batch < 1:
        raise UserInputError(f"--batch must be at least 1, got {opts.batch}")
    readers: dict[str, list[str]] = {}
    for f in FORMATS.values():
        for o in f.options:
            readers.setdefault(o, []).append(f.name)
    planned = {f.name for f in rows}
    for option, users in readers.items():
        if _is_set(opts, option) and not planned & set(users):
            raise UserInputError(f"{OPTION_FLAGS[option]} applies only to {', '.join(users)}; add "
                                 f"{'it' if len(users) == 1 else 'one of them'} to --formats or drop the option")
    for f in rows:
        if f.batch_one and (opts.dynamic_batch or opts.batch != 1):
            what = "--dynamic-batch" if opts.dynamic_batch else f"--batch {opts.batch}"
            raise UserInputError(f"{f.name} takes batch 1 only: drop {what} or leave {f.name} out of --formats")
        if f.validate is not None:
            f.validate(opts, spec)


def reproduce_command(source: list[str], opts: ExportOptions, out: Path, size: int) -> str:
    """The command that rebuilds this bundle: ``source`` (how the model was named), then
    every option that applies to the planned formats."""
    planned = {f.name for f in plan(opts)}
    args = ["bsconv-export", "export", *source, "--out", str(out), "--formats", ",".join(opts.formats),
            "--input-size", str(size)]
    args += ["--dynamic-batch"] if opts.dynamic_batch else ["--batch", str(opts.batch)]
    format_options = [o for f in FORMATS.values() if f.name in planned for o in f.options]
    for option in dict.fromkeys(format_options):
        value = getattr(opts, option)
        if not _is_set(opts, option):
            continue
        flag = OPTION_FLAGS[option]
        if isinstance(value, bool):
            args.append(flag)
        elif isinstance(value, tuple):
            for v in value:
                args += [flag, str(v)]
        else:
            args += [flag, str(value)]
    return shlex.join(args)


# --- which build of a format to use -----------------------------------------------------------

def preferred(records: Iterable[Any], base: str) -> Any | None:
    """The OK record to use for ``base``: a superseding build (simplified ONNX) if it succeeded,
    else ``base`` itself. Works on ArtifactRecords and on anything with ``format`` and ``ok``."""
    ok = {r.format: r for r in records if r.ok and r.path}
    for name in [f.name for f in FORMATS.values() if f.supersedes == base] + [base]:
        if name in ok:
            return ok[name]
    return None


def benchmark_targets(records: Iterable[Any]) -> list[Any]:
    """The OK artifacts ``bench`` times: benchmarkable rows, minus those a present build supersedes."""
    records = [r for r in records if r.ok and r.path]
    present = {r.format for r in records}
    superseded = {FORMATS[n].supersedes for n in present if n in FORMATS and FORMATS[n].supersedes}
    return [r for r in records if r.format in FORMATS and FORMATS[r.format].benchmark
            and r.format not in superseded]


# The built-in rows register themselves on import; the table is complete once this module is.
from . import builtin_formats  # noqa: E402,F401
