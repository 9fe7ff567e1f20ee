"""The planned stages, run: the capture here, then the rest side by side (this process and spawned
workers), or one after another here; each stage's file taken from the stage cache when its key hits.

The stage whose row ``captures`` (the ``.pt2`` program) runs first in this process — it needs the
Python module — and its file (or, when that format is not planned, a copy saved outside the bundle)
is what every later stage reads the program from, here or in a worker (``ExportContext.program_file``).
The later stages form a graph by their ``requires``. With ``jobs`` > 1 they are dealt to slots — this
process (one stage at a time, in a thread beside the scheduler) and ``jobs - 1`` spawned workers
(:mod:`exporter.export.workers`) — longest first by their last measured seconds; a stage starts only when its
measured peak memory fits beside the running ones, and slots × threads never exceed the usable cores.
``jobs=1`` is the sequential path, in this process. Records land in the table's order either way.
See docs/pipeline.md.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ...kernel import machine
from ..formats import Format
from ..kit.context import run_stage
from ..kit.records import ArtifactRecord, Status, path_sha256
from .cache_keys import stage_key
from .stage_timings import OWN_WORK, StageTimings
from .stagecache import Hit, StageCache
from ..check.replay import Replay
from .workers import StageJob, StagePool, VerifyJob, peak_mib, reset_peak, verify_artifact

JOBS_ENV = "BSCONV_EXPORT_JOBS"

Progress = Callable[[str, "ArtifactRecord | None"], None]


@dataclass
class StageRun:
    """What the stages left besides their records: cache keys and hits, the workers' check runs."""
    keys: dict[str, str] = field(default_factory=dict)
    hits: dict[str, Hit] = field(default_factory=dict)
    replays: dict[tuple[str, str], Replay] = field(default_factory=dict)   # (file name, runner name)
    #: what each file says, read where its plugin was loaded: file name -> (sha256, (precision, opset))
    facts: dict[str, tuple[str, tuple]] = field(default_factory=dict)
    workers: int = 1
    threads: int = 1
    program_sha256: str | None = None


