"""The export pipeline: the format table's rows in order, records collected, one manifest.

The bundle is built in a hidden sibling folder of ``out`` and renamed into place
only when every stage has run (and, when it replaces an existing bundle, only
when the new one passed its check), so a crash or Ctrl-C never leaves a
half-written bundle at ``out``. A stage that raises is recorded as failed and the
others still run; a stage whose requirement failed is skipped with the reason.
Bad options are refused before anything is written, and a bad input found inside
a stage (a calibration file of the wrong shape) is still bad input: it stops the
export with nothing written.
"""
from __future__ import annotations

import gc
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..models.checkpoint import LoadedCheckpoint
from ..models import limits
from ..models.errors import UserInputError
from ..models.profile import profile_model
from .check import CheckOptions, run_check
from .context import ExportContext
from .formats import (Format, complete_options, default_formats, plan, recorded_options, reproduce_command,
                      tool_versions, validate_options)
from .manifest import ExportInfo, Manifest, ModelInfo, inventory, write_manifest
from .outdir import OutClaim
from .options import ExportOptions
from .prepare import example_input, prepare_for_export
from .records import ArtifactRecord, Status, finished


@dataclass
class BundleResult:
    out: Path
    manifest: Manifest
    replaced: bool = False       # an existing bundle at ``out`` was replaced
    kept_old: bool = False       # an existing bundle was kept because the new one did not pass

    @property
    def ok(self) -> bool:
        return self.manifest.passed and not self.kept_old

    @property
    def records(self) -> list[ArtifactRecord]:
        return self.manifest.artifacts


def check_input_size(opts: ExportOptions, loaded: LoadedCheckpoint) -> int:
    size = opts.input_size or loaded.input_spec.size
    stride = getattr(loaded.model, "total_stride", 1)
    if size < stride:
        raise UserInputError(f"--input-size {size} is smaller than {loaded.arch}'s total stride {stride}; "
                             f"use at least {stride} (its native size is {loaded.input_spec.size})")
    limits.check_input_size(size)
    limits.check_batch(opts.batch)
    limits.check_input_elements((opts.batch, loaded.input_spec.channels, size, size), "an export input")
    return size


def check_program_batch(opts: ExportOptions, loaded: LoadedCheckpoint) -> None:
    """A --program captured at a fixed batch exports at that batch only."""
    shape = getattr(loaded.model, "program_input_shape", None)
    if not shape or not shape[0]:
        return   # a dynamic program: reused for --dynamic-batch, captured again at a fixed --batch
    if opts.dynamic_batch:
        raise UserInputError(f"{loaded.arch} was captured at a fixed batch of {shape[0]}, so it cannot be exported "
                             "with --dynamic-batch; capture it with a Dim batch or drop --dynamic-batch")
    if opts.batch != shape[0]:
        raise UserInputError(f"{loaded.arch} was captured at batch {shape[0]}; pass --batch {shape[0]}")


def release_export_memory(ctx: ExportContext) -> None:
    """Drop what only the stages needed (the program, the prepared copy) before the check runs in
    the same process, and hand freed heap back to the system: the V2 export at 224 peaked at
    2.9 GiB with them kept."""
    ctx.capture = None
    ctx.model = None  # type: ignore[assignment]
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass   # not glibc: the memory is still free for this process to reuse


def export_threads() -> int:
    """Threads for the stages' own runtime sessions (int8's planning and gates): the torch pool's size,
    at most the usable cores, so a stage's onnxruntime and torch never fight over the machine."""
    from .machine import usable_cores
    return max(1, min(torch.get_num_threads(), usable_cores()))


