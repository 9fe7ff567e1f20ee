"""The check's run: every artifact of a bundle against the PyTorch original, enforced.

What is checked, and at which precision, comes from the bundle's files and the format table
(:mod:`.files`), never from the manifest. Before an artifact runs, its path must stay inside the
bundle and its sha256 must match the manifest; after loading, what it tells an app must match the
manifest (:mod:`.declared`) and its output shape PyTorch's; then its outputs meet its precision's
gate (:mod:`.verdict`) against the reference (:mod:`.reference`) on the check's inputs
(:mod:`.inputs`). Each miss is a failed record naming both sides. A runner that cannot run here is
*skipped* with the reason; an artifact that no runner verified is *unverified*, which fails.
Threads are chosen, not inherited. Per artifact and runner the record keeps every metric.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ...kernel import machine
from ...kernel.contract import OUTPUT_NAME
from ..formats import precision_rule, runners_for, tolerance_for
from ..kit.records import CheckRecord, CheckReport, Status, path_sha256
from ..kit.tolerances import Tolerance, user_tolerance
from ..runners import Runner, RunnerUnavailable, UnsupportedOp, infer_batched
from .declared import contract_problem, declared_problem
from .files import BundleFile, bundle_files
from .inputs import CheckInputs, check_inputs
from .reference import Reference, torch_reference
from .verdict import measure, verdict


@dataclass
class PriorWork:
    """Work done before the check that it takes instead of doing again (the export run): the
    references, computed while the stages ran; replays of runners that ran new files in the stage
    workers (each answers only for the file hash and inputs it ran); and earlier verdicts on the same
    file, inputs and versions from the stage cache (``earlier(target, sha256, inputs digest)`` →
    (records, reference_error) or None). The check fills in ``inputs_digest``."""
    reference: tuple[str, bool, Reference] | None = None     # (inputs digest, with fp16, the reference)
    replays: dict[tuple[str, str], Any] = field(default_factory=dict)   # (file name, runner name) -> Replay
    earlier: Callable[[BundleFile, str, str], tuple[list[CheckRecord], dict] | None] | None = None
    inputs_digest: str = ""
    #: file facts read before, by file name → (its sha256 then, (precision, opset)): see .files
    facts: dict[str, tuple[str, tuple]] = field(default_factory=dict)


def check_bundle(bundle: str | Path, manifest, model: nn.Module, inputs: CheckInputs,
                 tolerance_override: Tolerance | None = None, localize: bool = False,
                 progress: Callable[[CheckRecord], None] | None = None,
                 found: tuple[list[BundleFile], list[CheckRecord]] | None = None,
                 on: tuple[str, ...] = (), shared: PriorWork | None = None) -> CheckReport:
    """Check every OK artifact of ``manifest`` (a :class:`Manifest`, in ``bundle``) against ``model``,
    on this machine's runtimes and on each emulated target in ``on`` (``"arm64:CPU"``, exporter.arm64)."""
    bundle = Path(bundle)
    # Threads are chosen, not inherited: torch's pool at most the usable cores, onnxruntime's the same
    # size and never spinning, so the two never fight (default pools on a loaded 2-core machine made
    # a 20 s check take 22 minutes)
    threads = max(1, min(torch.get_num_threads(), machine.usable_cores()))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _check_bundle(bundle, manifest, model, inputs, tolerance_override, localize, progress, found,
                             threads, on, shared or PriorWork())
    finally:
        torch.set_num_threads(previous)


