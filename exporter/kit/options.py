"""Export options: one declaration per option, and the options object every stage reads.

An :class:`Option` says everything about one option once: its name (the key stages read,
``ctx.options.coreml_precision``), its flag, type, default, choices and help. From the
declarations the CLI builds its parameters, the format table validates ("this option
needs that format", "one of ..."), the manifest records the options and the reproduce
command spells them. A format plugin declares the options it owns; the pipeline's own
(input size, batch, ...) are fields of :class:`ExportOptions`. This module imports
nothing of the project: a leaf.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable


#: how a message names a value's type
TYPE_WORDS = {str: "text", int: "a whole number", float: "a number", bool: "true or false"}


@dataclass(frozen=True)
class Option:
    name: str                       # the key stages read: ctx.options.<name>
    flag: str                       # the CLI's spelling, e.g. "--coreml-precision"
    type: type                      # str, int, float or bool
    default: Any
    help: str
    choices: tuple = ()             # the values allowed (empty: any of the type)
    repeatable: bool = False        # a tuple of values, the flag given once per value
    negated: bool = False           # a bool whose flag turns it off ("--no-simplify" sets simplify False)

    def to_json(self, value: Any) -> Any:
        return list(value) if self.repeatable else value

    def from_json(self, value: Any) -> Any:
        """A recorded value read back (a manifest is untrusted: the type is checked)."""
        if self.repeatable:
            if not isinstance(value, list) or not all(isinstance(v, self.type) for v in value):
                raise ValueError(f"'{self.name}' must be a list of {TYPE_WORDS.get(self.type, self.type.__name__)}")
            return tuple(value)
        if value is None and self.default is None:
            return None
        ok = isinstance(value, self.type) and (self.type is bool or not isinstance(value, bool))
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value)
        if not ok:
            raise ValueError(f"'{self.name}' must be {TYPE_WORDS.get(self.type, self.type.__name__)}")
        return value

    def cli_args(self, value: Any) -> list[str]:
        """How the reproduce command spells ``value`` (nothing for the default)."""
        if value == self.default:
            return []
        if self.type is bool:
            return [self.flag]
        if self.repeatable:
            return [a for v in value for a in (self.flag, str(v))]
        return [self.flag, str(value)]


#: options the pipeline owns that more than one format reads (their rows name them)
PIPELINE_OPTIONS = (
    Option("legacy_exporter", "--legacy-exporter", bool, False,
           "ONNX and CoreML from torch.jit.trace (TorchScript exporter) instead of the torch.export program: "
           "deprecated by torch, needed only for --opset below 18."),
    Option("calibration", "--calibration", str, None,
           "int8 calibration: a folder of images (PNG, JPEG, WebP; read by the app's pixel rule), an .npz with an "
           "'input' array of real samples, or 'random' (latency work only). "
           "Default: the digits' training split for a digits model."),
    Option("require_delegated", "--require-delegated", str, (),
           "Fail this format's file when any operator falls back outside its delegate, naming them "
           "(repeatable; formats that record their delegation: see docs/export.md).", repeatable=True),
)


class ExportOptions:
    """The options of one export: the pipeline's own fields and each declared format option by name.

    Unset format options read as their declared default once :meth:`completed` with the
    declarations (the pipeline does that before any stage runs). Immutable.
    """

    _FIELDS = ("formats", "input_size", "batch", "dynamic_batch", "force", "replace_anyway")

    def __init__(self, formats: tuple[str, ...] = (), input_size: int | None = None, batch: int = 1,
                 dynamic_batch: bool = False, force: bool = False, replace_anyway: bool = False,
                 **values: Any):
        set_ = object.__setattr__
        set_(self, "formats", tuple(formats or ()))     # empty: the format table's defaults
        set_(self, "input_size", input_size)
        set_(self, "batch", batch)
        set_(self, "dynamic_batch", dynamic_batch)
        set_(self, "force", force)                      # replace a bundle this tool wrote
        set_(self, "replace_anyway", replace_anyway)    # with force: even when the new one did not pass
        set_(self, "values", dict(values))              # format options by declared name

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("values", {})
        if name in values:
            return values[name]
        raise AttributeError(f"no export option {name!r} (declared options are read once the options are "
                             "completed with the format plugins' declarations)")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("ExportOptions is immutable; use .replace(...)")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExportOptions) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(repr(self._key()))

    def _key(self) -> tuple:
        return tuple(getattr(self, f) for f in self._FIELDS) + (tuple(sorted(self.values.items())),)

    def __repr__(self) -> str:
        parts = [f"{f}={getattr(self, f)!r}" for f in self._FIELDS] + [f"{k}={v!r}" for k, v in self.values.items()]
        return f"ExportOptions({', '.join(parts)})"

    def replace(self, **changes: Any) -> "ExportOptions":
        own = {f: changes.pop(f, getattr(self, f)) for f in self._FIELDS}
        return ExportOptions(**own, **{**self.values, **changes})

    def completed(self, declared: Iterable[Option]) -> "ExportOptions":
        """Every declared option present (its default where unset); an undeclared name is a TypeError."""
        declared = {o.name: o for o in declared}
        unknown = sorted(set(self.values) - set(declared))
        if unknown:
            raise TypeError(f"unknown export option(s) {', '.join(unknown)}; declared: {', '.join(sorted(declared))}")
        return self.replace(**{name: self.values.get(name, o.default) for name, o in declared.items()})

    def is_set(self, option: Option) -> bool:
        return self.values.get(option.name, option.default) != option.default
