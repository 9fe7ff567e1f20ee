"""Equivalence check: every artifact against the PyTorch original, enforced.

Inputs: the shipped held-out digits (real, labelled) when the shipped data
applies to the model (:func:`models.data.is_digits_model`); else ``--data``;
else N inputs drawn uniformly from the model's value range (seeded). Grey data
gets coloured copies of a tenth of its inputs; edge cases are always added: all
zeros, all saturated at the top of the range, a min/max checkerboard, and each
channel saturated alone. Reduced-precision artifacts are judged on at least
``REDUCED_MIN_SAMPLES`` drawn inputs (see :mod:`tolerances`).

What is checked, and at which precision, comes from the bundle's files and the
format table (:mod:`exporter.bundle_files`), never from the manifest. The exact
answer is the PyTorch original run in float64; PyTorch fp32's own error against
it sets the scale of the fp32 rule, and for fp16 artifacts the original run
wholly in fp16 sets the scale of theirs (:mod:`exporter.tolerances`). Before an
artifact runs, its path must stay inside the bundle and its sha256 must match the
manifest; after loading, what it tells an app must match the manifest
(:mod:`exporter.declared`) and its output shape PyTorch's. Each miss is a failed
record naming both sides. Threads are chosen, not inherited.

Per artifact and runner we record max abs error (against float64), max rel
error, mean abs error, cosine (lowest over samples), top-1 agreement and its
confidence interval, top-5 overlap and, on labelled data, accuracy next to
PyTorch's. NaN or Inf fails. A runner that cannot run here is *skipped* with the
reason; an artifact that no runner verified is *unverified*, which fails.
"""
from __future__ import annotations

import copy
import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ...models.data import is_digits_model, load_holdout, load_npz_inputs
from ...models.registry import InputSpec
from .files import BundleFile, bundle_files
from ...kernel.contract import OUTPUT_NAME
from .declared import contract_problem, declared_problem
from ..kit.records import CheckRecord, CheckReport, Status, path_sha256
from ...kernel import machine
from ..formats import precision_rule, runners_for, tolerance_for
from ..runners import Runner, RunnerUnavailable, UnsupportedOp, infer_batched
from ..kit.tolerances import FP32_TYPICAL_FLOOR, REDUCED_MIN_SAMPLES, Tolerance, agreement_interval, user_tolerance

REL_EPS = 1e-6


@dataclass
class CheckInputs:
    x: np.ndarray
    labels: np.ndarray | None     # for the first len(labels) rows
    source: str
    fp32_rows: np.ndarray | None = None   # rows fp32 artifacts run on (None: all)


@dataclass
class Reference:
    r64: np.ndarray               # PyTorch in float64: the exact answer
    r32: np.ndarray               # PyTorch in float32
    e32: np.ndarray               # per sample: PyTorch fp32's own noise against r64 (see torch_reference)
    e16: np.ndarray | None = None  # per sample: PyTorch fp16's own error against r64, when fp16 artifacts are judged


@dataclass
class Shared:
    """Work done before the check that it takes instead of doing again (exporter.pipeline): the
    references, computed while the stages ran; replays of runners that ran new files in the stage
    workers (each answers only for the file hash and inputs it ran); and earlier verdicts on the same
    file, inputs and versions from the stage cache (``earlier(target, sha256, inputs digest)`` →
    (records, reference_error) or None). The check fills in ``inputs_digest``."""
    reference: tuple[str, bool, "Reference"] | None = None     # (inputs digest, with fp16, the reference)
    replays: dict[tuple[str, str], Any] = field(default_factory=dict)   # (file name, runner name) -> Replay
    earlier: Callable[[BundleFile, str, str], tuple[list[CheckRecord], dict] | None] | None = None
    inputs_digest: str = ""
    #: file facts read before, by file name → (its sha256 then, (precision, opset)): see bundle_files
    facts: dict[str, tuple[str, tuple]] = field(default_factory=dict)


