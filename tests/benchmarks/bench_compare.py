"""Benchmark: our artifacts beside what a user would run instead, on this CPU (not a test).

For each model (224, untrained weights: latency does not depend on their values;
int8 calibrated and gated on random inputs, as the check uses for untrained models):
export ``onnx``, ``int8`` (the measured mixed-precision plan) and, unless
``--no-pte``, ``pte`` and ``pte-int8``, with the check; and the same model's all-int8 file (``--int8-plan uniform``).
Then time, interleaved in one process (every round runs every runtime once, in
rotating order), batch 1, each runtime at its default threads:

- onnxruntime CPU (its defaults: thread spinning on): fp32 (the simplified ONNX), our
  shipped int8, all-int8;
- OpenVINO CPU: fp32 (``INFERENCE_PRECISION_HINT=f32``), bf16 where the CPU has it
  (else a row saying why not), and our int8 QDQ file (OpenVINO's low-precision
  transformations run it in int8);
- ExecuTorch (XNNPACK) on our ``.pte`` and ``.int8.pte``.

Each runtime runs a block of calls per round (see :func:`interleaved`). Each row:
the median block latency and the median of the per-round ratios to onnxruntime
fp32, with a 95 % bootstrap interval; and what the bundle's check said of each
artifact (an int8 file that failed its gate is not a verified artifact).
OpenVINO is not a dependency of the product: ``make bench-compare`` installs it
first, without openvino-telemetry (see the Makefile).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bsconv_export.exporter.export.run import export_bundle
from bsconv_export.exporter.check.run import CheckOptions
from bsconv_export.exporter.kit.options import ExportOptions
from bsconv_export.kernel.machine import machine_info
from bsconv_export.exporter.formats import tool_versions
from bsconv_export.exporter.kit.stats import bootstrap_ci
from bsconv_export.models.checkpoint import resolve_model

MODELS = ("mobilenetv1_w1_bsconvu", "mobilenetv2_w1_bsconvs_p1d6", "mobilenetv3_large_w1_bsconvs_p1d6")


def ort_session(path: Path):
    from bsconv_export.exporter.runners.onnx_runner import OnnxRunner
    runner = OnnxRunner(path, "cpu").load()  # onnxruntime's defaults, as an app gets
    return lambda x: runner.infer({"input": x})["logits"]


def openvino_compiled(path: Path, precision: str):
    import openvino as ov
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": precision})
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})[compiled.output(0)]


def openvino_bf16_reason() -> str | None:
    import openvino as ov
    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return None if "BF16" in caps else f"this CPU has no bf16 support (OpenVINO reports {', '.join(caps)})"


def pte_method(path: Path):
    from bsconv_export.exporter.formats.executorch.runner import ExecuTorchRunner
    runner = ExecuTorchRunner(path).load()
    return lambda x: runner.infer({"input": x})["logits"]


def interleaved(fns: dict[str, callable], x: np.ndarray, duration: float, block: int = 8,
                settle: int = 2) -> dict[str, np.ndarray]:
    """Per round, the median seconds per call of each function over a block of ``block`` calls
    (the first ``settle`` dropped), the functions' blocks in rotated order each round. Blocks, not
    single calls: a runtime whose idle threads spin (onnxruntime's default) slows the call that
    follows it, so strict call-by-call alternation charges one runtime for another's spinning;
    within a block each runs as it would alone in an app."""
    names = list(fns)
    for n in names:
        for _ in range(10):
            fns[n](x)
    medians = {n: [] for n in names}
    deadline, r = time.perf_counter() + duration, 0
    while time.perf_counter() < deadline or r < 10:
        for n in names[r % len(names):] + names[:r % len(names)]:
            calls = []
            for _ in range(block):
                t0 = time.perf_counter()
                fns[n](x)
                calls.append(time.perf_counter() - t0)
            medians[n].append(float(np.median(calls[settle:])))
        r += 1
    return {n: np.asarray(v) for n, v in medians.items()}


def compare_model(arch: str, tmp: Path, duration: float, with_pte: bool) -> dict:
    loaded = resolve_model(arch)
    bundle, uniform = tmp / arch, tmp / f"{arch}-uniform"
    formats = ("onnx", "int8") + (("pte", "pte-int8") if with_pte else ())
    res = export_bundle(loaded, bundle, ExportOptions(formats=formats, input_size=224, calibration="random"),
                        check=CheckOptions())
    export_bundle(loaded, uniform, ExportOptions(formats=("onnx", "int8"), input_size=224, calibration="random",
                                                 int8_plan="uniform"))
    by = {r.format: r for r in res.records}
    plan = by["int8"].details.get("plan", {})
    fp32 = bundle / by["onnx-simplified"].path
    fns = {"ort fp32": ort_session(fp32), "ort int8 (shipped plan)": ort_session(bundle / by["int8"].path),
           "ort int8 (all int8)": ort_session(uniform / "model.int8.onnx")}
    skipped = {}
    try:
        fns["openvino fp32"] = openvino_compiled(fp32, "f32")
        reason = openvino_bf16_reason()
        if reason:
            skipped["openvino bf16"] = reason
        else:
            fns["openvino bf16"] = openvino_compiled(fp32, "bf16")
        fns["openvino on our int8 (all int8)"] = openvino_compiled(uniform / "model.int8.onnx", "f32")
    except ImportError:
        skipped["openvino"] = "openvino is not installed: run `make bench-compare` (it installs it)"
    for fmt, name in (("pte", "executorch .pte (fp32, XNNPACK)"), ("pte-int8", "executorch .pte (int8, XNNPACK)")):
        if with_pte and by.get(fmt) is not None and by[fmt].ok:
            fns[name] = pte_method(bundle / by[fmt].path)
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, 224, 224)).astype(np.float32)
    times = interleaved(fns, x, duration)
    base = times["ort fp32"]
    rows = []
    for name, t in times.items():
        ratio = t / base
        low, high = bootstrap_ci(ratio)
        rows.append({"runtime": name, "p50_ms": round(float(np.median(t)) * 1e3, 3),
                     "ratio_to_ort_fp32": round(float(np.median(ratio)), 3), "ci95": [round(low, 3), round(high, 3)]})
    rows += [{"runtime": name, "skipped": why} for name, why in skipped.items()]
    check = {c["artifact"]: c["status"] + (f": {c['reason']}" if c.get("reason") else "")
             for c in res.manifest.to_dict()["check"]["results"]}
    return {"arch": arch, "rounds": int(base.size), "method": "blocks of 8 calls (first 2 dropped) per runtime "
            "per round, rotated; ratio = per-round block medians", "rows": rows, "int8_plan": {k: plan.get(k) for k in
            ("chosen", "latency_over_fp32", "float_weight_share", "passed_gate")}, "check": check}


def markdown(results: list[dict]) -> str:
    names = list(dict.fromkeys(r["runtime"] for res in results for r in res["rows"]))
    lines = ["| runtime | " + " | ".join(f"`{r['arch']}`" for r in results) + " |",
             "|---|" + "---:|" * len(results)]
    for n in names:
        cells = []
        for res in results:
            row = next((r for r in res["rows"] if r["runtime"] == n), None)
            cells.append("—" if row is None or "skipped" in row else
                         f"{row['ratio_to_ort_fp32']:.2f} [{row['ci95'][0]:.2f}, {row['ci95'][1]:.2f}] ({row['p50_ms']:.2f} ms)")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of interleaved timing per model")
    ap.add_argument("--no-pte", action="store_true", help="leave the ExecuTorch .pte files out (lowering takes ~20-60 s a model)")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.models.split(","):
            results.append(compare_model(arch, Path(tmp), args.duration, not args.no_pte))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    info = machine_info(tool_versions())
    try:
        import openvino
        versions = {"openvino": openvino.__version__}
    except ImportError:
        versions = {}
    print(markdown(results), file=sys.stderr)
    print(json.dumps({"machine": info, "versions": versions, "results": results}, indent=1))


if __name__ == "__main__":
    main()
