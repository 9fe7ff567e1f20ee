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
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ...models.checkpoint import LoadedCheckpoint
from ...kernel import limits
from ...kernel.errors import UserInputError
from ...models.profile import profile_model
from ..check.inputs import check_inputs
from ..check.reference import torch_reference
from ..check.run import CheckOptions, PriorWork, run_check
from ..kit.context import ExportContext
from ..formats import (complete_options, default_formats, plan, recorded_options, reproduce_command, tool_versions,
                       validate_options)
from ..bundle.manifest import ExportInfo, Manifest, ModelInfo
from ..bundle.on_disk import inventory
from ..bundle.manifest_io import write_manifest
from ..bundle.claim import OutClaim
from ..kit.options import ExportOptions
from .cache_keys import check_key, source_key
from .schedule import run_stages
from .stage_timings import record_own_work
from ..kit.prepare import example_input, prepare_for_export
from ..kit.records import ArtifactRecord, Status
from .stagecache import StageCache
from .workers import VerifyJob


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
    from ...kernel.machine import usable_cores
    return max(1, min(torch.get_num_threads(), usable_cores()))


def export_bundle(loaded: LoadedCheckpoint, out: str | os.PathLike, opts: ExportOptions = ExportOptions(),
                  progress: Callable[[str, ArtifactRecord | None], None] | None = None,
                  check: CheckOptions | None = None,
                  check_progress: Callable | None = None, *, jobs: int | None = None,
                  cache: bool = True) -> BundleResult:
    """Export ``loaded`` to a bundle at ``out``; with ``check``, prove it equivalent before it lands.
    ``jobs``: stages side by side in that many worker processes (default: the usable cores; 1: one
    after another in this process). ``cache``: take unchanged stages' files (and their checks) from
    the stage cache, and keep what passed there (exporter.export.stagecache)."""
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
    if jobs is not None and jobs < 1:
        raise UserInputError(f"--jobs {jobs}: give at least 1 (1 runs the stages one after another)")
    inputs = loaded.source.input_files(loaded)
    claim = OutClaim(out, force=opts.force, inputs=inputs)
    if claim.check() and check is None and not opts.replace_anyway:
        raise UserInputError(f"--no-check would leave the new bundle unverified, so it would not replace {out}; "
                             "drop --no-check, or add --replace-anyway")
    stage_cache = StageCache() if cache else None
    with claim, tempfile.TemporaryDirectory(prefix="bsconv-export-") as scratch:
        tmp = claim.building_dir()
        try:
            planned = plan(opts)
            shared = PriorWork()
            verify, references = _check_ahead(loaded, spec, opts, planned, check, Path(scratch), shared)
            prepared = prepare_for_export(loaded.model)
            profile = profile_model(loaded.model, size)
            ctx = ExportContext(model=prepared, arch=loaded.arch, spec=spec,
                                example=example_input(spec.channels, size, opts.batch), options=opts,
                                workdir=tmp, threads=export_threads(), checkpoint_sha256=loaded.sha256,
                                params=profile.params, macs=profile.macs)
            with torch.no_grad():
                run = run_stages(ctx, planned, jobs=jobs, cache=stage_cache, source_key=source_key(loaded, size),
                                 scratch=Path(scratch), progress=progress, verify=verify,
                                 pool_started=references)
            shared.replays, shared.facts = run.replays, dict(run.facts)
            manifest = build_manifest(ctx, loaded, reproduce_command(
                loaded.source.reproduce_args(loaded), opts, out, size))
            release_export_memory(ctx)
            del prepared
            if check is not None:
                if progress:
                    progress("check", None)
                if references is not None:
                    references.result()
                    if references.seconds:
                        record_own_work(stage_cache, tuple(ctx.example.shape), references.seconds)
                if stage_cache is not None:
                    shared.earlier = _earlier(stage_cache, run, check)
                    shared.facts.update({h.record.path: (h.record.sha256, tuple(h.entry["facts"]))
                                         for h in run.hits.values()
                                         if isinstance(h.entry.get("facts"), list) and len(h.entry["facts"]) == 2})
                manifest.check = run_check(tmp, manifest, loaded.model, check, check_progress, shared)
                if stage_cache is not None:
                    _keep(stage_cache, run, manifest, tmp, check, shared.inputs_digest)
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


