"""The latency-regression gate: is the candidate slower than the baseline, beyond noise?

A/B mode times both in one process, alternating (ABBA), and decides on the
paired ratios (see :mod:`exporter.kit.stats`). Stored mode compares the candidate
with the samples of a ``bench --out results.json`` run, after checking that the
machine fingerprint matches (a mismatch is reported as a warning: the numbers
may not compare).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...kernel.errors import UserInputError

from .bench import BenchOptions, example_for, measure, measure_paired, resolve_targets, usable_cores
from .result import BenchResult
from ...kernel.contract import INPUT_NAME
from ...kernel.machine import default_threads, fingerprint, machine_info
from ..formats import runners_for, tool_versions
from ..runners import Runner
from ..kit.stats import paired_decision, summarize, unpaired_decision


def _runner(path: str | Path, provider: str, threads: int | None, spinning: bool = True) -> Runner:
    """A runner that times the first benchmarkable artifact of ``path`` on ``provider``."""
    target = resolve_targets(path)[0][0]
    classes = runners_for(target.kind, purpose="time")
    if not classes:
        raise UserInputError(f"nothing here can time {target.path} ({target.kind})")
    runner = classes[0](target.path, provider=provider, threads=threads if threads is not None else default_threads(),
                        spinning=spinning)
    reason = runner.unavailable_reason()
    if reason:
        raise UserInputError(f"cannot time {target.path} on {provider} here: {reason}")
    return runner


def regress_ab(baseline: str | Path, candidate: str | Path, *, provider: str = "cpu", threads: int | None = None,
               duration: float = 20.0, max_slowdown: float = 0.05, confidence: float = 0.95,
               min_pairs: int = 50) -> dict:
    # two runtimes interleaved in one process: neither pool spins between runs, or each would take
    # the cores from the other's next run (the same reason bench pairs its baseline without spinning)
    with _runner(baseline, provider, threads, spinning=False) as ra, \
            _runner(candidate, provider, threads, spinning=False) as rb:
        a_path, b_path = ra.path, rb.path
        xa, xb = example_for(ra), example_for(rb)
        a, b = measure_paired(lambda: ra.infer({INPUT_NAME: xa}), lambda: rb.infer({INPUT_NAME: xb}),
                              BenchOptions(warmup=10, duration=duration), min_pairs=min_pairs)
    d = paired_decision(a, b, max_slowdown, confidence)
    return {"mode": "a/b", "baseline": str(a_path), "candidate": str(b_path), "provider": provider,
            "decision": d.to_dict(), "summary": d.describe(), "warnings": [], "spinning": False,
            "baseline_latency": summarize(a), "candidate_latency": summarize(b)}


def regress_stored(results_json: str | Path, candidate: str | Path, *, provider: str = "cpu",
                   duration: float = 20.0, max_slowdown: float = 0.05, confidence: float = 0.95) -> dict:
    stored = BenchResult.read(results_json, f"make one with 'bsconv-export bench ... --out {results_json}'")
    rows = [r for r in stored.rows if r.ok and r.provider == provider and r.batch == 1 and len(r.samples_ms) >= 5
            and all(v > 0 for v in r.samples_ms)]
    if not rows:
        raise UserInputError(f"{results_json} has no batch-1 {provider} samples; make it with "
                             f"'bsconv-export bench ... --providers {provider} --out {results_json}'")
    row = rows[0]
    warnings = []
    here = fingerprint(machine_info(tool_versions()))
    stored_fp = stored.fingerprint
    if stored_fp != here:
        diff = {k: (stored_fp.get(k), v) for k, v in here.items() if stored_fp.get(k) != v}
        warnings.append(f"machine fingerprint differs from the stored run ({diff}); the comparison may not hold")
    threads = row.threads
    if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= usable_cores():
        threads = None  # a stored count this machine cannot honour: onnxruntime's default
    with _runner(candidate, provider, threads) as r:
        path = r.path
        x = example_for(r)
        lat, _ = measure(lambda: r.infer({INPUT_NAME: x}), BenchOptions(warmup=10, duration=duration))
    base = np.asarray(row.samples_ms) / 1e3
    d = unpaired_decision(base, lat, max_slowdown, confidence)
    return {"mode": "stored", "baseline": str(results_json), "candidate": str(path), "provider": provider,
            "decision": d.to_dict(), "summary": d.describe(), "warnings": warnings,
            "baseline_latency": summarize(base), "candidate_latency": summarize(lat)}
