"""Many exports at once: a plan's independent export + check jobs (:mod:`.plan`) fanned out on Dask.

Each job runs exactly :func:`exporter.export.run.export_bundle` — the same bundle, the same claim and ``force`` rules, the
same check — in a Dask worker: a ``LocalCluster`` on 127.0.0.1 sized to the machine (one
process per usable core, one torch thread each, memory split between them, no dashboard), or
the scheduler at ``--scheduler``. A job that fails is a failed row with its reason; a job whose
worker dies is retried once on another, then a failed row; nothing stops the others.
``resume`` skips jobs whose bundle already passed with the same inputs (the model's source and
checkpoint hash, the options, the tool versions) and whose files are unchanged since.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ...kernel.errors import UserInputError
from .dask_peer import probe_scheduler
from .deadline import deadline_after_interrupt
from .plan import SCHEMA, Job


# --- one job, in a worker -----------------------------------------------------------------------

def run_job(job: Job, threads: int = 1) -> dict:
    """What ``export`` does for ``job``, as a result row (never raises: a failure is a row)."""
    import torch

    from ..export.run import export_bundle
    from ..check.run import CheckOptions
    from ..kit.options import ExportOptions
    from ...models.loaders import resolve_request
    from ...models.request import request_from_options
    t0 = time.perf_counter()
    row = {"job": job.index, "out": job.out, "worker": _worker_name(), "verdict": "failed", "artifacts": {},
           "seconds": 0.0, "error": None}
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        Path(job.out).parent.mkdir(parents=True, exist_ok=True)   # the plan names the folders its bundles go in
        loaded = resolve_request(request_from_options(**job.model, input_size=job.options.get("input_size")))
        # one job per worker already fills the machine: its stages run one after another, in this process
        result = export_bundle(loaded, job.out, ExportOptions(**job.options),
                               check=CheckOptions() if job.check else None, jobs=1)
        manifest = result.manifest
        row.update(verdict=manifest.verdict if not result.kept_old else f"{manifest.verdict} (kept the old bundle)",
                   artifacts={a.format: a.status.value for a in manifest.artifacts}, arch=manifest.model.arch)
        if manifest.check is not None:
            row["check"] = {f"{c.artifact}/{c.runner}": c.status.value for c in manifest.check.records}
    except UserInputError as e:
        row["error"] = str(e)
    except Exception as e:  # noqa: BLE001 - a job's crash is its row, never the sweep's end
        row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:400] if str(e).strip() else ''}"
    finally:
        torch.set_num_threads(previous)
        row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def _worker_name() -> str:
    try:
        from distributed import get_worker
        return get_worker().address
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


# --- resume ---------------------------------------------------------------------------------------

def already_passed(job: Job) -> str | None:
    """Why ``job`` need not run again (its bundle passed with the same inputs, files unchanged), or None."""
    from ..formats import complete_options, default_formats, recorded_options, tool_versions
    from ..bundle.on_disk import changed_since_export
    from ..bundle.manifest_io import read_manifest
    from ..kit.options import ExportOptions
    out = Path(job.out)
    if not (out / "manifest.json").is_file():
        return None
    try:
        manifest = read_manifest(out)
    except UserInputError:
        return None
    if manifest.verdict != "passed" or changed_since_export(out, manifest):
        return None
    opts = ExportOptions(**job.options)
    opts = complete_options(opts if opts.formats else opts.replace(formats=default_formats()))
    if list(opts.formats) != list(manifest.export.formats) or recorded_options(opts) != manifest.export.options:
        return None
    if opts.dynamic_batch != manifest.export.dynamic_batch or opts.batch != manifest.export.input_shape[0]:
        return None
    size = job.options.get("input_size")
    if size is not None and size != manifest.export.input_shape[-1]:
        return None
    if not _same_model(job, manifest):
        return None
    current = tool_versions([a.format for a in manifest.artifacts])
    if any(manifest.tools.get(k) != v for k, v in current.items() if k != "onnxruntime_device"):
        return None
    return "passed before with the same inputs"


def _same_model(job: Job, manifest) -> bool:
    from ...models.checkpoint import file_sha256
    src = manifest.model.source.to_dict()
    m = job.model
    if m.get("program") is not None:
        return src.get("kind") == "program" and Path(m["program"]).is_file() and \
            file_sha256(m["program"]) == src.get("program_sha256")
    if m.get("model") is not None:
        if src.get("kind") != "entry_point" or src.get("entry_point") != m["model"]:
            return False
    elif src.get("kind") != "zoo":
        return False
    ckpt = m.get("checkpoint")
    if ckpt is not None:
        return Path(ckpt).is_file() and file_sha256(ckpt) == manifest.model.checkpoint_sha256
    if m.get("arch") is not None and m["arch"] != manifest.model.arch:
        return False
    return m.get("model") is not None or manifest.model.checkpoint_sha256 is not None or m.get("arch") is not None


# --- the sweep -------------------------------------------------------------------------------------

@dataclass
class SweepResult:
    rows: list[dict]
    workers: int
    scheduler: str
    seconds: float

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r.get("verdict") not in ("passed", "skipped", "unverified")]

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "scheduler": self.scheduler, "workers": self.workers,
                "seconds": round(self.seconds, 2), "jobs": self.rows}


def run_sweep(jobs: list[Job], *, scheduler: str | None = None, workers: int | None = None, resume: bool = False,
              progress: Callable[[dict, int, int], None] | None = None) -> SweepResult:
    """Run every job (``resume``: but those already passed) on Dask; one row per job, in plan order."""
    import dask
    from distributed import Client, LocalCluster, as_completed
    from distributed.client import FutureCancelledError

    from ...kernel.machine import usable_cores
    t0 = time.perf_counter()
    rows: dict[int, dict] = {}
    todo = []
    for job in jobs:
        reason = already_passed(job) if resume else None
        if reason:
            rows[job.index] = {"job": job.index, "out": job.out, "verdict": "skipped", "reason": reason,
                               "worker": None, "seconds": 0.0, "artifacts": {}, "error": None}
            if progress:
                progress(rows[job.index], len(rows), len(jobs))
        else:
            todo.append(job)
    if not todo:
        return SweepResult(rows=[rows[j.index] for j in jobs], workers=0, scheduler="none (nothing to run)",
                           seconds=time.perf_counter() - t0)
    cluster = client = None
    n_workers = 0
    _adopt_orphans()

    def unfinished() -> list[Job]:
        return [job for job in todo if job.index not in rows]

    # a task whose worker dies is retried once on another worker, then reported (KilledWorker)
    settings = {"distributed.scheduler.allowed-failures": 1, "distributed.worker.daemon": False,
                "distributed.admin.system-monitor.gil.enabled": False}
    # however the main thread is held when Ctrl-C comes, the process is over within seconds (.deadline)
    with deadline_after_interrupt(lambda: _kill_and_clear(unfinished())), dask.config.set(settings):
        try:
            if scheduler is None:
                n = max(1, min(workers or usable_cores(), usable_cores(), max(1, len(todo))))
                memory = _memory_per_worker(n)
                cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                                       dashboard_address=None, memory_limit=memory, silence_logs=50,
                                       env={"OMP_NUM_THREADS": "1", "ORT_DISABLE_TELEMETRY": "1"})
                address = cluster.scheduler_address
            else:
                address = scheduler
                probe_scheduler(address)    # a silent or garbling peer: one line, not a hang or a huge read
            try:
                client = Client(address, timeout="30s")
            except OSError as e:
                raise UserInputError(f"cannot reach the Dask scheduler at {address} ({e}); start it, or drop "
                                     "--scheduler to run on this machine") from None
            n_workers = len(client.scheduler_info().get("workers", {})) if cluster is None else len(cluster.workers)
            if not n_workers:
                client.wait_for_workers(1, timeout=60)
                n_workers = len(client.scheduler_info().get("workers", {}))
            futures = {client.submit(run_job, job, 1, pure=False, key=f"bsconv-export-job-{job.index}-"
                                     f"{time.time_ns()}"): job for job in todo}
            for future in as_completed(futures):
                job = futures[future]
                try:
                    row = future.result()
                except FutureCancelledError:
                    row = _lost(job, "the job was cancelled")
                except Exception as e:  # noqa: BLE001 - KilledWorker and its kin: the job's row
                    row = _lost(job, f"{type(e).__name__}: the worker running it died twice "
                                     f"({str(e).splitlines()[0][:200] if str(e) else 'no message'})")
                rows[job.index] = row
                if progress:
                    progress(row, len(rows), len(jobs))
        except (KeyboardInterrupt, SystemExit):
            # Ctrl-C or SIGTERM: the jobs are ended, not waited for
            _end_now(cluster, client, unfinished())
            raise
        except BaseException:
            _close(cluster, client)
            raise
        _close(cluster, client)
    return SweepResult(rows=[rows[j.index] for j in jobs], workers=n_workers,
                       scheduler="local" if scheduler is None else scheduler, seconds=time.perf_counter() - t0)


def _close(cluster, client) -> None:
    """The polite end: the client, then the local cluster (its workers finish what they hold)."""
    if client is not None:
        client.close()
    if cluster is not None:
        cluster.close()


def _end_now(cluster, client, unfinished: list[Job]) -> None:
    """The sweep was interrupted: end it within seconds, leaving nothing running and nothing half-built.

    In this order, so that what matters is done before anything that can wait: the local cluster's
    nannies are marked closing (a nanny restarts a worker whose process died unless it is closing);
    every process this one started is killed (the workers, and what a stage started); the killed jobs'
    build folders go (marked, under their locks, which the dead no longer hold; each export builds
    aside, so nothing else of a killed job exists); then the client and the cluster are closed in a
    thread given 10 s, and whatever of ours is still running after that is killed too, so the polite
    close cannot hold the exit (and :mod:`.deadline` bounds the whole unwinding)."""
    import logging
    import threading
    for name in ("distributed", "tornado"):     # the closing comms' tracebacks say nothing to the user
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if cluster is not None:
        from distributed.core import Status
        for nanny in list(getattr(cluster, "workers", {}).values()):
            if getattr(nanny, "status", None) not in (Status.closing, Status.closed):
                nanny.status = Status.closing_gracefully   # a worker that dies now is closed, not restarted
    _kill_and_clear(unfinished)

    def polite() -> None:
        try:
            if client is not None:
                client.close(timeout=5)
            if cluster is not None:
                cluster.close(timeout=5)
        except Exception:  # noqa: BLE001 - an interrupted close: the processes are gone already
            pass

    closing = threading.Thread(target=polite, name="bsconv-export-sweep-close", daemon=True)
    closing.start()
    closing.join(timeout=10)
    _kill_descendants()


def _kill_and_clear(unfinished: list[Job]) -> None:
    """Every process this one started is killed, then the killed jobs' build folders go."""
    from ..bundle.claim import OutClaim
    _kill_descendants()
    for job in unfinished:
        OutClaim(Path(job.out), force=False).remove_killed_run()


def _adopt_orphans() -> None:
    """Make this process its descendants' reaper (Linux ``PR_SET_CHILD_SUBREAPER``): a process whose
    parent dies (a worker killed under one of its stages) is then re-parented here, not to init, so
    :func:`_kill_descendants` still finds it. Elsewhere nothing changes."""
    import ctypes
    import sys
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)     # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _kill_descendants() -> None:
    """SIGKILL every process this one started, and theirs, but multiprocessing's resource trackers (each
    ends by itself when the processes it watches are gone, and removes what they leaked)."""
    import psutil
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    killed = []
    for child in children:
        try:
            if not any("resource_tracker" in part for part in child.cmdline()):
                child.kill()
                killed.append(child)
        except psutil.Error:
            pass     # gone already
    psutil.wait_procs(killed, timeout=5)


def _lost(job: Job, why: str) -> dict:
    return {"job": job.index, "out": job.out, "verdict": "failed", "worker": None, "seconds": 0.0,
            "artifacts": {}, "error": why}


def _memory_per_worker(n: int) -> int:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0   # unknown: no limit
    return int(total * 0.8 / n)
