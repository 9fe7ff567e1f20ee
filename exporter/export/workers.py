"""Worker processes that run an export's stages side by side, and run each new artifact once for the check.

A worker is a fresh Python started with multiprocessing's *spawn* (no torch state, no
thread pool and no open file crosses a fork). It is started when the export starts, so
its imports overlap the parent's capture, and takes one job at a time over a pipe: a
:class:`StageJob` names a format row, the options, the spec and the saved program file;
the worker rebuilds an :class:`~exporter.context.ExportContext` that reads the program
from that file (exactly as the in-process path does after the capture), runs the row's
stage and returns its record. A stage that raises is a failed record, as in process; bad
input found inside a stage comes back as such and stops the export; a worker that dies
(killed, out of memory) is a failed record for its stage, and a new worker takes the next
job.

With :class:`VerifyJob`, the worker then runs the new file through every host runner of
its kind on the check's inputs and returns a :class:`~exporter.check.replay.Replay` per runner,
which the check (in the parent) holds to the same rules as a runner it loaded itself. Each job's peak resident memory is measured (``VmHWM``, reset
before the job) and returned with its record.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..kit.records import ArtifactRecord, Status
from ..check.replay import Replay


@dataclass
class VerifyJob:
    inputs_file: str                   # .npz: x (all rows), fp32_rows (empty: all rows)
    export_shape: list[int]
    spec: Any                          # the bundle's InputSpec: runners read pixels rules from it, never the file


@dataclass
class StageJob:
    fmt: str
    options: Any                       # ExportOptions
    arch: str
    spec: Any                          # InputSpec with the export's size
    example: Any                       # the example tensor (small)
    workdir: str
    program_file: str
    checkpoint_sha256: str
    params: int
    macs: int
    threads: int
    records: dict[str, ArtifactRecord] = field(default_factory=dict)   # the rows this one requires
    verify: VerifyJob | None = None


@dataclass
class StageResult:
    record: ArtifactRecord
    replays: list[Replay] = field(default_factory=list)
    peak_mib: float | None = None
    user_error: str | None = None      # bad input found inside the stage: the export stops
    facts: tuple | None = None         # what the new file says (exporter.check.files.file_facts), read where its plugin is loaded


# --- the worker side -----------------------------------------------------------------------

def serve(conn, threads: int, preload: tuple[str, ...]) -> None:
    """A worker's main loop: jobs in, results out, until the pipe closes or None arrives."""
    os.environ["OMP_NUM_THREADS"] = str(threads)   # before torch is imported: its pool is this size
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import importlib
    import torch
    torch.set_num_threads(threads)
    _progress_bars_lock_in_process()
    from ..formats import plugins
    for name in preload:
        try:
            importlib.import_module(name)
            plugin = next((p for p in plugins() if p.module == name), None)
            if plugin is not None and plugin.warm is not None:
                plugin.warm()
        except Exception:  # noqa: BLE001 - a plugin that cannot import fails its stage with the reason
            pass
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if job is None:
            return
        reset_peak()
        try:
            result = run_job(job)
        except KeyboardInterrupt:
            return
        result.peak_mib = peak_mib()
        try:
            conn.send(result)
        except (OSError, ValueError):
            return


def _progress_bars_lock_in_process() -> None:
    """tqdm (torch.fx's interpreter opens one in every capture) guards its bars with a multiprocessing
    lock: a named semaphore, registered with the resource tracker this worker shares with its parent.
    A worker ends by SIGTERM (StagePool.close), so the semaphore was never unregistered and the parent
    printed "leaked semaphore objects" at the end of every export. A worker's bars are its own: a
    thread lock is enough."""
    try:
        import threading

        from tqdm import tqdm
    except ImportError:
        return
    tqdm.set_lock(threading.RLock())


def run_job(job: StageJob) -> StageResult:
    import torch
    from ...kernel.errors import UserInputError
    from ..kit.context import ExportContext, run_stage
    from ..formats import FORMATS
    fmt = FORMATS[job.fmt]
    torch.set_num_threads(job.threads)
    ctx = ExportContext(model=None, arch=job.arch, spec=job.spec, example=job.example, options=job.options,
                        workdir=Path(job.workdir), checkpoint_sha256=job.checkpoint_sha256, params=job.params,
                        macs=job.macs, threads=job.threads, records=dict(job.records))
    ctx.use_program_file(Path(job.program_file))
    try:
        with torch.no_grad():
            record = run_stage(fmt, ctx)
    except UserInputError as e:
        return StageResult(record=ArtifactRecord(format=job.fmt, status=Status.FAILED), user_error=str(e))
    replays = verify_artifact(fmt, record, job) if job.verify is not None and record.ok else []
    facts = None
    if record.ok:
        from ..check.files import file_facts
        facts = file_facts(fmt, Path(job.workdir) / record.path)
    return StageResult(record=record, replays=replays, facts=facts)


