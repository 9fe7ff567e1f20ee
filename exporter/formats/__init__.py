"""Format plugins and the format table they make: one row per artifact format, read by everyone.

A *plugin* is one module (usually a folder) exposing ``PLUGIN``, a :class:`Plugin` (or an entry
naming the object, ``module:NAME``): its
format rows, the runners that load its artifacts, the options it owns, the packages
whose versions a bundle records, and where its stages go in the order. Plugins are
found through Python entry points, group ``bsconv_export.formats`` — the built-in ones
(``pt2``, ``onnx``, ``coreml``, ``executorch``) exactly as a third-party package's.

A row (:class:`Format`) says how the format is made (its stage function and file name),
what it needs first (``requires``), its precision, which runners load it (``kind``), what
its file itself says (``facts``: precision, opset), whether ``bench`` times it, which
options only it reads, and the batch layouts it supports. The CLI's ``--formats``,
option validation, stage order, the reproduce command, the check's choice of runners,
bench's targets and the printed tables all read this table; nothing outside a plugin
names a format.
"""
from __future__ import annotations

import re
import shlex
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ...kernel.errors import UserInputError
from ...models.registry import InputSpec
from ..kit.options import PIPELINE_OPTIONS, ExportOptions, Option
from ..kit.tolerances import BUILT_IN_PRECISIONS, Precision, Tolerance
from ..runners import Runner

ENTRY_POINT_GROUP = "bsconv_export.formats"


@dataclass(frozen=True)
class Format:
    name: str
    stage: Callable[[Any], Any]             # ExportContext -> ArtifactRecord
    filename: str
    kind: str                               # what runners load; see runners_for
    help: str
    precision: str = "fp32"                 # decides the check's tolerance
    precisions: tuple[str, ...] = ()        # precisions an option may choose instead (empty: only `precision`)
    requires: tuple[str, ...] = ()          # formats whose records the stage reads
    selectable: bool = True                 # named in --formats (else it follows its requirement)
    default: bool = False                   # in the default --formats
    benchmark: bool = True                  # bench times it
    bench_baseline: bool = False            # bench pairs other formats' timings with this one's
    supersedes: str | None = None           # a better build of that format: bench and later stages prefer it
    options: tuple[str, ...] = ()           # option names that only this format (and others naming them) reads
    batch_one: bool = False                 # takes batch 1 only, no dynamic batch
    included_when: Callable[[ExportOptions], bool] | None = None  # a non-selectable row's condition
    validate: Callable[[ExportOptions, InputSpec], None] | None = None  # option checks of its own
    note: Callable[[Any], str] | None = None  # what the bundle table says about its record
    #: what the file itself says, read without running it: (precision or None, opset or None)
    facts: Callable[[Path], tuple[str | None, int | None]] | None = None
    #: its file is the saved capture: it runs first, in the exporting process (it needs the module),
    #: and every later stage reads the program from its file (exporter.pipeline)
    captures: bool = False
    #: the other files its stage writes beside ``filename`` (its record's ``side_files``): only the names
    #: a row declares are ones ``--force`` may replace as ours
    side_files: tuple[str, ...] = ()

    @property
    def suffix(self) -> str:
        return Path(self.filename).suffix

    @property
    def allowed_precisions(self) -> tuple[str, ...]:
        return self.precisions or (self.precision,)


@dataclass(frozen=True)
class Plugin:
    name: str
    formats: tuple[Format, ...] = ()
    runners: tuple[type[Runner], ...] = ()
    options: tuple[Option, ...] = ()
    #: distributions whose versions a bundle records when this plugin built something in it
    tools: tuple[str, ...] = ()
    #: where its stages go among the plugins' (lower first; a row's requirements always come first)
    order: int = 100
    #: prepares what the plugin needs outside this environment (``bsconv-export setup NAME``):
    #: called with a progress callback, returns one line saying what is ready
    setup: Callable[..., str] | None = None
    #: imports its stages need, made ahead by a stage worker while the capture runs (exporter.workers)
    warm: Callable[[], None] | None = None
    #: the module it came from (filled in on discovery)
    module: str = ""
    #: precisions it declares, each with its gate and strictness (its rows may then name them)
    precisions: tuple[Precision, ...] = ()
    #: the distribution that installed it, when not this tool (filled in on discovery): its version is
    #: recorded with the tools and keys the stage cache, so a new release of a plugin is never served stale
    distribution: str = ""


