"""Format plugins and the format table they make: one row per artifact format, read by everyone.

A *plugin* is one module (usually a folder) exposing ``PLUGIN``, a :class:`Plugin` (or an entry
naming the object, ``module:NAME``): its
format rows, the runners that load its artifacts, the options it owns, the packages
whose versions a bundle records, and where its stages go in the order. Plugins are
found through Python entry points, group ``bsconv_export.formats`` — the built-in ones
(``pt2``, ``onnx``, ``coreml``, ``executorch``, ``litert``) exactly as a third-party package's.

A row (:class:`Format`) says how the format is made (its stage function and file name),
what it needs first (``requires``), its precision, which runners load it (``kind``), what
its file itself says (``facts``: precision, opset), whether ``bench`` times it, which
options only it reads, and the batch layouts it supports. The CLI's ``--formats``,
option validation, stage order, the reproduce command, the check's choice of runners,
bench's targets and the printed tables all read this table; nothing outside a plugin
names a format.

Three modules: :mod:`.api` (the types a plugin builds), :mod:`.discovery` (the registry and its
queries) and :mod:`.planning` (what an export builds, and its options); this package re-exports
their public names, so ``from bsconv_export.exporter.formats import Format, Plugin`` is a plugin's
one import from here.
"""
from __future__ import annotations

from .api import ENTRY_POINT_GROUP, Format, Plugin
from .discovery import (FORMATS, arm64_parts, artifact_suffixes, declared_options, get_format, kind_for_suffix,
                        plugin_errors, plugin_of, plugins, precision_rule, registry, reload_plugins, runners_for,
                        strictness, tolerance_for, tool_names, tool_versions)
from .planning import (benchmark_targets, complete_options, default_formats, describe_formats, formats_help,
                       parse_formats, plan, planned_precision, preferred, recorded_options, reproduce_command,
                       selectable, validate_options)

__all__ = ["ENTRY_POINT_GROUP", "FORMATS", "Format", "Plugin", "arm64_parts", "artifact_suffixes",
           "benchmark_targets", "complete_options", "declared_options", "default_formats", "describe_formats",
           "formats_help", "get_format", "kind_for_suffix", "parse_formats", "plan", "planned_precision",
           "plugin_errors", "plugin_of", "plugins", "precision_rule", "preferred", "recorded_options", "registry",
           "reload_plugins", "reproduce_command", "runners_for", "selectable", "strictness", "tolerance_for",
           "tool_names", "tool_versions", "validate_options"]
