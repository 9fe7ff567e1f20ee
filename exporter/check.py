"""Equivalence check: every artifact against the PyTorch original, enforced.

Inputs: the shipped held-out digits (real, labelled) when the model's labels
are the digits; otherwise N inputs drawn uniformly from the model's value range
(seeded). Edge cases are always added: all zeros, all saturated at the top of
the range, a min/max checkerboard, and each channel saturated alone (grey data
such as the digits is blind to a channel swap; these inputs are not).

Per artifact and output we record max abs error, max rel error
(|a − r| / (|r| + 1e-6)), mean abs error, cosine similarity (lowest over
samples), top-1 agreement, top-5 overlap and, on labelled data, accuracy next to
PyTorch's. Defaults, by precision:

* fp32: every element within ``atol + rtol·max|ref|`` (max over that sample's
  outputs) with atol = 1e-4, rtol = 1e-3. Scaling by the sample's largest logit, not by
  each element, is what fp32 rounding does: its error grows with the magnitudes
  flowing through the network, and a logit near zero is no more exact than a large
  one. rtol 1e-3 leaves room for the saturated edge cases, whose logits reach 10³
  on untrained networks and carry ~3e-4 relative error in any runtime; the
  shipped model's errors are ~1e-5 absolute on logits of ~20;
* fp16: lowest per-sample cosine ≥ 0.999 and top-1 agreement ≥ 99 %;
* int8: top-1 agreement ≥ 99 %;
* reduced precision (fp16, int8) on labelled data also: accuracy no more than
  0.5 points below PyTorch's.

NaN or Inf anywhere fails. A miss fails the artifact; a runner that cannot run
here (Apple's CoreML runtime off macOS, an op the MIL interpreter lacks) is
*skipped* with the reason, never passed.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
from torch import nn

from ..models.data import DIGIT_LABELS, load_holdout, load_npz_inputs
from ..models.registry import InputSpec

from .records import Status
from .runners import Runner, RunnerUnavailable, UnsupportedOp, infer_batched
from .runners.mil import CoreMLRunner, MilReferenceRunner
from .runners.onnx_runner import OnnxRunner, OrtFormatRunner
from .runners.torch_runner import TorchRunner

REL_EPS = 1e-6
OUTPUT = "logits"


@dataclass(frozen=True)
class Tolerance:
    atol: float | None = None
    rtol: float | None = None
    min_cosine: float | None = None
    min_top1_agreement: float | None = None
    max_accuracy_drop: float | None = None

    def describe(self) -> str:
        parts = []
        if self.atol is not None:
            parts.append(f"|a-r| <= {self.atol:g} + {self.rtol or 0:g}*max|r|")
        if self.min_cosine is not None:
            parts.append(f"cosine >= {self.min_cosine:g}")
        if self.min_top1_agreement is not None:
            parts.append(f"top-1 agreement >= {self.min_top1_agreement:.0%}")
        if self.max_accuracy_drop is not None:
            parts.append(f"accuracy drop <= {self.max_accuracy_drop * 100:g} points")
        return ", ".join(parts)


DEFAULT_TOLERANCES = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-3),
    "fp16": Tolerance(min_cosine=0.999, min_top1_agreement=0.99, max_accuracy_drop=0.005),
    "int8": Tolerance(min_top1_agreement=0.99, max_accuracy_drop=0.005),
}


@dataclass
class CheckInputs:
    x: np.ndarray
    labels: np.ndarray | None     # for the first len(labels) rows
    source: str


@dataclass
class CheckRecord:
    artifact: str
    runner: str
    status: Status
    reason: str | None = None
    precision: str = "fp32"
    tolerance: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    accuracy: float | None = None
    reference_accuracy: float | None = None
    first_divergence: dict | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["status"] = self.status.value
        return d


@dataclass
class CheckReport:
    inputs: str
    samples: int
    records: list[CheckRecord]

    @property
    def passed(self) -> bool:
        return not any(r.status is Status.FAILED for r in self.records)

    def to_dict(self) -> dict:
        return {"inputs": self.inputs, "samples": self.samples, "passed": self.passed,
                "results": [r.to_dict() for r in self.records]}


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


def check_inputs(spec: InputSpec, data: str | Path | None = None, samples: int = 32, seed: int = 0) -> CheckInputs:
    shape = spec.shape
    if data is not None:
        x, y = load_npz_inputs(data, shape)
        source = str(data)
    elif tuple(spec.class_labels()) == DIGIT_LABELS and spec.channels == 3:
        x, y = load_holdout(spec.size)
        source = "shipped held-out digits"
    else:
        lo, hi = spec.value_range
        x = np.random.default_rng(seed).uniform(lo, hi, (samples,) + shape).astype(np.float32)
        y = None
        source = f"{samples} uniform samples in [{lo}, {hi}]"
    edges = edge_cases(spec, (1,) + shape)
    return CheckInputs(x=np.concatenate([x, edges]), labels=y, source=f"{source} + {len(edges)} edge cases")


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
    return {
        "max_abs": float(np.nanmax(diff)) if finite else float("inf"),
        "max_rel": float(np.nanmax(diff / (np.abs(ref) + REL_EPS))) if finite else float("inf"),
        "mean_abs": float(np.nanmean(diff)) if finite else float("inf"),
        "cosine_min": float(np.nanmin(cos)) if finite else float("nan"),
        "cosine_mean": float(np.nanmean(cos)) if finite else float("nan"),
        "top1_agreement": float(np.mean(out.argmax(1) == ref.argmax(1))),
        "top5_overlap": float(overlap),
        "nonfinite": int((~np.isfinite(out)).sum()),
    }


def verdict(out: np.ndarray, ref: np.ndarray, m: dict[str, float], tol: Tolerance,
            accuracy: float | None = None, reference_accuracy: float | None = None) -> str | None:
    """None when within tolerance, else the first reason it is not."""
    if m["nonfinite"]:
        return f"{m['nonfinite']} NaN/Inf values in the output"
    if tol.atol is not None:
        bound = tol.atol + (tol.rtol or 0.0) * np.abs(ref).max(axis=1, keepdims=True)
        bad = np.abs(out.astype(np.float64) - ref) > bound
        if bad.any():
            return (f"{int(bad.sum())} of {bad.size} values outside {tol.describe()} "
                    f"(max abs error {m['max_abs']:.3g})")
    if tol.min_cosine is not None and m["cosine_min"] < tol.min_cosine:
        return f"cosine {m['cosine_min']:.6f} < {tol.min_cosine}"
    if tol.min_top1_agreement is not None and m["top1_agreement"] < tol.min_top1_agreement:
        return f"top-1 agreement {m['top1_agreement']:.2%} < {tol.min_top1_agreement:.0%}"
    if tol.max_accuracy_drop is not None and accuracy is not None and reference_accuracy is not None \
            and reference_accuracy - accuracy > tol.max_accuracy_drop + 1e-12:
        return (f"accuracy {accuracy:.2%} is {100 * (reference_accuracy - accuracy):.2f} points below PyTorch's "
                f"{reference_accuracy:.2%} (allowed {tol.max_accuracy_drop * 100:g})")
    return None


def _runners_for(artifact: dict, bundle: Path) -> list[Callable[[], Runner] | tuple[str, str]]:
    """Factories for the runners that can check this artifact (or (name, skip reason))."""
    path = bundle / artifact["path"]
    fmt = artifact["format"]
    if fmt in ("onnx", "onnx-simplified", "int8", "fp16"):
        return [lambda: OnnxRunner(path, "cpu")]
    if fmt == "ort":
        return [lambda: OrtFormatRunner(path, "cpu")]
    if fmt in ("coreml", "coreml-fp16"):
        apple = CoreMLRunner.unavailable()
        return [lambda: MilReferenceRunner(path),
                ("coreml-apple", apple) if apple else (lambda: CoreMLRunner(path))]
    return []


def artifact_precision(artifact: dict) -> str:
    return (artifact.get("details") or {}).get("precision", "fp32")


def check_bundle(bundle: str | Path, manifest: dict, model: nn.Module, inputs: CheckInputs,
                 tolerance_override: Tolerance | None = None, localize: bool = False,
                 progress: Callable[[CheckRecord], None] | None = None) -> CheckReport:
    """Check every OK artifact of ``manifest`` (in ``bundle``) against ``model``."""
    bundle = Path(bundle)
    reference = infer_batched(TorchRunner(model), inputs.x)[OUTPUT]
    labels = inputs.labels
    ref_acc = float(np.mean(reference[:len(labels)].argmax(1) == labels)) if labels is not None else None
    records: list[CheckRecord] = []
    for artifact in manifest["artifacts"]:
        if artifact["status"] != "ok":
            continue
        precision = artifact_precision(artifact)
        tol = tolerance_override or DEFAULT_TOLERANCES[precision]
        for factory in _runners_for(artifact, bundle):
            rec = CheckRecord(artifact=artifact["format"], runner="", status=Status.OK, precision=precision,
                              tolerance=tol.describe(), reference_accuracy=ref_acc)
            out = None
            if isinstance(factory, tuple):
                rec.runner, rec.status, rec.reason = factory[0], Status.SKIPPED, factory[1]
            else:
                out = _run_one(rec, factory, inputs, reference, labels, tol)
            if artifact["format"] in ("onnx", "onnx-simplified") and out is not None and (
                    localize or rec.status is Status.FAILED):
                from .localize import first_divergence
                worst = int(np.argmax(np.abs(out - reference).max(axis=1)))
                rec.first_divergence = first_divergence(bundle / artifact["path"], model,
                                                        inputs.x[worst:worst + 1], tol.atol or 1e-4)
            records.append(rec)
            if progress:
                progress(rec)
    return CheckReport(inputs=inputs.source, samples=len(inputs.x), records=records)


def _run_one(rec: CheckRecord, factory, inputs: CheckInputs, reference: np.ndarray,
             labels: np.ndarray | None, tol: Tolerance) -> np.ndarray | None:
    """Run one runner over the inputs, fill ``rec``; return its output (None when skipped)."""
    t0 = time.perf_counter()
    runner = factory()
    rec.runner = runner.name
    try:
        with runner:
            out = infer_batched(runner, inputs.x)[OUTPUT]
    except (RunnerUnavailable, UnsupportedOp) as e:
        rec.status, rec.reason = Status.SKIPPED, str(e)
        return None
    finally:
        rec.seconds = time.perf_counter() - t0
    rec.metrics = compare(out, reference)
    if labels is not None:
        rec.accuracy = float(np.mean(out[:len(labels)].argmax(1) == labels))
    reason = verdict(out, reference, rec.metrics, tol, rec.accuracy, rec.reference_accuracy)
    if reason:
        rec.status, rec.reason = Status.FAILED, reason
    return out


def with_overrides(atol: float | None, rtol: float | None) -> Tolerance | None:
    """A user's --atol/--rtol: an element-wise bound for every artifact, whatever its precision."""
    if atol is None and rtol is None:
        return None
    base = DEFAULT_TOLERANCES["fp32"]
    return replace(base, atol=base.atol if atol is None else atol, rtol=base.rtol if rtol is None else rtol)