def _check_bundle(bundle, manifest, model, inputs, tolerance_override, localize, progress, found,
                  threads, on: tuple[str, ...], shared: PriorWork) -> CheckReport:
    targets, problems = found or bundle_files(bundle, manifest)
    run = _CheckRun(bundle, manifest, model, inputs, tolerance_override, localize, threads, on, shared)
    shared.inputs_digest = run.digest
    run.earlier = {t.name: before for t in targets if t.fmt is not None and not t.problem and shared.earlier
                   and (before := shared.earlier(t, run.sha(t), run.digest)) is not None}
    if any(t.name not in run.earlier for t in targets):
        half = any(precision_rule(t.precision).half_reference for t in targets)
        given = shared.reference
        run.ref = given[2] if given is not None and given[0] == run.digest and given[1] == half else \
            torch_reference(model, inputs.x, half=half)
    labels = inputs.labels
    run.ref_acc = float(np.mean(run.ref.r32[:len(labels)].argmax(1) == labels)) \
        if labels is not None and run.ref is not None \
        else next((r.reference_accuracy for recs, _ in run.earlier.values() for r in recs), None)
    records: list[CheckRecord] = []
    for rec in chain(problems, (rec for target in targets for rec in run.records_of(target))):
        records.append(rec)
        if progress:
            progress(rec)
    ref = run.ref
    reference_error = {"torch_fp32_vs_fp64_max": float(ref.e32.max()),
                       "torch_fp32_vs_fp64_median": float(np.median(ref.e32)),
                       "logit_scale_max": float(np.abs(ref.r64).max())} if ref is not None else \
        next((err for _, err in run.earlier.values() if err), {})
    return CheckReport(inputs=inputs.source, samples=len(inputs.x), records=records, reference_error=reference_error)


class _CheckRun:
    """One check of one bundle: what every file's check shares (inputs, reference, hashes, earlier
    verdicts) and the check of one file (:meth:`records_of`), record by record."""

    def __init__(self, bundle, manifest, model, inputs: CheckInputs, tolerance_override, localize: bool,
                 threads: int, on: tuple[str, ...], shared: PriorWork):
        self.bundle, self.manifest, self.model, self.inputs = Path(bundle), manifest, model, inputs
        self.tolerance_override, self.localize, self.threads, self.on, self.shared = \
            tolerance_override, localize, threads, on, shared
        self.digest = inputs.digest()
        self.hashes: dict[str, str] = {}
        self.earlier: dict[str, tuple[list[CheckRecord], dict]] = {}
        self.ref: Reference | None = None
        self.ref_acc: float | None = None

    def sha(self, target: BundleFile) -> str:
        from ..bundle.on_disk import inside
        if target.name not in self.hashes:
            self.hashes[target.name] = path_sha256(inside(self.bundle, target.name))
        return self.hashes[target.name]

    def records_of(self, target: BundleFile):
        """The records of one file: its problem, or one per runner (host ones, then emulated ones side
        by side), and *unverified* when no runner could run it."""
        from ..bundle.on_disk import inside
        fmt, precision = target.fmt, target.precision
        base = dict(artifact=target.label, precision=precision, reference_accuracy=self.ref_acc,
                    tolerance=(self.tolerance_override or tolerance_for(precision)).describe())
        if fmt is None:
            claimed = f" (the manifest says format {target.record.format!r}: install the plugin that writes it)" \
                if target.record is not None else ""
            yield CheckRecord(runner="-", status=Status.UNVERIFIED, **base,
                              reason=f"{target.name} is no file this bsconv-export writes; nothing can vouch for "
                                     f"it{claimed}")
            return
        if target.problem:
            yield CheckRecord(runner="-", status=Status.FAILED, **base, reason=target.problem)
            return
        if target.record is not None and target.record.sha256 != self.sha(target):
            yield CheckRecord(runner="-", status=Status.FAILED, **base,
                              reason=f"{target.name} changed since the export: its sha256 differs from the manifest's")
            return
        if target.name in self.earlier:
            yield from self.earlier[target.name][0]
            return
        reduced = precision_rule(precision).reduced
        rows = self.inputs.fp32_rows if not reduced and self.inputs.fp32_rows is not None \
            else np.arange(len(self.inputs.x))
        # Host runners one after another (each on the chosen threads), then the emulated ones — each a
        # single-threaded QEMU process — side by side, one per usable core; records keep the table's order.
        jobs = _runners(fmt.kind, inside(self.bundle, target.name), self.threads, self.on)
        jobs = [(_replay(self.shared, target, runner, self.sha(target), self.inputs.x[rows]) or runner, where)
                if where == "host" else (runner, where) for runner, where in jobs]
        done = {id(runner): self.verify(target, runner, where, rows, base) for runner, where in jobs
                if where == "host"}
        emulated = [(runner, where) for runner, where in jobs if runner is not None and where != "host"]
        if emulated:
            with ThreadPoolExecutor(max_workers=min(len(emulated), machine.usable_cores())) as pool:
                futures = {id(runner): pool.submit(self.verify, target, runner, where, rows, base)
                           for runner, where in emulated}
                done.update({key: f.result() for key, f in futures.items()})
        verified, skipped = False, []
        for runner, where in jobs:
            if runner is None:
                yield CheckRecord(runner="-", status=Status.SKIPPED, target=where, **base,
                                  reason=f"no runner of {fmt.name} files runs on {where.split(':')[0]}")
                continue
            rec = done[id(runner)]
            verified |= rec.status in (Status.OK, Status.FAILED)
            if rec.status is Status.SKIPPED:
                skipped.append(f"{rec.runner}: {rec.reason}")
            yield rec
        if not verified:
            yield CheckRecord(runner="-", status=Status.UNVERIFIED, **base,
                              reason="no runner could verify it here" + (f" ({'; '.join(skipped)})" if skipped else
                                                                         f" (no runner loads kind {fmt.kind!r})"))

    def verify(self, target: BundleFile, runner, where: str, rows, base: dict) -> CheckRecord:
        """One runner over the inputs: its record (skipped, ok or failed, with the reason)."""
        runner.input_spec = self.manifest.model.input_spec   # inputs come from the spec, never the file's claims
        tol = self.tolerance_override or tolerance_for(target.precision, where)
        rec = CheckRecord(runner=runner.label(), status=Status.OK, target=where, **{**base, "tolerance": tol.describe()})
        reason = runner.unavailable_reason()
        if reason:
            rec.status, rec.reason = Status.SKIPPED, reason
            return rec
        x, ref = self.inputs.x[rows], self.ref.rows(rows)
        out = _run_one(rec, runner, x, ref, self.inputs.labels, tol, self.manifest.model.labels, self.manifest, target,
                       edge_rows=self.inputs.edge_rows)
        rec.seconds = getattr(runner, "replayed_seconds", rec.seconds)   # a replay: the worker's time
        if out is not None and not precision_rule(target.precision).reduced and (
                self.localize or rec.status is Status.FAILED) and out.shape == ref.r64.shape:
            worst = int(np.argmax(np.abs(out - ref.r64).max(axis=1)))
            rec.first_divergence = runner.first_divergence(self.model, x[worst:worst + 1], tol.atol or 1e-4)
        return rec


