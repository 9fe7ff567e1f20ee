"""Latency benchmarks of any artifact on any runner that can time it, optionally paired with PyTorch eager.

Each configuration (artifact × provider × batch) is warmed up, then timed in
windows of ``window`` iterations until the last three window medians agree
within 5 % (stable) or the time limit is reached. ``--vs-torch`` interleaves
PyTorch eager with the artifact in the same process (ABBA order) and reports the
median of the paired ratios with a bootstrap interval.

When a bundle holds an ONNX file and artifacts of another runtime (the
ExecuTorch ``.pte``), each of those is also paired with onnxruntime on the CPU
(the same ABBA interleaving, both loaded in this process): ``paired`` in the
results holds the ratio ``other / onnxruntime`` with its interval, which is the
number to quote; separate medians from separate windows drift with the machine.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ...kernel.errors import StageError, UserInputError

from ...kernel.machine import default_threads, fingerprint, machine_info, usable_cores
from ...kernel.contract import INPUT_NAME
from ..formats import benchmark_targets
from ...kernel.backends import onnxruntime
from .result import SCHEMA
from ..formats import artifact_suffixes, get_format, kind_for_suffix, runners_for, tool_versions
from ..runners import Runner, RunnerUnavailable
from ..kit.stats import bootstrap_ci, summarize, windows_agree

MAX_STORED_SAMPLES = 2000


@dataclass(frozen=True)
class BenchOptions:
    providers: tuple[str, ...] = ("cpu",)
    batches: tuple[int, ...] = (1,)
    threads: int | str | None = None      # None: onnxruntime's default; "auto": fastest measured
    warmup: int = 10
    duration: float = 5.0                # time limit per configuration (s)
    iters: int | None = None             # exact iteration count instead of "until stable"
    window: int = 20
    vs_torch: bool = False
    pair_with_onnx: bool = True          # pair other runtimes' CPU artifacts with onnxruntime (ABBA)


@dataclass
class Target:
    name: str               # the artifact's format (a row of the format table)
    path: Path
    kind: str               # which runners load it


def resolve_targets(path: str | Path):
    """A bundle's benchmarkable artifacts (the format table decides), or one artifact file;
    plus the bundle's manifest (None for a file)."""
    from ..bundle.manifest import MAX_ARTIFACT_BYTES
    from ..bundle.on_disk import changed_since_export, inside
    from ..bundle.manifest_io import read_manifest
    path = Path(path)
    if path.is_dir() and path.suffix not in artifact_suffixes():
        manifest = read_manifest(path)
        changed = changed_since_export(path, manifest)
        if changed:
            raise StageError(f"{path}: files changed since the export ({', '.join(changed)}), so its recorded "
                             "verdict says nothing about them; run 'bsconv-export check' on it or re-export")
        targets = [Target(r.format, inside(path, r.path), get_format(r.format).kind)
                   for r in benchmark_targets(manifest.artifacts)]
        if not targets:
            raise UserInputError(f"{path} holds no artifact that can be benchmarked")
        return targets, manifest
    kind = kind_for_suffix(path.suffix)
    if kind is None or not path.exists():
        raise UserInputError(f"{path} is neither a bundle directory nor an {', '.join(artifact_suffixes())} artifact")
    if path.is_file() and path.stat().st_size > MAX_ARTIFACT_BYTES:
        raise UserInputError(f"{path} is over the {MAX_ARTIFACT_BYTES >> 30} GiB this tool loads")
    return [Target(path.suffix[1:], path, kind)], None


def measure(fn: Callable[[], object], opts: BenchOptions) -> tuple[np.ndarray, bool]:
    """Latencies (s) of ``fn`` after warm-up; True when the windows became stable."""
    for _ in range(opts.warmup):
        fn()
    lat: list[float] = []
    medians: list[float] = []
    deadline = time.perf_counter() + opts.duration
    stable = False
    while True:
        window = []
        for _ in range(opts.window):
            t0 = time.perf_counter()
            fn()
            window.append(time.perf_counter() - t0)
        lat.extend(window)
        medians.append(float(np.median(window)))
        if opts.iters is not None:
            if len(lat) >= opts.iters:
                lat = lat[:opts.iters]
                stable = windows_agree(medians)
                break
        else:
            stable = windows_agree(medians)
            if stable or time.perf_counter() > deadline:
                break
    return np.asarray(lat), stable


