"""The latency-regression gate: is the candidate slower than the baseline, beyond noise?

A/B mode times both in one process, alternating (ABBA), and decides on the
paired ratios (see :mod:`exporter.stats`). Stored mode compares the candidate
with the samples of a ``bench --out results.json`` run, after checking that the
machine fingerprint matches (a mismatch is reported as a warning: the numbers
may not compare).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..models.errors import UserInputError

from .bench import BenchOptions, example_for, measure, measure_paired, resolve_targets
from .machine import fingerprint, machine_info
from .runners.onnx_runner import OnnxRunner
from .stats import paired_decision, summarize, unpaired_decision


def _model_path(path: str | Path) -> Path:
    targets, _, _ = resolve_targets(path)
    return targets[0].path


def regress_ab(baseline: str | Path, candidate: str | Path, *, provider: str = "cpu", threads: int | None = None,
               duration: float = 20.0, max_slowdown: float = 0.05, confidence: float = 0.95,
               min_pairs: int = 50) -> dict:
    a_path, b_path = _model_path(baseline), _model_path(candidate)
    with OnnxRunner(a_path, provider, threads=threads) as ra, OnnxRunner(b_path, provider, threads=threads) as rb:
        xa, xb = example_for(ra), example_for(rb)
        a, b = measure_paired(lambda: ra.infer({"input": xa}), lambda: rb.infer({"input": xb}),
                              BenchOptions(warmup=10, duration=duration), min_pairs=min_pairs)
    d = paired_decision(a, b, max_slowdown, confidence)
    return {"mode": "a/b", "baseline": str(a_path), "candidate": str(b_path), "provider": provider,
            "decision": d.to_dict(), "summary": d.describe(), "warnings": [],
            "baseline_latency": summarize(a), "candidate_latency": summarize(b)}


def regress_stored(results_json: str | Path, candidate: str | Path, *, provider: str = "cpu",
                   duration: float = 20.0, max_slowdown: float = 0.05, confidence: float = 0.95) -> dict:
    try:
        stored = json.loads(Path(results_json).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserInputError(f"{results_json}: not a readable bench result ({e})") from None
    rows = [r for r in stored.get("results", []) if r.get("status") == "ok" and r.get("provider") == provider
            and r.get("batch") == 1 and r.get("samples_ms")]
    if not rows:
        raise UserInputError(f"{results_json} has no batch-1 {provider} samples; make it with "
                             f"'bsconv-export bench ... --providers {provider} --out {results_json}'")
    row = rows[0]
    warnings = []
    here = fingerprint(machine_info())
    if stored.get("fingerprint") != here:
        diff = {k: (stored.get("fingerprint", {}).get(k), v) for k, v in here.items()
                if stored.get("fingerprint", {}).get(k) != v}
        warnings.append(f"machine fingerprint differs from the stored run ({diff}); the comparison may not hold")
    threads = row.get("threads") if isinstance(row.get("threads"), int) else None
    path = _model_path(candidate)
    with OnnxRunner(path, provider, threads=threads) as r:
        x = example_for(r)
        lat, _ = measure(lambda: r.infer({"input": x}), BenchOptions(warmup=10, duration=duration))
    base = np.asarray(row["samples_ms"]) / 1e3
    d = unpaired_decision(base, lat, max_slowdown, confidence)
    return {"mode": "stored", "baseline": str(results_json), "candidate": str(path), "provider": provider,
            "decision": d.to_dict(), "summary": d.describe(), "warnings": warnings,
            "baseline_latency": summarize(base), "candidate_latency": summarize(lat)}
