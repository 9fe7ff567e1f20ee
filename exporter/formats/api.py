"""The plugin API's two types: :class:`Format`, one row of the format table (how a file is made, what
it needs, its precision, which runners load it), and :class:`Plugin`, what one plugin contributes
(rows, runners, options, precisions with their gates, tools, setup). docs/plugins.md documents each
field; a plugin module exposes ``PLUGIN`` and is found through the entry-point group
:data:`ENTRY_POINT_GROUP`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ...models.registry import InputSpec
from ..kit.options import ExportOptions, Option
from ..kit.tolerances import Precision
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
    #: and every later stage reads the program from its file (exporter.export.schedule)
    captures: bool = False
    #: the other files its stage writes beside ``filename`` (its record's ``side_files``): only the names
    #: a row declares are ones ``--force`` may replace as ours
    side_files: tuple[str, ...] = ()
    #: the app platforms that ship its file ("android", "ios"): the "what to ship" table lists it there
    platforms: tuple[str, ...] = ()
    #: the operators its file leaves outside its delegate (name -> count), read from its record; None: the
    #: row records no delegation (``--require-delegated`` then refuses to name it)
    fallback: Callable[[Any], dict[str, int]] | None = None

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
    #: imports its stages need, made ahead by a stage worker while the capture runs (exporter.export.workers)
    warm: Callable[[], None] | None = None
    #: the module it came from (filled in on discovery)
    module: str = ""
    #: precisions it declares, each with its gate and strictness (its rows may then name them)
    precisions: tuple[Precision, ...] = ()
    #: the distribution that installed it, when not this tool (filled in on discovery): its version is
    #: recorded with the tools and keys the stage cache, so a new release of a plugin is never served stale
    distribution: str = ""
