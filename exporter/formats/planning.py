"""Planning an export from the format table: which rows ``--formats`` builds (and the rows that follow
them), the options validated before any work, what the manifest records of them, the reproduce
command, and which build of a format bench and later stages use.
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Iterable

from ...kernel.errors import UserInputError
from ...models.registry import InputSpec
from ..kit.options import PIPELINE_OPTIONS, ExportOptions
from .api import Format
from .discovery import FORMATS, declared_options, plugin_errors, registry, runners_for


def planned_precision(fmt: Format, opts: ExportOptions) -> str:
    """The precision ``fmt``'s file will have under ``opts``: the row's, or the one an option of its
    chooses among the row's precisions (a forecast: the check still judges what the file says)."""
    declared = declared_options()
    for name in fmt.options:
        o = declared.get(name)
        value = getattr(opts, name, None)
        if fmt.precisions and o is not None and o.choices and set(o.choices) <= set(fmt.precisions) \
                and value in fmt.precisions:
            return value
    return fmt.precision


def selectable() -> list[str]:
    return [f.name for f in FORMATS.values() if f.selectable]


def default_formats() -> tuple[str, ...]:
    return tuple(f.name for f in FORMATS.values() if f.default)


def formats_help() -> str:
    return ("Comma-separated formats (see 'bsconv-export formats'): "
            f"{', '.join(selectable())}. Default: {','.join(default_formats())}.")


def describe_formats() -> list[dict]:
    """The table as plain rows, with the plugin and the runners that check and time each format."""
    opts = declared_options()
    return [{"name": f.name, "plugin": registry().owner[f.name], "file": f.filename, "precision": f.precision,
             "requires": list(f.requires), "selectable": f.selectable, "default": f.default,
             "verified_by": [r.name for r in runners_for(f.kind)],
             "verified_on_arm64_by": [r.name for r in runners_for(f.kind, target="arm64")],
             "timed_by": [r.name for r in runners_for(f.kind, purpose="time")] if f.benchmark else [],
             "options": [opts[o].flag for o in f.options], "description": f.help} for f in FORMATS.values()]


def parse_formats(text: str) -> tuple[str, ...]:
    """``--formats`` as written: known lower-case names, each once (a typo is refused, never guessed)."""
    given = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in given if f not in selectable()]
    if unknown or not given:
        hint = "; format names are lower-case" if any(f.lower() in selectable() for f in unknown) else ""
        raise UserInputError(f"unknown format {', '.join(unknown) or repr(text)}{hint}; choose from "
                             f"{','.join(selectable())}{_broken_hint()}")
    repeated = sorted({f for f in given if given.count(f) > 1})
    if repeated:
        raise UserInputError(f"--formats names {', '.join(repeated)} more than once; name each format once")
    return tuple(given)


def _broken_hint() -> str:
    errors = plugin_errors()
    return f" (not loaded: {errors[0]}{'; …' if len(errors) > 1 else ''})" if errors else ""


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

def complete_options(opts: ExportOptions) -> ExportOptions:
    """``opts`` with every declared option present (defaults where unset); an undeclared one is refused."""
    try:
        return opts.completed(declared_options().values())
    except TypeError as e:
        raise UserInputError(str(e)) from None


def validate_options(opts: ExportOptions, spec: InputSpec) -> None:
    """Refuse options that cannot work, before any work: unknown formats, a value outside an
    option's choices, a format's option without that format, batch layouts a planned format
    cannot take, each row's own checks. ``opts`` must be completed (:func:`complete_options`)."""
    unknown = [f for f in opts.formats if f not in selectable()]
    if unknown or not opts.formats:
        raise UserInputError(f"unknown format {', '.join(unknown) or 'none given'}; choose from "
                             f"{','.join(selectable())}{_broken_hint()}")
    from ...kernel.limits import check_batch
    check_batch(opts.batch)
    if opts.dynamic_batch and opts.batch != 1:
        raise UserInputError(f"--batch {opts.batch} and --dynamic-batch exclude each other: a dynamic-batch bundle "
                             "takes any batch; drop one of them")
    declared = declared_options()
    for o in declared.values():
        value = getattr(opts, o.name)
        values = value if o.repeatable else (value,)
        bad = [v for v in values if o.choices and v is not None and v not in o.choices]
        if bad:
            raise UserInputError(f"{o.flag} must be one of {', '.join(map(str, o.choices))}, not {bad[0]}")
    rows = plan(opts)
    readers: dict[str, list[str]] = {}
    for f in FORMATS.values():
        for o in f.options:
            readers.setdefault(o, []).append(f.name)
    planned = {f.name for f in rows}
    for name, users in readers.items():
        if opts.is_set(declared[name]) and not planned & set(users):
            raise UserInputError(f"{declared[name].flag} applies only to {', '.join(users)}; add "
                                 f"{'it' if len(users) == 1 else 'one of them'} to --formats or drop the option")
    for name in opts.require_delegated:
        row = FORMATS.get(name)
        if row is None or name not in planned:
            raise UserInputError(f"--require-delegated {name}: {name} is not among the formats this export builds; "
                                 "add it to --formats or drop the option")
        if row.fallback is None:
            delegating = [f.name for f in FORMATS.values() if f.fallback is not None]
            raise UserInputError(f"--require-delegated {name}: the {name} format records no delegation to hold it to; "
                                 f"formats that do: {', '.join(delegating) or 'none'}")
    for f in rows:
        if f.batch_one and (opts.dynamic_batch or opts.batch != 1):
            what = "--dynamic-batch" if opts.dynamic_batch else f"--batch {opts.batch}"
            raise UserInputError(f"{f.name} takes batch 1 only: drop {what} or leave {f.name} out of --formats")
        if f.validate is not None:
            f.validate(opts, spec)


def recorded_options(opts: ExportOptions) -> dict[str, Any]:
    """What the manifest records: every declared option's value, by name (JSON types)."""
    return {name: o.to_json(getattr(opts, name)) for name, o in declared_options().items()}


def reproduce_command(source: list[str], opts: ExportOptions, out: Path, size: int) -> str:
    """The command that rebuilds this bundle: ``source`` (how the model was named), then
    every option that applies to the planned formats."""
    planned = {f.name for f in plan(opts)}
    args = ["bsconv-export", "export", *source, "--out", str(out), "--formats", ",".join(opts.formats),
            "--input-size", str(size)]
    args += ["--dynamic-batch"] if opts.dynamic_batch else ["--batch", str(opts.batch)]
    declared = declared_options()
    used = [o for f in FORMATS.values() if f.name in planned for o in f.options]
    used += [o.name for o in PIPELINE_OPTIONS if o.name not in used and opts.is_set(o)]   # read by no row
    for name in dict.fromkeys(used):
        args += declared[name].cli_args(getattr(opts, name))
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