@dataclass
class _Registry:
    plugins: list[Plugin] = field(default_factory=list)
    formats: dict[str, Format] = field(default_factory=dict)
    runners: list[type[Runner]] = field(default_factory=list)
    options: dict[str, Option] = field(default_factory=dict)
    owner: dict[str, str] = field(default_factory=dict)     # format name -> plugin name
    errors: list[str] = field(default_factory=list)         # plugins that could not be loaded, and why
    precisions: dict[str, Precision] = field(default_factory=dict)   # name -> its rule


_registry: _Registry | None = None


def _entry_points() -> list:
    from importlib.metadata import entry_points
    return list(entry_points(group=ENTRY_POINT_GROUP))


#: how long a third-party plugin may take to import before it is left out (it may hang)
PLUGIN_IMPORT_SECONDS = 30.0
#: the flags the commands a plugin option joins already have: a plugin option may not take one
RESERVED_FLAGS = frozenset({
    "--batch", "--checkpoint", "--dynamic-batch", "--force", "--formats", "--input-size", "--input-spec", "--jobs",
    "--json", "--labels", "--mean", "--model", "--model-arg", "--no-cache", "--no-check", "--on", "--out",
    "--program", "--replace-anyway", "--std", "--help", "--samples", "--data", "--threads", "--version"})
_FLAG = re.compile(r"--[a-z][a-z0-9]*(-[a-z0-9]+)*")
#: a format's file and side files: one name at the bundle's top level, not hidden
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")
_OWN = "bsconv_export."


def _load(ep):
    """``ep.load()``: this tool's own plugins here; a third party's in a thread bounded by
    :data:`PLUGIN_IMPORT_SECONDS`, so one that hangs or calls ``sys.exit`` at import is an error of its own."""
    if ep.value.startswith(_OWN):
        return ep.load()
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = ep.load()
        except BaseException as e:  # noqa: BLE001 - SystemExit included: reported, never ends the tool
            box["error"] = e
    worker = threading.Thread(target=run, name=f"bsconv-export-plugin-{ep.name}", daemon=True)
    worker.start()
    worker.join(PLUGIN_IMPORT_SECONDS)
    if worker.is_alive():
        raise TimeoutError(f"its import did not finish within {PLUGIN_IMPORT_SECONDS:g} s")
    if "error" in box:
        e = box["error"]
        if isinstance(e, SystemExit):
            raise RuntimeError(f"its import called sys.exit({e.code!r})")
        raise e
    return box["value"]


def _distribution(ep) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None or ep.value.startswith(_OWN):
        return ""
    try:
        return str(dist.metadata["Name"] or "")
    except Exception:  # noqa: BLE001 - metadata of a broken install: no version recorded, nothing else
        return ""