def measure_paired(fn_a: Callable, fn_b: Callable, opts: BenchOptions,
                   min_pairs: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Alternate A and B in ABBA order; return their latencies pair by pair."""
    for _ in range(opts.warmup):
        fn_a()
        fn_b()
    a: list[float] = []
    b: list[float] = []
    deadline = time.perf_counter() + opts.duration
    i = 0
    while True:
        order = (fn_a, fn_b) if i % 2 == 0 else (fn_b, fn_a)
        times = {}
        for fn in order:
            t0 = time.perf_counter()
            fn()
            times[fn] = time.perf_counter() - t0
        a.append(times[fn_a])
        b.append(times[fn_b])
        i += 1
        if opts.iters is not None:
            if i >= opts.iters:
                break
        elif i >= min_pairs and time.perf_counter() > deadline:
            break
    return np.asarray(a), np.asarray(b)


def example_for(runner: Runner, batch: int | None = None) -> np.ndarray:
    """A fixed random input the loaded ``runner`` accepts (its own batch unless ``batch`` is given)."""
    batch = batch or runner.fixed_batch or 1
    shape = tuple(int(d) for d in runner.input_shape[1:])
    return np.random.default_rng(0).random((batch,) + shape, dtype=np.float32)


def pick_threads(cls: type[Runner], path: Path, provider: str, x: np.ndarray,
                 opts: BenchOptions) -> tuple[int, dict[int, float]]:
    """Try 1, 2, 4, … up to the usable cores; the fastest median wins."""
    cores = usable_cores()
    candidates = sorted({1, cores} | {2 ** k for k in range(1, 8) if 2 ** k < cores})
    quick = BenchOptions(warmup=3, duration=min(1.0, opts.duration), window=10)
    medians = {}
    for n in candidates:
        with cls(path, provider=provider, threads=n) as r:
            lat, _ = measure(lambda: r.infer({INPUT_NAME: x}), quick)
        medians[n] = float(np.median(lat) * 1e3)
    return min(medians, key=medians.get), medians


def bench_one(target: Target, cls: type[Runner], provider: str, batch: int, opts: BenchOptions, workdir: Path,
              torch_model=None) -> dict:
    probe = cls(target.path, provider=provider)
    row = {"artifact": target.name, "path": str(target.path), "runner": probe.name,
           "provider": provider if cls.per_provider else probe.name, "batch": batch}
    reason = probe.unavailable_reason()
    if reason:
        return {**row, "status": "skipped", "reason": reason}
    path = cls.rebatched(target.path, batch, workdir)
    tried = None
    threads = opts.threads if opts.threads is not None else default_threads()
    try:
        runner = cls(path, provider=provider, threads=None if threads == "auto" else threads).load()
        x = example_for(runner, batch)
        if threads == "auto":
            threads, tried = pick_threads(cls, path, provider, x, opts)
            runner.close()
            runner = cls(path, provider=provider, threads=threads).load()
    except RunnerUnavailable as e:
        return {**row, "status": "skipped", "reason": str(e)}
    except Exception as e:  # noqa: BLE001 - e.g. a fixed-batch .ort asked for another batch
        return {**row, "status": "skipped", "reason": f"cannot load for batch {batch}: {str(e).splitlines()[0][:200]}"}
    if runner.fixed_batch not in (None, batch):
        runner.close()
        return {**row, "status": "skipped",
                "reason": f"the artifact takes batch {runner.fixed_batch} only; export with --dynamic-batch"}
    feed = {INPUT_NAME: x}
    result = {**row, "status": "ok", "threads": threads, "threads_tried_p50_ms": tried,
              "runtime_options": runner.settings()}
    if torch_model is not None:
        import torch
        threads_before = torch.get_num_threads()
        torch.set_num_threads(threads if isinstance(threads, int) else min(threads_before, usable_cores()))
        xt = torch.from_numpy(x)

        def run_torch():
            with torch.no_grad():
                torch_model(xt)

        try:
            ort_lat, torch_lat = measure_paired(lambda: runner.infer(feed), run_torch, opts)
        finally:
            torch.set_num_threads(threads_before)
        ratios = ort_lat / torch_lat
        low, high = bootstrap_ci(ratios)
        result["latency"] = summarize(ort_lat, batch)
        result["stable"] = None
        result["vs_torch"] = {"torch_latency": summarize(torch_lat, batch), "ratio_median": float(np.median(ratios)),
                              "ratio_ci95": [low, high], "pairs": int(ratios.size),
                              "torch_threads": torch.get_num_threads(),
                              "method": "ABBA-interleaved pairs in one process; ratio = artifact / torch",
                              "samples_ms": [round(v * 1e3, 4) for v in torch_lat[:MAX_STORED_SAMPLES]]}
        lat = ort_lat
    else:
        lat, stable = measure(lambda: runner.infer(feed), opts)
        result["latency"] = summarize(lat, batch)
        result["stable"] = stable
    result["samples_ms"] = [round(v * 1e3, 4) for v in lat[:MAX_STORED_SAMPLES]]
    runner.close()
    return result


def run_bench(target_path: str | Path, opts: BenchOptions, torch_model=None,
              progress: Callable[[dict], None] | None = None) -> dict:
    """Every benchmarkable artifact × every registered runner that times its kind × provider × batch."""
    onnxruntime()  # telemetry off before anything else touches onnxruntime
    targets, manifest = resolve_targets(target_path)
    machine = machine_info(tool_versions())
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for target in targets:
            for cls in runners_for(target.kind, purpose="time"):
                for provider in (opts.providers if cls.per_provider else ("-",)):
                    for batch in opts.batches:
                        row = bench_one(target, cls, provider, batch, opts, Path(tmp), torch_model)
                        results.append(row)
                        if progress:
                            progress(row)
        paired = pair_with_baseline(targets, results, opts, Path(tmp), progress) if opts.pair_with_onnx else []
    return {"schema": SCHEMA, "target": str(target_path),
            "model": manifest.model.to_dict() if manifest else None,
            "machine": machine, "fingerprint": fingerprint(machine),
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(opts).items()},
            "results": results, "paired": paired}


#: onnxruntime's options in a paired run (see pair_with_baseline)
PAIRED_ORT_OPTIONS = {"session.intra_op.allow_spinning": "0"}


def _baseline(targets: list[Target]) -> tuple[Target, type[Runner]] | None:
    """The artifact other formats are paired with (the table's ``bench_baseline`` row present, the
    superseding build first) and the first runner that times it on the CPU."""
    rows = [t for t in targets if (f := get_format(t.name)) is not None and f.bench_baseline]
    for t in rows:
        cls = next(iter(runners_for(t.kind, purpose="time")), None)
        if cls is not None:
            return t, cls
    return None


def pair_with_baseline(targets: list[Target], results: list[dict], opts: BenchOptions, workdir: Path,
                       progress: Callable[[dict], None] | None = None) -> list[dict]:
    """Each CPU artifact of another runtime, interleaved (ABBA) with the bundle's baseline artifact
    (ONNX on onnxruntime's CPU provider) at the same batch and threads: ``ratio = artifact / baseline``.

    The baseline runs here with its thread pool's spinning off: onnxruntime's spinning pool keeps
    the cores busy after each run and slows whatever runs next in the process (measured on 2
    cores: an XNNPACK .pte ran 1.9x slower right after a spinning onnxruntime, 0.8x after a
    non-spinning one). An app runs one runtime, so neither should pay for the other. What spinning
    is worth to the baseline alone is timed as a second pair, spinning on / off."""
    found = _baseline(targets)
    if found is None:
        return []
    base_target, base_cls = found
    by_path = {t.name: t for t in targets}
    out = []
    for row in results:
        target = by_path.get(row["artifact"])
        if row["status"] != "ok" or target is None:
            continue
        cls = next(c for c in runners_for(target.kind, purpose="time") if c.name == row["runner"])
        if issubclass(cls, base_cls):
            continue   # the baseline's own runtime: never paired with itself
        threads = row.get("threads") if isinstance(row.get("threads"), int) else None
        batch = row["batch"]
        base_path = base_cls.rebatched(base_target.path, batch, workdir)
        try:
            other = cls(target.path, threads=threads).load()
            base = base_cls(base_path, threads=threads, spinning=False).load()
        except Exception as e:  # noqa: BLE001 - recorded, the single rows above still stand
            out.append({"artifact": row["artifact"], "baseline": base_target.name, "batch": batch,
                        "status": "skipped", "reason": str(e).splitlines()[0][:200] if str(e) else type(e).__name__})
            continue
        x = example_for(base, batch)
        a, b = measure_paired(lambda: other.infer({INPUT_NAME: x}), lambda: base.infer({INPUT_NAME: x}), opts)
        ratios = a / b
        low, high = bootstrap_ci(ratios)
        pair = {"artifact": row["artifact"], "runner": row["runner"], "baseline": base_target.name,
                "baseline_runner": base.label(), "batch": batch, "status": "ok", "threads": threads,
                "ratio_median": float(np.median(ratios)), "ratio_ci95": [low, high], "pairs": int(ratios.size),
                "latency": summarize(a, batch), "baseline_latency": summarize(b, batch),
                "method": f"ABBA-interleaved pairs in one process; ratio = artifact / {base.label()} "
                          "(spinning off, see baseline_spinning)"}
        other.close()
        spinning = base_cls(base_path, threads=threads).load()
        s_on, s_off = measure_paired(lambda: spinning.infer({INPUT_NAME: x}), lambda: base.infer({INPUT_NAME: x}), opts)
        on_off = s_on / s_off
        pair["baseline_spinning"] = {"ratio_on_over_off": float(np.median(on_off)),
                                     "ratio_ci95": list(bootstrap_ci(on_off)), "latency_on": summarize(s_on, batch)}
        spinning.close()
        base.close()
        out.append(pair)
        if progress:
            progress({**pair, "paired": True})
    return out


def is_bundle(target: Path) -> bool:
    """A bundle folder (not an artifact that is a folder, such as an .mlpackage)."""
    return target.is_dir() and target.suffix not in artifact_suffixes()


def run_bench_and_save(target: Path, opts: BenchOptions, torch_model=None,
                       progress: Callable[[dict], None] | None = None,
                       out_file: Path | None = None) -> tuple[dict, Path | None]:
    """:func:`run_bench`, its results kept: in ``out_file``, else a bundle's ``bench.json`` (recorded in
    its manifest, so ``--force`` may replace it with the bundle); a lone artifact without ``out_file``
    keeps nothing. Where they go is settled before minutes of timing: a user's file there (outside a
    bundle: one this tool did not seal) is refused. A run that timed nothing replaces nothing.
    Returns (results, where they were written or None)."""
    import json

    from ...kernel.sealed import refuse_unless_replaceable, seal_json, write_sealed
    from ..bundle.on_disk import check_recordable, record_bundle_file
    if out_file is not None and not out_file.parent.is_dir():
        raise UserInputError(f"cannot write {out_file}: {out_file.parent} does not exist; create it first")
    dest = out_file or (target / "bench.json" if is_bundle(target) else None)
    into_bundle = is_bundle(target) and dest.parent.resolve() == target.resolve()
    keep = "move it away, or name another file with --out"
    if into_bundle:
        check_recordable(target, dest.name)
    elif dest is not None:
        refuse_unless_replaceable(dest, keep)
    results = run_bench(target, opts, torch_model, progress)
    if dest is None or not any(r["status"] == "ok" for r in results["results"]):
        return results, None
    if into_bundle:
        record_bundle_file(target, dest.name, json.dumps(results, indent=1) + "\n")
    else:
        write_sealed(dest, seal_json(results), keep)
    return results, dest