class _References:
    """The check's PyTorch references, computed in a thread while the stage workers run."""

    def __init__(self, model, inputs, half: bool, shared: PriorWork):
        self.model, self.inputs, self.half, self.shared = model, inputs, half, shared
        self.thread = None
        self.seconds = 0.0

    def __call__(self) -> None:
        import threading
        self.thread = threading.Thread(target=self._run, name="bsconv-export-references", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import threading
        import time
        try:   # the stages are what everyone waits for: this thread takes the cores they leave
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except (AttributeError, OSError):
            pass
        t0 = time.thread_time()     # its cost in CPU time: niced, its wall time says little
        try:
            ref = torch_reference(self.model, self.inputs.x, half=self.half)
        except Exception:  # noqa: BLE001 - the check computes them itself, and reports what fails
            return
        self.seconds = time.thread_time() - t0
        self.shared.reference = (self.inputs.digest(), self.half, ref)

    def result(self) -> None:
        if self.thread is not None:
            self.thread.join()


def _check_ahead(loaded, spec, opts: ExportOptions, planned, check: CheckOptions | None, scratch: Path,
                 shared: PriorWork):
    """The check's inputs as the planned files will need them, written for the stage workers to run
    each new file on; and the references, to compute while the stages run. (None, None) without a check
    or with user data (read once, by the check)."""
    if check is None or check.data is not None:
        return None, None
    from ..formats import planned_precision, precision_rule
    rules = [precision_rule(planned_precision(f, opts)) for f in planned]
    inputs = check_inputs(spec, None, check.samples, reduced=any(r.reduced for r in rules))
    path = scratch / "check-inputs.npz"
    np.savez(path, x=inputs.x, fp32_rows=inputs.fp32_rows if inputs.fp32_rows is not None else np.zeros(0, int))
    verify = VerifyJob(inputs_file=str(path), export_shape=[opts.batch, spec.channels, spec.size, spec.size],
                       spec=spec)
    return verify, _References(loaded.model, inputs, any(r.half_reference for r in rules), shared)


def _earlier(cache: StageCache, run, check: CheckOptions):
    """The stage cache's verdicts on a reused file (same file, program, inputs, options, versions)."""
    def earlier(target, sha256: str, digest_: str):
        hit = run.hits.get(target.fmt.name)
        if hit is None or hit.record.sha256 != sha256 or run.program_sha256 is None:
            return None
        return cache.checks(hit, check_key(run, check, target.name, sha256, digest_))
    return earlier


def _keep(cache: StageCache, run, manifest: Manifest, bundle: Path, check: CheckOptions, digest_: str) -> None:
    """Store every file whose check passed (made this time, or reused with a new check) in the cache."""
    if run.program_sha256 is None or not digest_:
        return
    for record in manifest.artifacts:
        key = run.keys.get(record.format)
        records = [r for r in manifest.check.records if r.artifact == record.format]
        if (key is None or not record.ok or not records or all(r.reused for r in records)
                or not any(r.status is Status.OK for r in records)
                or any(r.status not in (Status.OK, Status.SKIPPED) for r in records)):
            continue
        try:
            from ..check.files import file_facts
            from ..formats import FORMATS
            cache.store(key, record, bundle, check_key(run, check, record.path, record.sha256, digest_), records,
                        manifest.check.reference_error, list(file_facts(FORMATS[record.format], bundle / record.path)))
        except (OSError, ValueError):
            pass    # a full or read-only cache costs the next export time, never this one's result
    try:
        cache.evict(keep=tuple(run.keys.values()))
    except OSError:
        pass


def build_manifest(ctx: ExportContext, loaded: LoadedCheckpoint, command: str) -> Manifest:
    return Manifest(
        model=ModelInfo(arch=ctx.arch, num_classes=ctx.spec.num_classes, params=ctx.params, macs=ctx.macs,
                        input_spec=ctx.spec, checkpoint=str(loaded.path) if loaded.sha256 else None,
                        checkpoint_sha256=loaded.sha256 or None,
                        trained=not loaded.untrained, source=loaded.source),
        export=ExportInfo(input_shape=list(ctx.example.shape), dynamic_batch=ctx.options.dynamic_batch,
                          formats=list(ctx.options.formats), options=recorded_options(ctx.options)),
        artifacts=list(ctx.records.values()), tools=tool_versions(ctx.records), command=command)
