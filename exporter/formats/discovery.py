"""The registry: every plugin the entry points name, loaded once (bounded, a broken one left out with
its reason), and the questions the rest of the tool asks it — the format table (:data:`FORMATS`), the
runners of a kind, a precision's rule and gate, the declared options, the tools a bundle records.
Nothing outside a plugin names a format; everyone asks here.
"""
from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from ..kit.options import PIPELINE_OPTIONS, Option
from ..kit.tolerances import BUILT_IN_PRECISIONS, Precision, Tolerance
from ..runners import Runner
from .api import ENTRY_POINT_GROUP, Format, Plugin


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
    return [r.prepare for r in registry().runners if r.target == "arm64"]


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
