"""Where a model comes from, as types: a zoo name, a Python entry point, or an ExportedProgram file.

Every command that takes a model reads a :class:`~.request.ModelRequest` and gets back a
:class:`~.checkpoint.LoadedCheckpoint` whose ``source`` says which of the three it was; the manifest
records that source (``to_dict`` / :func:`source_from_dict`) and the reproduce command is built from it.
Loading (and rebuilding a bundle's original) is :mod:`.loaders`'s; parsing the flags, :mod:`.request`'s.

* **zoo** — ``ARCH`` and/or ``--checkpoint``: the model zoo.
* **entry point** — ``--model package.module:factory`` with ``--model-arg key=value``: the user's code.
* **program** — ``--program model.pt2``: an ExportedProgram, never unpickled or run.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

class ModelSource:
    """Where a model came from: one class per kind (:class:`ZooSource`, :class:`EntryPointSource`,
    :class:`ProgramSource`), each with its manifest record (``to_dict`` / :func:`source_from_dict`),
    and its command-line spelling; :mod:`.loaders` loads one from a request and rebuilds the original
    a bundle came from."""

    kind: ClassVar[str] = ""
    #: loading it imports and runs the user's code (which can change under the same name)
    runs_user_code: ClassVar[bool] = False

    def __init_subclass__(cls, **kw) -> None:
        super().__init_subclass__(**kw)
        if cls.kind:
            SOURCES[cls.kind] = cls

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def cli_args(self) -> list[str]:
        """How a command line names this source (without the checkpoint or spec options)."""
        raise NotImplementedError

    @property
    def label(self) -> str:
        """A short name for tables and the manifest's ``arch``."""
        raise NotImplementedError

    def reproduce_args(self, loaded) -> list[str]:
        """How the reproduce command names the model: the source, its checkpoint and its spec options."""
        return [*self.cli_args(), *loaded.spec_args]

    def input_files(self, loaded) -> tuple[Path, ...]:
        """The files an export reads for this model (never to be replaced by its bundle)."""
        return (Path(loaded.path),) if loaded.sha256 else ()


SOURCES: dict[str, type[ModelSource]] = {}


@dataclass(frozen=True)
class ZooSource(ModelSource):
    """``ARCH`` and/or ``--checkpoint``: the model zoo."""

    kind: ClassVar[str] = "zoo"
    arch: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "arch": self.arch}

    @classmethod
    def from_dict(cls, r, d: dict) -> "ZooSource":
        return cls(arch=r.get(d, "arch", str))

    def cli_args(self) -> list[str]:
        return [self.arch] if self.arch else []

    @property
    def label(self) -> str:
        return self.arch

    def reproduce_args(self, loaded) -> list[str]:
        return ["--checkpoint", str(loaded.path)] if loaded.sha256 else [loaded.arch]


@dataclass(frozen=True)
class EntryPointSource(ModelSource):
    """``--model package.module:factory`` with ``--model-arg key=value``: the user's own code."""

    kind: ClassVar[str] = "entry_point"
    runs_user_code: ClassVar[bool] = True
    entry_point: str = ""
    model_args: tuple[tuple[str, str], ...] = ()  # as typed, in order

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "entry_point": self.entry_point, "model_args": {k: v for k, v in self.model_args}}

    @classmethod
    def from_dict(cls, r, d: dict) -> "EntryPointSource":
        args = r.get(d, "model_args", dict, optional=True, default={})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in args.items()):
            raise r.bad("'model_args' must map names to strings")
        return cls(entry_point=r.get(d, "entry_point", str), model_args=tuple(args.items()))

    def cli_args(self) -> list[str]:
        return ["--model", self.entry_point] + [a for k, v in self.model_args for a in ("--model-arg", f"{k}={v}")]

    @property
    def label(self) -> str:
        return self.entry_point

    def reproduce_args(self, loaded) -> list[str]:
        ckpt = ["--checkpoint", str(loaded.path)] if loaded.sha256 else []
        return [*self.cli_args(), *ckpt, *loaded.spec_args]


@dataclass(frozen=True)
class ProgramSource(ModelSource):
    """``--program model.pt2``: an ExportedProgram, read without unpickling or running code from it."""

    kind: ClassVar[str] = "program"
    program: str = ""                           # path of the .pt2
    program_sha256: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "program": self.program, "program_sha256": self.program_sha256}

    @classmethod
    def from_dict(cls, r, d: dict) -> "ProgramSource":
        return cls(program=r.get(d, "program", str), program_sha256=r.get(d, "program_sha256", str))

    def cli_args(self) -> list[str]:
        return ["--program", self.program]

    @property
    def label(self) -> str:
        return Path(self.program).name

    def input_files(self, loaded) -> tuple[Path, ...]:
        return (Path(self.program),)


def source_from_dict(r, d: Any, arch: str) -> ModelSource:
    """A manifest's source record (``r``: the manifest reader, which checks types and bounds); a
    manifest from before sources were recorded names a zoo model."""
    if d is None:
        return ZooSource(arch=arch)
    kind = r.get(d, "kind", str)
    cls = SOURCES.get(kind)
    if cls is None:
        raise r.bad(f"model source kind {kind!r} is unknown")
    return cls.from_dict(r, d)