def _replay(shared: PriorWork, target: BundleFile, runner: Runner, sha256: str, x: np.ndarray):
    """The worker's run of this runner on this very file and these inputs, if there is one."""
    rep = shared.replays.get((target.name, runner.name))
    return rep if rep is not None and rep.answers(sha256, x) else None


def _runners(kind: str, path: Path, threads: int | None, targets: tuple[str, ...]):
    """(runner, where it runs) for every host runner of ``kind``, then every emulated one on each
    target's CPU — (None, target) where no runner of ``kind`` runs on that target."""
    out = [(cls(path, threads=threads, spinning=False), "host") for cls in runners_for(kind)]
    for target in targets:
        arch, _, cpu = target.partition(":")
        emulated = runners_for(kind, target=arch)
        out += [(cls(path, cpu=cpu, spinning=False), target) for cls in emulated] or [(None, target)]
    return out


def _run_one(rec: CheckRecord, runner: Runner, x: np.ndarray, ref: Reference, labels: np.ndarray | None,
             tol: Tolerance, class_labels: list[str], manifest, target: BundleFile,
             edge_rows: int = 0) -> np.ndarray | None:
    """Run one runner over the inputs, fill ``rec``; return its output (None when it did not run).
    ``edge_rows``: how many of the last inputs are the edge cases."""
    t0 = time.perf_counter()
    try:
        with runner:
            problem = contract_problem(runner, class_labels) or declared_problem(runner, manifest, target)
            if problem:
                rec.status, rec.reason = Status.FAILED, problem
                return None
            outputs = infer_batched(runner, x)
    except (RunnerUnavailable, UnsupportedOp) as e:
        rec.status, rec.reason = Status.SKIPPED, str(e)
        return None
    except Exception as e:  # noqa: BLE001 - an artifact that cannot run is a failed record, not a crash
        rec.status, rec.reason = Status.FAILED, f"could not run: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        return None
    finally:
        rec.seconds = time.perf_counter() - t0
    out = outputs.get(OUTPUT_NAME)
    if out is None:
        rec.status, rec.reason = Status.FAILED, f"no '{OUTPUT_NAME}' output (got {sorted(outputs)})"
        return None
    out = np.asarray(out)
    if out.shape != ref.r64.shape:
        rec.status, rec.reason = Status.FAILED, (f"'{OUTPUT_NAME}' has shape {list(out.shape)}, PyTorch's "
                                                 f"has {list(ref.r64.shape)}")
        return None
    rec.metrics = measure(out, ref.r64, tol, edge_rows)
    rec.metrics["torch_fp32_error_max"] = float(ref.e32.max())
    if labels is not None:
        rec.accuracy = float(np.mean(out[:len(labels)].argmax(1) == labels))
    reason = verdict(out, ref, rec.metrics, tol, rec.accuracy, rec.reference_accuracy)
    if reason:
        rec.status, rec.reason = Status.FAILED, reason
    return out


