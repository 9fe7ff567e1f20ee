"""What every export stage reads (the prepared model, its spec, the options, the program), and one stage run."""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from ...models.registry import InputSpec

from .capture import Capture, capture_program
from .options import ExportOptions
from .records import ArtifactRecord, Status, finished


@dataclass
class ExportContext:
    model: nn.Module                  # prepared (see prepare.py)
    arch: str
    spec: InputSpec                   # with the export's input size
    example: torch.Tensor
    options: ExportOptions
    workdir: Path                     # the bundle being built
    checkpoint_sha256: str
    params: int
    macs: int
    #: threads a stage's own runtime sessions use (chosen by the pipeline, never inherited)
    threads: int | None = None
    records: dict[str, ArtifactRecord] = field(default_factory=dict)
    capture: Capture | None = None
    capture_error: Exception | None = None
    #: once the capture is saved: the file every later stage reads the program from (see use_program_file)
    program_file: Path | None = None

    def use_program_file(self, path: Path) -> None:
        """From now on the program is the one saved in ``path``, read back on first use: the stages
        after the capture read the same bytes whether they run here, in a worker process or
        from the stage cache, so their files are the same whichever way they were made."""
        self.program_file = Path(path)
        self.capture = None

    def program(self) -> "torch.export.ExportedProgram":
        """The bundle's one ``torch.export`` capture, made on first use (see capture.py), or read
        back from :attr:`program_file` once it is saved."""
        if self.capture_error is not None:
            raise self.capture_error
        if self.capture is None and self.program_file is not None:
            self.capture = _read_program(self.program_file, self.options.dynamic_batch)
        if self.capture is None:
            try:
                self.capture = capture_program(self.model, self.example, dynamic_batch=self.options.dynamic_batch)
            except Exception as e:  # noqa: BLE001 - every stage that needs the program fails with this
                self.capture_error = RuntimeError(f"torch.export could not capture the model: "
                                                  f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}")
                raise self.capture_error from e
        return self.capture.program

    def with_options(self, **changes) -> "ExportContext":
        """The same context with some options changed (a stage that builds a variant of another's format)."""
        return replace(self, options=self.options.replace(**changes))


def _read_program(path: Path, dynamic_batch: bool) -> Capture:
    """The saved capture, read with the safe loader; a file that will not load is this export's
    failure (its stages fail with the reason), not the user's input."""
    from ...models.program import ProgramError, load_program
    t0 = time.perf_counter()
    try:
        program, _ = load_program(path)
    except ProgramError as e:
        raise RuntimeError(f"the saved program {path.name} could not be read back: {e}") from None
    return Capture(program=program, seconds=time.perf_counter() - t0, dynamic_batch=dynamic_batch)


def run_stage(fmt, ctx: ExportContext) -> ArtifactRecord:
    """One row's stage in this process: its record (failed with the reason when it raises; skipped
    when a row it requires did not succeed); bad input found inside it is raised."""
    from ...kernel.errors import UserInputError
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
    problem = record_problem(fmt, record) if isinstance(record, ArtifactRecord) else \
        f"its stage returned {type(record).__name__}, not an ArtifactRecord"
    if problem:   # a plugin's record is a claim too: never hashed, written or listed when it leaves its row
        return ArtifactRecord(format=fmt.name, status=Status.FAILED, seconds=time.perf_counter() - t0,
                              error=f"the {fmt.name} stage's record {problem}; the plugin is at fault")
    refused = _delegated_or_failed(fmt, record, ctx)
    return refused if refused is not None else finished(record, ctx.workdir)


def _delegated_or_failed(fmt, record: ArtifactRecord, ctx: ExportContext) -> ArtifactRecord | None:
    """``--require-delegated FORMAT``: a file whose record shows operators outside its delegate is a failed
    stage naming them, and its files leave the bundle (an app would meet the fallback at run time);
    None when the record stands (it is then hashed as usual)."""
    wanted = getattr(ctx.options, "require_delegated", ()) or ()   # a stage run with options not completed
    if not record.ok or fmt.name not in wanted or fmt.fallback is None:
        return None
    outside = fmt.fallback(record)
    if not outside:
        return None
    for name in (record.path, *record.side_files):
        target = ctx.workdir / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    ops = ", ".join(f"{op} ×{n}" for op, n in sorted(outside.items()))
    return ArtifactRecord(format=fmt.name, status=Status.FAILED, seconds=record.seconds, details=record.details,
                          error=f"--require-delegated {fmt.name}: {sum(outside.values())} operator(s) fall back "
                                f"outside its delegate: {ops}")


def record_problem(fmt, record: ArtifactRecord) -> str | None:
    """What is wrong with a stage's record: another format's, a file other than its row's, or a side file
    that is not a plain name its row declares (None: nothing)."""
    if record.format != fmt.name:
        return f"names format {record.format!r}"
    if record.ok and record.path != fmt.filename:
        return f"names file {record.path!r}, not its row's {fmt.filename!r}"
    strays = [f for f in record.side_files if not isinstance(f, str) or f not in fmt.side_files]
    if strays:
        return f"lists side files its row does not declare ({', '.join(map(str, strays[:3]))})"
    return None