@dataclass(frozen=True)
class CheckOptions:
    data: str | None = None
    samples: int = 32
    atol: float | None = None
    rtol: float | None = None
    localize: bool = False


def run_check(bundle: str | Path, manifest: dict, model: nn.Module, opts: CheckOptions = CheckOptions(),
              progress: Callable[[CheckRecord], None] | None = None) -> CheckReport:
    spec = InputSpec.from_dict(manifest["model"]["input_spec"])
    inputs = check_inputs(spec, opts.data, opts.samples)
    return check_bundle(bundle, manifest, model, inputs, with_overrides(opts.atol, opts.rtol),
                        opts.localize, progress)


def load_original(manifest: dict, checkpoint: str | Path | None = None) -> nn.Module:
    """The PyTorch model a bundle was exported from: its checkpoint (sha256 verified) or seeded arch."""
    from ..models.checkpoint import file_sha256, load_checkpoint, resolve_model
    from ..models.errors import UserInputError
    m = manifest["model"]
    if checkpoint is not None:
        return load_checkpoint(checkpoint, m["arch"]).model
    if m.get("checkpoint"):
        path = Path(m["checkpoint"])
        if not path.is_file():
            raise UserInputError(f"the bundle's checkpoint {path} is not here; pass --checkpoint PATH")
        if file_sha256(path) != m["checkpoint_sha256"]:
            raise UserInputError(f"{path} changed since the export (sha256 differs); pass the original "
                                 "with --checkpoint or re-export")
        return load_checkpoint(path, m["arch"]).model
    return resolve_model(m["arch"]).model  # untrained: seeded, so rebuilt identically