@dataclass(frozen=True)
class CheckOptions:
    data: str | None = None
    samples: int = 32
    atol: float | None = None
    rtol: float | None = None
    localize: bool = False
    #: emulated targets to run every artifact on as well (``"arm64:CPU"``): more runners, the same
    #: rules, so never a looser check (not a user option: the result can be the export's check)
    on: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        from ...kernel.limits import check_finite
        for flag, value in (("--atol", self.atol), ("--rtol", self.rtol)):
            if value is not None:
                check_finite(value, flag, 0.0)

    def user_options(self) -> dict:
        """The options that change what the check decides (recorded apart from the export's check)."""
        return {k: v for k, v in (("data", self.data), ("samples", self.samples if self.samples != 32 else None),
                                  ("atol", self.atol), ("rtol", self.rtol)) if v is not None}


def run_check(bundle: str | Path, manifest, model: nn.Module, opts: CheckOptions = CheckOptions(),
              progress: Callable[[CheckRecord], None] | None = None, shared: PriorWork | None = None) -> CheckReport:
    spec = manifest.model.input_spec
    found = bundle_files(Path(bundle), manifest, shared.facts if shared is not None else None)
    reduced = any(precision_rule(t.precision).reduced for t in found[0])
    inputs = check_inputs(spec, opts.data, opts.samples, reduced=reduced)
    report = check_bundle(bundle, manifest, model, inputs, user_tolerance(opts.atol, opts.rtol),
                          opts.localize, progress, found, opts.on, shared)
    report.options = opts.user_options()
    return report


def recheck_bundle(bundle: str | Path, opts: CheckOptions = CheckOptions(), *, checkpoint=None, entry_point=None,
                   program=None, progress: Callable[[CheckRecord], None] | None = None):
    """``check BUNDLE``: the original rebuilt from the manifest's source (the caller's flags confirm
    or replace it), every artifact checked, the result recorded in the manifest (the export's own
    check with the default rules, a re-check beside it otherwise). Returns (report, manifest)."""
    from ...models.loaders import reload_model
    from ..bundle.manifest_io import read_manifest, write_manifest
    manifest = read_manifest(bundle)
    original = reload_model(manifest.model.source, manifest.model, checkpoint=checkpoint, entry_point=entry_point,
                            program=program)
    report = run_check(bundle, manifest, original, opts, progress=progress)
    manifest.record_check(report)
    write_manifest(bundle, manifest)
    return report, manifest