def _discover() -> _Registry:
    """Load every plugin the entry points name. This tool's own plugins are registered first, so a third
    party cannot displace one (a clashing newcomer is left out); stages then go in (order, name) order.
    A plugin that fails to import (or hangs, or exits), exposes no ``PLUGIN``, or reuses a registered
    name or a command's flag is left out whole, with the reason."""
    reg = _Registry(precisions={p.name: p for p in BUILT_IN_PRECISIONS})
    for name, opt in ((o.name, o) for o in PIPELINE_OPTIONS):
        reg.options[name] = opt
    found: list[Plugin] = []
    for ep in sorted(_entry_points(), key=lambda e: (e.name, e.value)):
        try:
            loaded = _load(ep)   # "package.module" exposing PLUGIN, or "package.module:NAME" naming one
            plugin = loaded if isinstance(loaded, Plugin) else getattr(loaded, "PLUGIN", None)
            if not isinstance(plugin, Plugin):
                raise TypeError(f"{ep.value} exposes no PLUGIN (a bsconv_export.exporter.formats.Plugin)")
        except Exception as e:  # noqa: BLE001 - a broken third-party plugin must not break the tool
            reg.errors.append(f"plugin {ep.name!r} ({ep.value}): {type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}")
            continue
        found.append(Plugin(**{**plugin.__dict__, "module": ep.value, "distribution": _distribution(ep)}))
    if not found:
        reg.errors.append("no format plugin is installed: the package's entry points are missing; "
                          "reinstall it (pip install -e .)")
    for plugin in sorted(found, key=lambda p: (not p.module.startswith(_OWN), p.order, p.name)):
        problem = _conflict(reg, plugin)
        if problem:
            reg.errors.append(f"plugin {plugin.name!r} ({plugin.module}): {problem}; left out")
            continue
        reg.plugins.append(plugin)
        reg.precisions.update({p.name: p for p in plugin.precisions})
        for o in plugin.options:
            reg.options[o.name] = o
        for f in plugin.formats:
            reg.formats[f.name] = f
            reg.owner[f.name] = plugin.name
    reg.plugins.sort(key=lambda p: (p.order, p.name))
    reg.runners = [r for p in reg.plugins for r in p.runners]
    reg.formats = _requirements_first({f.name: f for p in reg.plugins for f in p.formats})
    return reg


def _conflict(reg: _Registry, plugin: Plugin) -> str | None:
    if any(p.name == plugin.name for p in reg.plugins):
        return "a plugin of that name is already loaded"
    names = [f.name for f in plugin.formats]
    clash = [n for n in names if n in reg.formats] + sorted({n for n in names if names.count(n) > 1})
    if clash:
        return f"format {', '.join(clash)} is registered twice"
    odd = [f.filename for f in plugin.formats for name in (f.filename, *f.side_files)
           if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name) or name in (".", "..")]
    if odd:
        return f"file name {', '.join(map(repr, odd))} is not a plain name inside the bundle"
    files = {f.filename for f in reg.formats.values()}
    clash = [f.filename for f in plugin.formats if f.filename in files]
    if clash:
        return f"file name {', '.join(clash)} belongs to another format"
    clash = [o.name for o in plugin.options if o.name in reg.options]
    if clash:
        return f"option {', '.join(clash)} is declared twice"
    taken = RESERVED_FLAGS | {o.flag for o in reg.options.values()}
    clash = [o.flag for o in plugin.options if not isinstance(o.flag, str) or not _FLAG.fullmatch(o.flag)
             or o.flag in taken]
    if clash:
        return f"option flag {', '.join(map(str, clash))} is a command's own, taken, or not a --kebab-case flag"
    clash = [r.name for r in plugin.runners if any(r.name == q.name for q in reg.runners)]
    if clash:
        return f"runner {', '.join(clash)} is registered twice"
    clash = [p.name for p in plugin.precisions if not isinstance(p, Precision) or p.name in reg.precisions]
    if clash:
        return f"precision {', '.join(map(str, clash))} is declared twice (or is not a Precision)"
    rules = {*reg.precisions, *(p.name for p in plugin.precisions)}
    unknown = sorted({q for f in plugin.formats for q in f.allowed_precisions if q not in rules})
    if unknown:
        return f"names precision {', '.join(unknown)}, which no plugin declares (declare it in Plugin.precisions)"
    known = {*reg.formats, *names}
    missing = [r for f in plugin.formats for r in f.requires if r not in known]
    if missing:
        return f"requires unregistered format {', '.join(missing)}"
    declared = {*reg.options, *(o.name for o in plugin.options)}
    undeclared = [o for f in plugin.formats for o in f.options if o not in declared]
    if undeclared:
        return f"reads undeclared option {', '.join(undeclared)}"
    return None