def _run_stage(fmt: Format, ctx: ExportContext) -> ArtifactRecord:
    failed = [r for r in fmt.requires if not ctx.records[r].ok]
    if failed:
        return ArtifactRecord(format=fmt.name, status=Status.SKIPPED,
                              error=f"needs {', '.join(failed)}, which did not succeed")
    t0 = time.perf_counter()
    try:
        record = fmt.stage(ctx)
    except (KeyboardInterrupt, SystemExit, UserInputError):
        raise  # bad input found inside a stage is the user's to fix: exit 2, nothing written
    except Exception as e:  # noqa: BLE001 - a stage failure is recorded, the others still run
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        record = ArtifactRecord(format=fmt.name, status=Status.FAILED, seconds=time.perf_counter() - t0,
                                error=f"{type(e).__name__}: {msg[:500]}")
    return finished(record, ctx.workdir)


def export_bundle(loaded: LoadedCheckpoint, out: str | os.PathLike, opts: ExportOptions = ExportOptions(),
                  progress: Callable[[str, ArtifactRecord | None], None] | None = None,
                  check: CheckOptions | None = None,
                  check_progress: Callable | None = None) -> BundleResult:
    """Export ``loaded`` to a bundle at ``out``; with ``check``, prove it equivalent before it lands."""
    out = Path(out)
    if not opts.formats:
        opts = opts.replace(formats=default_formats())
    opts = complete_options(opts)
    size = check_input_size(opts, loaded)
    spec = loaded.input_spec
    if size != spec.size:
        spec = type(spec).from_dict({**spec.to_dict(), "size": size})
    validate_options(opts, spec)
    check_program_batch(opts, loaded)
    inputs = loaded.source.input_files(loaded)
    claim = OutClaim(out, force=opts.force, inputs=inputs)
    if claim.check() and check is None and not opts.replace_anyway:
        raise UserInputError(f"--no-check would leave the new bundle unverified, so it would not replace {out}; "
                             "drop --no-check, or add --replace-anyway")
    with claim:
        prepared = prepare_for_export(loaded.model)
        profile = profile_model(loaded.model, size)
        tmp = claim.building_dir()
        try:
            ctx = ExportContext(model=prepared, arch=loaded.arch, spec=spec,
                                example=example_input(spec.channels, size, opts.batch), options=opts,
                                workdir=tmp, threads=export_threads(), checkpoint_sha256=loaded.sha256,
                                params=profile.params, macs=profile.macs)
            with torch.no_grad():
                for fmt in plan(opts):
                    if progress:
                        progress(fmt.name, None)
                    ctx.records[fmt.name] = _run_stage(fmt, ctx)
                    if progress:
                        progress(fmt.name, ctx.records[fmt.name])
            manifest = build_manifest(ctx, loaded, reproduce_command(
                loaded.source.reproduce_args(loaded), opts, out, size))
            release_export_memory(ctx)
            del prepared
            if check is not None:
                if progress:
                    progress("check", None)
                manifest.check = run_check(tmp, manifest, loaded.model, check, check_progress)  # its own check
            manifest.files = inventory(tmp)   # what is ours, by content (--force, report, bench)
            write_manifest(tmp, manifest)
            if claim.replacing and not manifest.passed and not opts.replace_anyway:
                shutil.rmtree(tmp, ignore_errors=True)
                return BundleResult(out=out, manifest=manifest, kept_old=True)
            claim.commit(tmp)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if e.filename is None:   # a full disk inside a converter names no file: name the bundle
                raise OSError(e.errno, e.strerror, str(out)) from e
            raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return BundleResult(out=out, manifest=manifest, replaced=claim.replacing)


def build_manifest(ctx: ExportContext, loaded: LoadedCheckpoint, command: str) -> Manifest:
    return Manifest(
        model=ModelInfo(arch=ctx.arch, num_classes=ctx.spec.num_classes, params=ctx.params, macs=ctx.macs,
                        input_spec=ctx.spec, checkpoint=str(loaded.path) if loaded.sha256 else None,
                        checkpoint_sha256=loaded.sha256 or None,
                        trained=not loaded.untrained, source=loaded.source),
        export=ExportInfo(input_shape=list(ctx.example.shape), dynamic_batch=ctx.options.dynamic_batch,
                          formats=list(ctx.options.formats), options=recorded_options(ctx.options)),
        artifacts=list(ctx.records.values()), tools=tool_versions(ctx.records), command=command)