def plan_workers(jobs: int | None, parallel_stages: int) -> tuple[int, int]:
    """(slots, threads each): stages run at most ``jobs`` at a time (default: ``$BSCONV_EXPORT_JOBS``, else
    the usable cores) — this process and ``slots - 1`` workers —, at most one per usable core and per stage
    that can run beside another, threads sharing the cores out."""
    cores = machine.usable_cores()
    if jobs is None and os.environ.get(JOBS_ENV, "").isdigit() and int(os.environ[JOBS_ENV]) > 0:
        jobs = int(os.environ[JOBS_ENV])
    workers = max(1, min(jobs or cores, cores, parallel_stages))
    return workers, max(1, cores // workers)


def save_program(ctx, scratch: Path) -> Path | None:
    """The capture saved outside the bundle (when no planned row's file is the program); None when
    the model cannot be captured (every stage that needs the program then fails with the reason)."""
    import torch
    try:
        program = ctx.program()
    except Exception:  # noqa: BLE001 - recorded by each stage that needs it
        return None
    buf = io.BytesIO()
    torch.export.save(program, buf)
    path = scratch / "program.pt2"
    path.write_bytes(buf.getvalue())
    return path


def available_mib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("inf")


def run_stages(ctx, planned: list[Format], *, jobs: int | None = None, cache: StageCache | None = None,
               source_key: str | None = None, scratch: Path, progress: Progress | None = None,
               verify: VerifyJob | None = None, pool_started: Callable[[], None] | None = None) -> StageRun:
    """Run ``planned`` into ``ctx.records`` (in the table's order); see the module docstring.
    ``source_key``: what the capture depends on (None: it runs user code, so it is never cached).
    ``pool_started`` is called when workers start (the files they make will need the check's references)."""
    run = StageRun()
    capture = next((f for f in planned if f.captures), None)
    rest = [f for f in planned if f is not capture]
    slots, threads = plan_workers(jobs, len(rest))
    side_by_side = slots > 1 and len(rest) > 1 and not ctx.options.legacy_exporter   # the tracer needs the module
    shape = "x".join(map(str, ctx.example.shape))
    stats = StageTimings(cache.root if cache is not None else None)
    pool = None
    dealt = deal(rest, slots, stats, shape)

    def start_pool() -> None:
        nonlocal pool
        pool = StagePool([tuple(dict.fromkeys(module_of(_row(n)) for n in names)) for names in dealt[1:]],
                         threads)
        run.workers, run.threads = slots, threads

    try:
        if capture is not None:
            if progress:
                progress(capture.name, None)
            record = _from_cache(capture, ctx, run, cache, source_key)
            if record is None:
                if side_by_side:
                    start_pool()     # the workers' imports overlap the capture
                record = _measured(capture, ctx)
            ctx.records[capture.name] = record
            if progress:
                progress(capture.name, record)
            program = ctx.workdir / record.path if record.ok else None
        else:
            program = save_program(ctx, scratch)
        if program is not None:
            run.program_sha256 = path_sha256(program)
            ctx.use_program_file(program)
        misses = rest if program is None else _settle_hits(rest, ctx, run, cache, progress)
        if pool is None and side_by_side and program is not None and len(misses) > 1:
            start_pool()
        if pool is None:
            for fmt in misses:
                _one(fmt, ctx, run, cache, run.program_sha256, progress)
        else:
            import torch
            own_threads, ctx.threads = torch.get_num_threads(), threads
            torch.set_num_threads(threads)    # this process is one slot of the cores, as each worker is
            try:
                if pool_started:
                    pool_started()
                _side_by_side(misses, ctx, run, cache, pool, dealt, stats, shape, program, progress, verify,
                              capture if capture is not None and ctx.records[capture.name].ok
                              and capture.name not in run.hits else None)
            finally:
                torch.set_num_threads(own_threads)
    finally:
        if pool is not None:
            pool.close()
    for name, rec in ctx.records.items():
        if rec.status is not Status.SKIPPED and not rec.reused:
            stats.record(name, shape, rec.seconds, rec.details.get("peak_rss_mib"))
    stats.save()
    ctx.records = {f.name: ctx.records[f.name] for f in planned}
    return run


def module_of(fmt: Format) -> str:
    from ..formats import plugin_of
    plugin = plugin_of(fmt.name)
    return plugin.module if plugin is not None else ""


def _row(name: str) -> Format:
    from ..formats import FORMATS
    return FORMATS[name]


def deal(stages: list[Format], slots: int, stats: StageTimings, shape: str) -> list[list[str]]:
    """The stages dealt out to the slots (0: this process; then each worker), longest first to the least
    loaded (by their last measured seconds): each worker imports its stages' plugins ahead, and a
    stage waits for its slot unless a worker is idle while this process has others queued."""
    load = [stats.seconds(OWN_WORK, shape)] + [0.0] * (slots - 1)   # this process also computes references
    dealt: list[list[str]] = [[] for _ in range(slots)]
    for fmt in sorted(stages, key=lambda f: -stats.seconds(f.name, shape)):
        i = load.index(min(load))
        load[i] += stats.seconds(fmt.name, shape) or 1.0
        dealt[i].append(fmt.name)
    return dealt


def _settle_hits(rest: list[Format], ctx, run: StageRun, cache, progress) -> list[Format]:
    """Take every stage whose key hits (in table order, so a hit's dependants can hit too); the rest."""
    misses = []
    for fmt in rest:
        if all(r in ctx.records for r in fmt.requires) and _from_cache(fmt, ctx, run, cache,
                                                                       run.program_sha256) is not None:
            if progress:
                progress(fmt.name, None)
            ctx.records[fmt.name] = run.hits[fmt.name].record
            if progress:
                progress(fmt.name, ctx.records[fmt.name])
        else:
            misses.append(fmt)
    return misses


def _measured(fmt: Format, ctx) -> ArtifactRecord:
    """``run_stage`` here, with the peak memory it reached."""
    measured = reset_peak()
    record = run_stage(fmt, ctx)
    if measured and record.status is not Status.SKIPPED:
        record.details.setdefault("peak_rss_mib", peak_mib())
    return record


def _one(fmt: Format, ctx, run: StageRun, cache, identity, progress) -> None:
    """A stage here: from the cache when its key hits, else run."""
    if progress:
        progress(fmt.name, None)
    record = _from_cache(fmt, ctx, run, cache, identity) or _measured(fmt, ctx)
    ctx.records[fmt.name] = record
    if progress:
        progress(fmt.name, record)


def _from_cache(fmt: Format, ctx, run: StageRun, cache, identity) -> ArtifactRecord | None:
    if fmt.name in run.hits:
        return run.hits[fmt.name].record
    if any(not ctx.records[r].ok for r in fmt.requires):
        return None    # run_stage records the skip
    if cache is None or identity is None or fmt.name in run.keys:
        return None    # no cache, or looked up already and missed
    key = run.keys[fmt.name] = stage_key(fmt, ctx, identity)
    hit = cache.lookup(key, fmt, ctx.workdir)
    if hit is None:
        return None
    run.hits[fmt.name] = hit
    return hit.record


def _side_by_side(rest: list[Format], ctx, run: StageRun, cache, pool: "StagePool", dealt: list[list[str]],
                  stats: StageTimings, shape: str, program: Path, progress, verify: VerifyJob | None,
                  verify_capture: Format | None) -> None:
    """This process is one slot (it has torch loaded already: its stages run in one thread beside this
    loop), each worker another; a ready stage goes to the slot it was dealt — or, while this process is
    busy, to an idle worker."""
    from concurrent.futures import ThreadPoolExecutor, wait as wait_futures
    from ...kernel.errors import UserInputError
    here = set(dealt[0])
    pending = sorted(rest, key=lambda f: -stats.seconds(f.name, shape))   # longest first (stable: table order)
    budget = available_mib() * 0.8
    running: dict[str, float] = {}
    local = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bsconv-export-stage")
    busy_here = None    # (format, future) of the stage running in this process

    def job(fmt: Format) -> StageJob:
        return StageJob(fmt=fmt.name, options=ctx.options, arch=ctx.arch, spec=ctx.spec, example=ctx.example,
                        workdir=str(ctx.workdir), program_file=str(program), checkpoint_sha256=ctx.checkpoint_sha256,
                        params=ctx.params, macs=ctx.macs, threads=run.threads,
                        records={r: ctx.records[r] for r in fmt.requires}, verify=verify)

    def fits(fmt: Format) -> bool:
        return not running or sum(running.values()) + stats.peak_mib(fmt.name, shape) <= budget

    def send(fmt: Format) -> None:
        pending.remove(fmt)
        running[fmt.name] = stats.peak_mib(fmt.name, shape)
        if progress:
            progress(fmt.name, None)
        pool.submit(job(fmt), module_of(fmt))

    def run_here(fmt: Format) -> None:
        import torch
        with torch.no_grad():
            _one(fmt, ctx, run, None, None, progress)
        if verify is not None and ctx.records[fmt.name].ok:
            for rep in verify_artifact(fmt, ctx.records[fmt.name], job(fmt)):
                run.replays[(ctx.records[fmt.name].path, rep.name)] = rep

    try:
        if verify is not None and verify_capture is not None:
            # run here once the workers are importing: the capture's file for the check
            busy_here = (verify_capture, local.submit(
                lambda: run.replays.update({(ctx.records[verify_capture.name].path, rep.name): rep for rep in
                                            verify_artifact(verify_capture, ctx.records[verify_capture.name],
                                                            job(verify_capture))})))
        while pending or pool.busy or busy_here is not None:
            ready = []
            for fmt in list(pending):
                if not all(r in ctx.records for r in fmt.requires):
                    continue
                if any(not ctx.records[r].ok for r in fmt.requires) or \
                        _from_cache(fmt, ctx, run, cache, run.program_sha256) is not None:
                    pending.remove(fmt)
                    _one_done(fmt, ctx, run, cache, progress)
                    continue
                ready.append(fmt)
            mine = [f for f in ready if f.name in here]
            theirs = [f for f in ready if f.name not in here]
            for fmt in theirs + (mine if busy_here is not None else mine[1:]):
                if pool.free and fits(fmt):
                    send(fmt)
            if busy_here is None:
                fmt = next((f for f in mine if f in pending), None)
                if fmt is None and not pool.busy:
                    fmt = next((f for f in ready if f in pending), None)   # nothing else runs: take it here
                if fmt is not None:
                    pending.remove(fmt)
                    busy_here = (fmt, local.submit(run_here, fmt))
            if busy_here is None and not pool.busy:
                if pending:
                    raise RuntimeError(f"stages {', '.join(f.name for f in pending)} could not be scheduled")
                break
            if busy_here is not None and busy_here[1].done():
                fmt, future = busy_here
                busy_here = None
                future.result()          # bad input found in the stage: raised here, the export stops
                continue
            for sent, result in pool.wait(timeout=0.05 if busy_here is not None else None) if pool.busy else []:
                _collected(sent, result, ctx, run, running, progress, UserInputError)
            if not pool.busy and busy_here is not None:
                wait_futures([busy_here[1]], timeout=0.05)
    finally:
        if busy_here is not None and not busy_here[1].done():
            # stopped (Ctrl-C, bad input from a worker): let this process's stage finish writing before
            # the bundle being built is removed
            wait_futures([busy_here[1]])
        local.shutdown(wait=False)


def _collected(sent: StageJob, result, ctx, run: StageRun, running: dict, progress, user_error) -> None:
    """A worker's result, recorded (bad input found in its stage stops the export)."""
    if result.user_error is not None:
        raise user_error(result.user_error)
    for rep in result.replays:
        run.replays[(Path(rep.path).name, rep.name)] = rep
    if result.facts is not None and result.record.ok:
        run.facts[result.record.path] = (result.record.sha256, tuple(result.facts))
    record = result.record
    if result.peak_mib is not None:
        record.details.setdefault("peak_rss_mib", result.peak_mib)
    running.pop(sent.fmt, None)
    ctx.records[sent.fmt] = record
    if progress:
        progress(sent.fmt, record)


def _one_done(fmt: Format, ctx, run: StageRun, cache, progress) -> None:
    """A stage settled without a worker: skipped for a failed requirement, or taken from the cache."""
    if progress:
        progress(fmt.name, None)
    hit = run.hits.get(fmt.name)
    ctx.records[fmt.name] = hit.record if hit is not None else run_stage(fmt, ctx)
    if progress:
        progress(fmt.name, ctx.records[fmt.name])