def _requirements_first(formats: dict[str, Format]) -> dict[str, Format]:
    """Stage order: plugin order, each row after the rows it requires."""
    out: dict[str, Format] = {}

    def add(f: Format) -> None:
        if f.name not in out:
            for r in f.requires:
                add(formats[r])
            out[f.name] = f

    for f in formats.values():
        add(f)
    return out


def registry() -> _Registry:
    global _registry
    if _registry is None:
        _registry = _discover()
    return _registry


def reload_plugins() -> None:
    """Forget the loaded plugins (after installing one in this process); found again on next use."""
    global _registry
    _registry = None


class _Formats(Mapping):
    """The format table, by name, in stage order (loaded on first use)."""

    def __getitem__(self, name: str) -> Format:
        return registry().formats[name]

    def __iter__(self) -> Iterator[str]:
        return iter(registry().formats)

    def __len__(self) -> int:
        return len(registry().formats)


FORMATS: Mapping[str, Format] = _Formats()


def get_format(name: str) -> Format | None:
    return FORMATS.get(name)


def kind_for_suffix(suffix: str) -> str | None:
    """The runner kind of a lone artifact by its suffix (``bench model.onnx``)."""
    return next((f.kind for f in FORMATS.values() if f.suffix == suffix), None)


def artifact_suffixes() -> tuple[str, ...]:
    return tuple(dict.fromkeys(f.suffix for f in FORMATS.values()))


def plugins() -> list[Plugin]:
    return list(registry().plugins)


def precision_rule(name: str) -> Precision:
    """The rule of a precision by name (an unknown one: fp32's, the strictest)."""
    rules = registry().precisions
    return rules.get(name, rules["fp32"])


def strictness() -> dict[str, int]:
    """Every declared precision's strictness: a file is never judged looser than its row allows."""
    return {name: p.strictness for name, p in registry().precisions.items()}


def tolerance_for(precision: str, target: str = "host") -> Tolerance:
    """The default rule for a file judged at ``precision``, run on ``target`` (``host`` or ``arm64:CPU``)."""
    return precision_rule(precision).tolerance_on(target)


def arm64_parts() -> list[Callable]:
    """The ``prepare`` hooks of the plugins' ARM64 runners: what ``setup arm64`` adds to the kit."""
    return [r.prepare for r in registry().runners if r.target == "arm64" and hasattr(r, "prepare")]


def plugin_errors() -> list[str]:
    return list(registry().errors)


def declared_options() -> dict[str, Option]:
    return dict(registry().options)


def plugin_of(fmt: str) -> Plugin | None:
    owner = registry().owner.get(fmt)
    return next((p for p in registry().plugins if p.name == owner), None)


def runners_for(kind: str, *, purpose: str = "verify", target: str = "host") -> list[type[Runner]]:
    """Registered runner classes for an artifact kind, for ``"verify"`` (check) or ``"time"`` (bench),
    on ``target`` (``"host"``, or an emulated one such as ``"arm64"``)."""
    attr = "verifies" if purpose == "verify" else "timeable"
    return [r for r in registry().runners if kind in r.kinds and getattr(r, attr) and r.target == target]


def tool_names(formats: Iterable[str]) -> tuple[str, ...]:
    """The distributions whose versions a bundle of these formats records."""
    names: list[str] = []
    for f in formats:
        p = plugin_of(f)
        if p is not None:
            names += [*p.tools, *([p.distribution] if p.distribution else [])]
    return tuple(dict.fromkeys(names))


def tool_versions(formats: Iterable[str] | None = None) -> dict[str, str]:
    """Versions of what produced or runs an artifact: the core's, and each plugin's tools (of the
    plugins that built ``formats``; of every plugin when None)."""
    from ...kernel.backends import core_versions, package_versions
    names = tool_names(formats) if formats is not None else tuple(dict.fromkeys(
        t for p in registry().plugins for t in (*p.tools, *([p.distribution] if p.distribution else []))))
    return {**core_versions(), **package_versions(names)}


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