def inputs_digest(inputs: CheckInputs) -> str:
    """What the check ran on, as a hash: the inputs, the labels and which rows fp32 files take."""
    h = hashlib.sha256()
    for a in (inputs.x, inputs.labels, inputs.fp32_rows):
        if a is not None:
            a = np.ascontiguousarray(a)
            h.update(repr((a.shape, str(a.dtype))).encode() + a.tobytes())
        h.update(b"|")
    return h.hexdigest()


def edge_cases(spec: InputSpec, n_shape: tuple[int, ...]) -> np.ndarray:
    lo, hi = spec.value_range
    zeros = np.zeros(n_shape, np.float32)
    top = np.full(n_shape, hi, np.float32)
    checker = np.indices(n_shape[1:]).sum(axis=0) % 2
    board = np.where(checker, hi, lo).astype(np.float32)[None]
    primaries = []
    for c in range(n_shape[1]):
        p = np.full(n_shape, lo, np.float32)
        p[:, c] = hi
        primaries.append(p)
    return np.concatenate([zeros, top, board, *primaries])


def tinted(x: np.ndarray, spec: InputSpec, seed: int = 0) -> np.ndarray:
    """Coloured copies of grey inputs (every channel equal, as the digits are): a tenth of them (at
    least 8), each channel scaled by its own random factor towards the range's bottom, so a swapped
    or mis-scaled channel shows on many inputs, not only on the edge cases. Nothing for colour data."""
    if x.shape[1] < 2 or not len(x) or not np.array_equal(x[:, :1].repeat(x.shape[1], axis=1), x):
        return x[:0]
    rng = np.random.default_rng(seed + 1)
    pick = x[rng.choice(len(x), size=min(len(x), max(8, len(x) // 10)), replace=False)]
    lo = spec.value_range[0]
    tint = rng.uniform(0.1, 1.0, (len(pick), x.shape[1], 1, 1)).astype(np.float32)
    return (lo + (pick - lo) * tint).astype(np.float32)


def check_inputs(spec: InputSpec, data: str | Path | None = None, samples: int = 32, seed: int = 0,
                 reduced: bool = False) -> CheckInputs:
    """The check's inputs; with ``reduced``, enough drawn inputs for the agreement rules."""
    shape = spec.shape
    fp32_rows = None
    if data is not None:
        x, y = load_npz_inputs(data, spec)
        source = str(data)
    elif is_digits_model(spec):
        x, y = load_holdout(spec.size)
        source = "shipped held-out digits"
    else:
        lo, hi = spec.value_range
        n = max(samples, REDUCED_MIN_SAMPLES) if reduced else samples
        x = np.random.default_rng(seed).uniform(lo, hi, (n,) + shape).astype(np.float32)
        y = None
        source = f"{n} uniform samples in [{lo}, {hi}]"
        if n > samples:
            source += f" (fp32 artifacts: the first {samples})"
            fp32_rows = np.arange(samples)
    n_given = len(x)
    x = np.concatenate([x, tinted(x, spec, seed)])
    edges = edge_cases(spec, (1,) + shape)
    if fp32_rows is not None:
        fp32_rows = np.concatenate([fp32_rows, len(x) + np.arange(len(edges))])
    n_tinted = len(x) - n_given
    return CheckInputs(x=np.concatenate([x, edges]), labels=y,
                       source=f"{source}{f' + {n_tinted} coloured copies' if n_tinted else ''} + {len(edges)} edge cases",
                       fp32_rows=fp32_rows)


def torch_reference(model: nn.Module, x: np.ndarray, batch: int = 8, seed: int = 0, half: bool = False) -> Reference:
    """The original in float64 (the exact answer) and in float32, twice: as it is, and with every
    weight moved by up to one float32 ulp (what folding a BatchNorm into a convolution, or any
    exporter's rewrite, does to weights). The larger of the two fp32 errors per sample is the
    network's own fp32 noise on that input: how much rounding-level changes move its logits."""
    m64 = copy.deepcopy(model).double().eval()
    m32p = _ulp_perturbed(model, seed)
    outs64, outs32, outs32p = [], [], []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch]))
            outs32.append(model.eval()(xb).numpy())
            outs32p.append(m32p(xb).numpy())
            outs64.append(m64(xb.double()).numpy())
    r64, r32, r32p = np.concatenate(outs64), np.concatenate(outs32), np.concatenate(outs32p)
    e32 = np.maximum(np.abs(r32.astype(np.float64) - r64).max(axis=1), np.abs(r32p.astype(np.float64) - r64).max(axis=1))
    return Reference(r64=r64, r32=r32, e32=e32, e16=_fp16_error(model, x, r64, batch) if half else None)


def _fp16_error(model: nn.Module, x: np.ndarray, r64: np.ndarray, batch: int) -> np.ndarray:
    """Per sample, how far the original run wholly in fp16 (weights, activations, every op rounded)
    lands from float64: the scale of error fp16 arithmetic itself makes on that input. Inf where
    fp16 overflows (no bound can be drawn from it there)."""
    m16 = copy.deepcopy(model).half().eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            outs.append(m16(torch.from_numpy(np.ascontiguousarray(x[i:i + batch])).half()).double().numpy())
    err = np.abs(np.concatenate(outs) - r64).max(axis=1)
    return np.where(np.isfinite(err), err, np.inf)


def _ulp_perturbed(model: nn.Module, seed: int) -> nn.Module:
    m = copy.deepcopy(model).eval()
    g = torch.Generator().manual_seed(seed)
    eps = float(np.finfo(np.float32).eps)
    with torch.no_grad():
        for t in [*m.parameters(), *(b for b in m.buffers() if b.is_floating_point())]:
            t.mul_(1 + eps * (2 * torch.rand(t.shape, generator=g) - 1))
    return m


def compare(out: np.ndarray, ref: np.ndarray, k: int = 5) -> dict[str, float]:
    out = np.asarray(out, np.float64)
    ref = np.asarray(ref, np.float64)
    diff = np.abs(out - ref)
    finite = bool(np.isfinite(out).all())
    num = (out * ref).sum(axis=1)
    den = np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1)
    cos = np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)
    k = min(k, ref.shape[1])
    top_o = np.argsort(-out, axis=1)[:, :k]
    top_r = np.argsort(-ref, axis=1)[:, :k]
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(top_o, top_r)])
    agree = int(np.sum(out.argmax(1) == ref.argmax(1))) if finite else 0
    low, high = agreement_interval(agree, len(out))
    slope, class_bias = scale_metrics(out, ref) if finite else (float("nan"), float("inf"))
    return {
        "max_abs": float(np.nanmax(diff)) if finite else float("inf"),
        "max_rel": float(np.nanmax(diff / (np.abs(ref) + REL_EPS))) if finite else float("inf"),
        "mean_abs": float(np.nanmean(diff)) if finite else float("inf"),
        "cosine_min": float(np.nanmin(cos)) if finite else float("nan"),
        "cosine_mean": float(np.nanmean(cos)) if finite else float("nan"),
        "top1_agreement": agree / len(out),
        "top1_agreement_low": low,
        "top1_agreement_high": high,
        "top5_overlap": float(overlap) if finite else 0.0,
        "nonfinite": int((~np.isfinite(out)).sum()),
        "slope": slope,
        "class_bias_max": class_bias,
    }