def verify_artifact(fmt, record: ArtifactRecord, job: StageJob) -> list[Replay]:
    """Every host runner of the row's kind over the check's inputs, as replays for the parent's check."""
    from ..check.files import file_facts, judged_precision
    from ..formats import precision_rule, runners_for
    path = Path(job.workdir) / record.path
    with np.load(job.verify.inputs_file, allow_pickle=False) as data:
        x, fp32_rows = data["x"], data["fp32_rows"]
    content, _ = file_facts(fmt, path)
    precision, _ = judged_precision(fmt, content, record.path)
    if not precision_rule(precision).reduced and len(fp32_rows):
        x = x[fp32_rows]
    return [Replay.recorded(cls, path, record.sha256, x, job.verify.spec, job.verify.export_shape, job.threads)
            for cls in runners_for(fmt.kind)]


def reset_peak() -> bool:
    """Start measuring this process's peak resident memory afresh (Linux); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


# --- the parent side: a pool of workers ------------------------------------------------------

@dataclass
class _Worker:
    process: Any
    conn: Any
    warmed: tuple[str, ...] = ()       # plugin modules it imported ahead
    job: StageJob | None = None


class StagePool:
    """One spawned worker per entry of ``preloads`` (the plugin modules it imports, and warms, before
    its first job), each with ``threads`` threads."""

    def __init__(self, preloads: list[tuple[str, ...]], threads: int):
        import multiprocessing
        self._mp = multiprocessing.get_context("spawn")
        self.threads = threads
        self._workers: list[_Worker] = [self._start(p) for p in preloads]

    def _start(self, preload: tuple[str, ...] = ()) -> _Worker:
        parent, child = self._mp.Pipe()
        process = self._mp.Process(target=serve, args=(child, self.threads, preload),
                                   name="bsconv-export-stage", daemon=True)
        process.start()
        child.close()
        return _Worker(process=process, conn=parent, warmed=preload)

    @property
    def free(self) -> bool:
        return any(w.job is None for w in self._workers)

    @property
    def busy(self) -> bool:
        return any(w.job is not None for w in self._workers)

    def submit(self, job: StageJob, module: str = "") -> None:
        """Send ``job`` to a free worker, one that warmed ``module`` (its plugin) if there is one."""
        free = [w for w in self._workers if w.job is None]
        worker = next((w for w in free if module in w.warmed), free[0])
        worker.job = job
        try:
            worker.conn.send(job)
        except (OSError, ValueError):
            pass   # a dead worker: wait() reports it through its sentinel

    def wait(self, timeout: float | None = None) -> list[tuple[StageJob, StageResult]]:
        """The jobs that finished (or whose worker died: a failed record), at least one unless ``timeout``."""
        from multiprocessing.connection import wait
        busy = [w for w in self._workers if w.job is not None]
        ready = set(map(id, wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout)))
        done = []
        for w in busy:
            if id(w.conn) not in ready and id(w.process.sentinel) not in ready:
                continue
            job, w.job = w.job, None
            result = None
            try:
                if w.conn.poll():
                    result = w.conn.recv()
            except (EOFError, OSError):
                result = None
            if not isinstance(result, StageResult):
                result = StageResult(record=ArtifactRecord(format=job.fmt, status=Status.FAILED,
                                                           error=_death(w.process)))
                self._replace(w)
            done.append((job, result))
        return done

    def _replace(self, worker: _Worker) -> None:
        worker.process.join(timeout=5)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(timeout=5)
        worker.conn.close()
        fresh = self._start()
        worker.process, worker.conn, worker.warmed = fresh.process, fresh.conn, ()

    def close(self) -> None:
        """End every worker now: an idle one holds nothing (SIGTERM ends it without the slow teardown of
        what it imported); one still running a stage is killed (the export stopped: nothing of it is kept)."""
        for w in self._workers:
            if w.job is not None:
                w.process.kill()
            else:
                w.process.terminate()
        for w in self._workers:
            w.process.join(timeout=5)
            if w.process.is_alive():
                w.process.kill()
                w.process.join(timeout=5)
            w.conn.close()


def _death(process) -> str:
    """Why a worker died, in words."""
    process.join(timeout=5)
    code = process.exitcode
    if code is not None and code < 0:
        import signal
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"the worker process running this stage was killed by {name}{hint}; its stage did not finish"
    return f"the worker process running this stage exited (code {code}) before it finished"
