"""Benchmark: the ExecuTorch .pte against onnxruntime on the same CPU, paired (not a test).

For each model: export ``onnx`` and ``pte`` at 224 from one capture (untrained
weights: latency does not depend on their values), then time the ``.pte``
(ExecuTorch, XNNPACK) and the simplified ONNX (onnxruntime CPU, default
threads, thread spinning off — a spinning pool slows whatever runs next in the
process; ``ort_spinning_on_over_off`` says what spinning is worth to onnxruntime alone) interleaved in ABBA order in this one process, batch 1. The ratio is
the median of the paired ratios ``pte / onnxruntime`` with a 95 % bootstrap
interval; the row also says what XNNPACK did not take (ops left to ExecuTorch's
portable kernels), which is what holds a ``.pte`` back.
Run: `make bench-pte`.
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

MODELS = ("mobilenetv1_w1_bsconvu", "mobilenetv2_w1_bsconvs_p1d6", "mobilenetv3_large_w1_bsconvs_p1d6",
          "mobilenetv3_small_w1_bsconvu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of paired timing per model")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.models.split(","):
            bundle = Path(tmp) / arch
            result = export_bundle(resolve_model(arch), bundle, ExportOptions(formats=("onnx", "pte"), input_size=224))
            pte = next(a for a in result.records if a.format == "pte")
            if not pte.ok:
                sys.exit(f"{arch}: pte stage failed: {pte.error}")
            res = run_bench(bundle, BenchOptions(duration=args.duration))
            (pair,) = [p for p in res["paired"] if p["status"] == "ok"]
            rows.append({"arch": arch, "pte_p50_ms": round(pair["latency"]["p50_ms"], 3),
                         "ort_p50_ms": round(pair["baseline_latency"]["p50_ms"], 3),
                         "ratio_median": round(pair["ratio_median"], 3),
                         "ratio_ci95": [round(v, 3) for v in pair["ratio_ci95"]], "pairs": pair["pairs"],
                         "ort_spinning_on_over_off": round(pair["baseline_spinning"]["ratio_on_over_off"], 3),
                         "lowering_seconds": round(pte.seconds, 1),
                         "xnnpack_nodes": pte.details["delegated_nodes"], "outside_ops": pte.details["outside_ops"]})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"machine": res["machine"]["cpu"], "isa": res["machine"]["isa"],
                      "cores": res["machine"]["usable_cores"], "results": rows}, indent=1))


if __name__ == "__main__":
    main()