def scale_metrics(out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """What probabilities see and cosine and top-1 do not: the least-squares slope of the artifact's
    logits on the reference's (1 when the scale is right; 1.5 when every logit is 1.5x), and the
    largest per-class mean error in RMS units of the reference logits (a class made more or less
    likely everywhere). Each sample's logits are centred first: softmax ignores a shift of a row."""
    o = out - out.mean(axis=1, keepdims=True)
    r = ref - ref.mean(axis=1, keepdims=True)
    energy = float((r * r).sum())
    if energy == 0.0:
        return 1.0, 0.0
    slope = float((o * r).sum() / energy)
    rms = (energy / r.size) ** 0.5
    return slope, float(np.abs((o - r).mean(axis=0)).max() / rms)


def fp32_bounds(ref: Reference, tol: Tolerance) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample bounds on |artifact − float64|: (every sample's, the median sample's);
    see :mod:`exporter.tolerances`."""
    floor = tol.atol + (tol.rtol or 0.0) * np.abs(ref.r64).max(axis=1)
    every = np.maximum(floor, (tol.factor or 0.0) * ref.e32)
    typical = (np.maximum(FP32_TYPICAL_FLOOR * floor, tol.typical_factor * ref.e32) if tol.typical_factor
               else every)
    return every, typical


def verdict(out: np.ndarray, ref: Reference, m: dict[str, float], tol: Tolerance,
            accuracy: float | None = None, reference_accuracy: float | None = None) -> str | None:
    """None when within tolerance, else the first reason it is not."""
    if m["nonfinite"]:
        return f"{m['nonfinite']} NaN/Inf values in the output"
    if tol.atol is not None:
        every, typical = fp32_bounds(ref, tol)
        err = np.abs(out.astype(np.float64) - ref.r64).max(axis=1)
        m["bound_used"] = float((err / every).max())
        m["typical_bound_used"] = float(np.median(err / typical))
        bad = err > every
        if bad.any():
            worst = int(np.argmax(err / every))
            return (f"{int(bad.sum())} of {len(err)} samples outside {tol.describe()} "
                    f"(worst: error {err[worst]:.3g}, bound {every[worst]:.3g}, "
                    f"PyTorch fp32's own noise {ref.e32[worst]:.3g})")
        if m["typical_bound_used"] > 1:
            mid = int(np.argsort(err / typical)[len(err) // 2])
            return (f"the median sample is outside {tol.describe()} (error {err[mid]:.3g}, bound "
                    f"{typical[mid]:.3g}, PyTorch fp32's own noise {ref.e32[mid]:.3g}): a systematic error")
    _reduced_bound_uses(out, ref, m, tol)
    if tol.min_cosine is not None and m["cosine_min"] < tol.min_cosine:
        return f"cosine {m['cosine_min']:.6f} < {tol.min_cosine}"
    if tol.min_top1_agreement is not None and m["top1_agreement_high"] < tol.min_top1_agreement:
        return (f"top-1 agreement {m['top1_agreement']:.2%} (95% bound {m['top1_agreement_high']:.2%}) "
                f"< {tol.min_top1_agreement:.0%}")
    if tol.max_slope_error is not None:
        if m["slope_bound_used"] > 1:
            return (f"the logits are {m['slope']:.4f}x the reference's (least-squares slope; allowed 1 ± "
                    f"{tol.max_slope_error:g}): probabilities an app thresholds are off")
    if tol.max_class_bias is not None:
        if m["class_bias_bound_used"] > 1:
            return (f"a class's logit is off by {m['class_bias_max']:.3g} RMS on average over the inputs "
                    f"(allowed {tol.max_class_bias:g}): that class is made more or less likely everywhere")
    if tol.fp16_factor is not None and ref.e16 is not None:
        if m["fp16_bound_used"] > 1:
            err = np.abs(out.astype(np.float64) - ref.r64).max(axis=1)
            worst = int(np.argmax(err / ref.e16))
            return (f"error {err[worst]:.3g} on one input is over {tol.fp16_factor:g}x PyTorch fp16's own "
                    f"({ref.e16[worst]:.3g})")
        if m["fp16_typical_bound_used"] > 1:
            return (f"the median input's error is over {tol.fp16_typical_factor:g}x PyTorch fp16's own: "
                    "a systematic error, not fp16 rounding")
    if tol.max_accuracy_drop is not None and accuracy is not None and reference_accuracy is not None \
            and reference_accuracy - accuracy > tol.max_accuracy_drop + 1e-12:
        return (f"accuracy {accuracy:.2%} is {100 * (reference_accuracy - accuracy):.2f} points below PyTorch's "
                f"{reference_accuracy:.2%} (allowed {tol.max_accuracy_drop * 100:g})")
    return None


def _reduced_bound_uses(out: np.ndarray, ref: Reference, m: dict[str, float], tol: Tolerance) -> None:
    """How much of each scale bound the artifact uses (recorded even when another rule fails it)."""
    if tol.max_slope_error is not None:
        m["slope_bound_used"] = abs(m["slope"] - 1) / tol.max_slope_error
    if tol.max_class_bias is not None:
        m["class_bias_bound_used"] = m["class_bias_max"] / tol.max_class_bias
    if tol.fp16_factor is not None and ref.e16 is not None:
        err = np.abs(out.astype(np.float64) - ref.r64).max(axis=1)
        m["fp16_bound_used"] = float(np.max(err / (tol.fp16_factor * ref.e16)))
        m["fp16_typical_bound_used"] = float(np.median(err / (tol.fp16_typical_factor * ref.e16)))


def check_bundle(bundle: str | Path, manifest, model: nn.Module, inputs: CheckInputs,
                 tolerance_override: Tolerance | None = None, localize: bool = False,
                 progress: Callable[[CheckRecord], None] | None = None,
                 found: tuple[list[BundleFile], list[CheckRecord]] | None = None,
                 on: tuple[str, ...] = (), shared: Shared | None = None) -> CheckReport:
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
                             threads, on, shared or Shared())
    finally:
        torch.set_num_threads(previous)


def _check_bundle(bundle, manifest, model, inputs, tolerance_override, localize, progress, found,
                  threads, on: tuple[str, ...], shared: Shared) -> CheckReport:
    from ..bundle.manifest import inside
    targets, problems = found or bundle_files(bundle, manifest)
    shared.inputs_digest = digest = inputs_digest(inputs)
    hashes: dict[str, str] = {}

    def sha(target: BundleFile) -> str:
        if target.name not in hashes:
            hashes[target.name] = path_sha256(inside(bundle, target.name))
        return hashes[target.name]

    earlier = {t.name: found_before for t in targets if t.fmt is not None and not t.problem and shared.earlier
               and (found_before := shared.earlier(t, sha(t), digest)) is not None}
    half = any(precision_rule(t.precision).half_reference for t in targets)
    ref = None
    if any(t.name not in earlier for t in targets):
        given = shared.reference
        ref = given[2] if given is not None and given[0] == digest and given[1] == half else \
            torch_reference(model, inputs.x, half=half)
    labels = inputs.labels
    ref_acc = float(np.mean(ref.r32[:len(labels)].argmax(1) == labels)) if labels is not None and ref is not None \
        else next((r.reference_accuracy for recs, _ in earlier.values() for r in recs), None)
    class_labels = manifest.model.labels
    records: list[CheckRecord] = []

    def emit(rec: CheckRecord) -> None:
        records.append(rec)
        if progress:
            progress(rec)

    for rec in problems:
        emit(rec)
    for target in targets:
        fmt, precision = target.fmt, target.precision
        tol = tolerance_override or tolerance_for(precision)
        base = dict(artifact=target.label, precision=precision, tolerance=tol.describe(),
                    reference_accuracy=ref_acc)
        if fmt is None:
            claimed = f" (the manifest says format {target.record.format!r}: install the plugin that writes it)" \
                if target.record is not None else ""
            emit(CheckRecord(runner="-", status=Status.UNVERIFIED, **base,
                             reason=f"{target.name} is no file this bsconv-export writes; nothing can vouch for "
                                    f"it{claimed}"))
            continue
        if target.problem:
            emit(CheckRecord(runner="-", status=Status.FAILED, **base, reason=target.problem))
            continue
        path = inside(bundle, target.name)
        if target.record is not None and target.record.sha256 != sha(target):
            emit(CheckRecord(runner="-", status=Status.FAILED, **base,
                             reason=f"{target.name} changed since the export: its sha256 differs from the manifest's"))
            continue
        if target.name in earlier:
            for rec in earlier[target.name][0]:
                emit(rec)
            continue
        reduced = precision_rule(precision).reduced
        rows = inputs.fp32_rows if not reduced and inputs.fp32_rows is not None else np.arange(len(inputs.x))
        verified = False
        skipped: list[str] = []

        def verify(runner, where: str) -> CheckRecord:
            """One runner over the inputs: its record (skipped, ok or failed, with the reason)."""
            runner.input_spec = manifest.model.input_spec   # inputs come from the spec, never the file's own claims
            run_tol = tolerance_override or tolerance_for(precision, where)
            rec = CheckRecord(runner=runner.label(), status=Status.OK, target=where,
                              **{**base, "tolerance": run_tol.describe()})
            reason = runner.unavailable_reason()
            if reason:
                rec.status, rec.reason = Status.SKIPPED, reason
                return rec
            out = _run_one(rec, runner, inputs.x[rows], _sub(ref, rows), labels, run_tol, class_labels,
                           manifest, target)
            rec.seconds = getattr(runner, "replayed_seconds", rec.seconds)   # a replay: the worker's time
            if out is not None and not reduced and (
                    localize or rec.status is Status.FAILED) and out.shape == ref.r64[rows].shape:
                worst = int(np.argmax(np.abs(out - ref.r64[rows]).max(axis=1)))
                x_worst = inputs.x[rows][worst:worst + 1]
                rec.first_divergence = runner.first_divergence(model, x_worst, run_tol.atol or 1e-4)
            return rec

        # Host runners one after another (each on the chosen threads), then the emulated ones — each a
        # single-threaded QEMU process — side by side, one per usable core; records keep the table's order.
        jobs = _runners(fmt.kind, path, threads, on)
        jobs = [(_replay(shared, target, runner, sha(target), inputs.x[rows]) or runner, where)
                if where == "host" else (runner, where) for runner, where in jobs]
        done = {id(runner): verify(runner, where) for runner, where in jobs if where == "host"}
        emulated = [(runner, where) for runner, where in jobs if runner is not None and where != "host"]
        if emulated:
            with ThreadPoolExecutor(max_workers=min(len(emulated), machine.usable_cores())) as pool:
                futures = {id(runner): pool.submit(verify, runner, where) for runner, where in emulated}
                done.update({key: f.result() for key, f in futures.items()})
        for runner, where in jobs:
            if runner is None:
                emit(CheckRecord(runner="-", status=Status.SKIPPED, target=where, **base,
                                 reason=f"no runner of {fmt.name} files runs on {where.split(':')[0]}"))
                continue
            rec = done[id(runner)]
            verified |= rec.status in (Status.OK, Status.FAILED)
            if rec.status is Status.SKIPPED:
                skipped.append(f"{rec.runner}: {rec.reason}")
            emit(rec)
        if not verified:
            emit(CheckRecord(runner="-", status=Status.UNVERIFIED, **base,
                             reason="no runner could verify it here" + (f" ({'; '.join(skipped)})" if skipped else
                                                                        f" (no runner loads kind {fmt.kind!r})")))
    reference_error = {"torch_fp32_vs_fp64_max": float(ref.e32.max()),
                       "torch_fp32_vs_fp64_median": float(np.median(ref.e32)),
                       "logit_scale_max": float(np.abs(ref.r64).max())} if ref is not None else \
        next((err for _, err in earlier.values() if err), {})
    return CheckReport(inputs=inputs.source, samples=len(inputs.x), records=records, reference_error=reference_error)


def _replay(shared: Shared, target: BundleFile, runner: Runner, sha256: str, x: np.ndarray):
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


def _sub(ref: Reference, rows) -> Reference:
    return Reference(r64=ref.r64[rows], r32=ref.r32[rows], e32=ref.e32[rows],
                     e16=ref.e16[rows] if ref.e16 is not None else None)


def _run_one(rec: CheckRecord, runner: Runner, x: np.ndarray, ref: Reference, labels: np.ndarray | None,
             tol: Tolerance, class_labels: list[str], manifest, target: BundleFile) -> np.ndarray | None:
    """Run one runner over the inputs, fill ``rec``; return its output (None when it did not run)."""
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
    rec.metrics = compare(out, ref.r64)
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
              progress: Callable[[CheckRecord], None] | None = None, shared: Shared | None = None) -> CheckReport:
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
    from ..bundle.manifest import read_manifest, write_manifest
    manifest = read_manifest(bundle)
    original = reload_model(manifest.model.source, manifest.model, checkpoint=checkpoint, entry_point=entry_point,
                            program=program)
    report = run_check(bundle, manifest, original, opts, progress=progress)
    manifest.record_check(report)
    write_manifest(bundle, manifest)
    return report, manifest
