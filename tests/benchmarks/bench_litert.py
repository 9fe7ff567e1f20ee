"""Benchmark: the LiteRT .tflite against onnxruntime on the same CPU, paired (not a test).

For each model: export ``onnx`` and ``tflite`` at 224 (untrained weights: latency does not
depend on their values), then time the ``.tflite`` on the LiteRT interpreter (XNNPACK, what
an Android app gets by default, and the built-in kernels) and the simplified ONNX
(onnxruntime CPU, thread spinning off — see bench.pair_with_baseline) interleaved in ABBA
order in this one process, batch 1, every runtime at its default threads. The ratio is the
median of the paired ratios ``tflite / onnxruntime`` with a 95 % bootstrap interval. The row
also names the operators the converter emitted. Needs ``make setup-litert``.
Run: `make bench-litert`.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bsconv_export.exporter.bench.bench import BenchOptions, run_bench
from bsconv_export.exporter.export.run import export_bundle
from bsconv_export.exporter.kit.options import ExportOptions
from bsconv_export.models.checkpoint import resolve_model

MODELS = ("mobilenetv1_w1_bsconvu", "mobilenetv2_w1_bsconvs_p1d6", "mobilenetv3_large_w1_bsconvs_p1d6")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of paired timing per model and runner")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.models.split(","):
            bundle = Path(tmp) / arch
            result = export_bundle(resolve_model(arch), bundle, ExportOptions(formats=("onnx", "tflite"),
                                                                             input_size=224))
            tfl = next(a for a in result.records if a.format == "tflite")
            if not tfl.ok:
                sys.exit(f"{arch}: tflite stage failed: {tfl.error}")
            res = run_bench(bundle, BenchOptions(duration=args.duration))
            for pair in (p for p in res["paired"] if p["status"] == "ok"):
                rows.append({"arch": arch, "runner": pair["runner"],
                             "tflite_p50_ms": round(pair["latency"]["p50_ms"], 3),
                             "ort_p50_ms": round(pair["baseline_latency"]["p50_ms"], 3),
                             "ratio_median": round(pair["ratio_median"], 3),
                             "ratio_ci95": [round(v, 3) for v in pair["ratio_ci95"]], "pairs": pair["pairs"],
                             "conversion_seconds": round(tfl.seconds, 1), "ops": tfl.details["op_types"]})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"machine": res["machine"]["cpu"], "isa": res["machine"]["isa"],
                      "cores": res["machine"]["usable_cores"], "results": rows}, indent=1))


if __name__ == "__main__":
    main()
