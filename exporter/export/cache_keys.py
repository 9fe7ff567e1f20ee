"""The stage cache's keys, in one place: what a stage's file, the capture and a file's check depend on.

A key is the sha256 of a canonical JSON payload (:func:`digest`). A stage's key covers the program it
reads, the rows it requires (their files' sha256), the options it reads, the spec, its plugin's
package versions, this tool's own code (:func:`code_digest`) and the platform; the capture's covers
the model source and its files' content; a check's covers the file, the program, the check inputs'
digest and the check's options. See :mod:`.stagecache` for the store the keys name.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..kit.records import path_sha256

if TYPE_CHECKING:   # types only: the keys import nothing that imports them
    from ...models.checkpoint import LoadedCheckpoint
    from ..check.run import CheckOptions
    from ..formats import Format

#: the cache's layout and key version: a change makes every old entry a miss
SCHEMA = 1


def digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """This tool's own code and data (an editable install changes without a version bump)."""
    root = Path(__file__).resolve().parents[2]
    h = hashlib.sha256()
    paths = [root / "cli.py", *sorted(p for d in ("exporter", "kernel", "models") for p in (root / d).rglob("*")
                                      if p.is_file() and "__pycache__" not in p.parts)]
    for p in paths:
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + b"\0")
            h.update(p.read_bytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def platform_facts() -> dict[str, Any]:
    from ...kernel.machine import ISA_FLAGS, _cpuinfo
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    return {"machine": platform.machine(), "system": platform.system(), "python": platform.python_version(),
            "cpu": info.get("model name") or platform.processor(), "isa": sorted(f for f in ISA_FLAGS if f in flags)}


def option_value(value: Any) -> Any:
    """An option's value as a key sees it: a file an option names by path counts by its content, a folder
    (of calibration images) by its files' names and contents."""
    if isinstance(value, str) and value and os.path.isfile(value):
        return {"file_sha256": path_sha256(Path(value))}
    if isinstance(value, str) and value and os.path.isdir(value):
        root = Path(value)
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
        return {"folder_sha256": digest([[p.relative_to(root).as_posix(), path_sha256(p)] for p in files])}
    return value


def source_key(loaded: LoadedCheckpoint, size: int) -> str | None:
    """What the capture depends on, for its cache key: the source, the checkpoint's or program file's
    content; None for a source that runs the user's code (that code can change under any name)."""
    if loaded.source.runs_user_code:
        return None
    files = {str(p): path_sha256(Path(p)) for p in loaded.source.input_files(loaded) if Path(p).is_file()}
    return digest({"source": loaded.source.to_dict(), "arch": loaded.arch, "checkpoint_sha256": loaded.sha256,
                   "untrained": loaded.untrained, "files": sorted(files.values()), "size": size})


def stage_key(fmt: Format, ctx, identity: str) -> str:
    """Everything ``fmt``'s file depends on (see exporter.export.stagecache): ``identity`` is the program's
    sha256 (the capture's own key: the model source's)."""
    from ..formats import tool_versions
    from ..kit.options import PIPELINE_OPTIONS
    opts = ctx.options
    names = [*(o.name for o in PIPELINE_OPTIONS), *fmt.options]
    return digest({"schema": SCHEMA, "format": fmt.name, "program": identity, "arch": ctx.arch,
                   "spec": ctx.spec.to_dict(), "checkpoint_sha256": ctx.checkpoint_sha256,
                   "example_shape": list(ctx.example.shape), "batch": opts.batch, "dynamic_batch": opts.dynamic_batch,
                   "options": {n: option_value(getattr(opts, n)) for n in names},
                   "requires": {r: ctx.records[r].sha256 for r in fmt.requires},
                   "versions": tool_versions([fmt.name]), "code": code_digest(), "platform": platform_facts()})


def check_key(run, check: CheckOptions, target_name: str, sha256: str, digest_: str) -> str:
    """The key of a file's check records: the file, the program, the check inputs, the check's options,
    the versions, this code and the platform."""
    from ..formats import tool_versions
    return digest({"file": target_name, "sha256": sha256, "program": run.program_sha256, "inputs": digest_,
                   "options": check.user_options(), "on": list(check.on), "localize": check.localize,
                   "versions": tool_versions(), "code": code_digest(), "platform": platform_facts()})
