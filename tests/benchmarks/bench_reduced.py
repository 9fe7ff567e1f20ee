"""Benchmark: FP32 vs INT8 vs FP16 ONNX latency and size (not a test; `make bench-reduced`).

For each model at 224, batch 1: export ONNX (simplified), INT8 (static QDQ,
per-channel; calibration 'random' — latency does not depend on calibration
quality) and FP16; then time FP32 against each reduced file interleaved in ABBA
order in one process and report the median of the paired ratios with a 95 %
bootstrap interval, and the file-size ratios.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bsconv_export.exporter.export.run import export_bundle
from bsconv_export.exporter.kit.options import ExportOptions
from bsconv_export.exporter.bench.regress import regress_ab
from bsconv_export.models.checkpoint import resolve_model

MODELS = ("mobilenetv1_w1_bsconvu", "mobilenetv2_w1_bsconvs_p1d6", "mobilenetv3_large_w1_bsconvs_p1d6")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--duration", type=float, default=15.0)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.models.split(","):
            bundle = Path(tmp) / arch
            r = export_bundle(resolve_model(arch), bundle, ExportOptions(formats=("onnx", "int8", "fp16"),
                                                                          input_size=224, calibration="random"))
            by = {a["format"]: a for a in r.manifest.to_dict()["artifacts"]}
            fp32 = bundle / by["onnx-simplified"]["path"]
            row = {"arch": arch}
            for fmt in ("int8", "fp16"):
                d = regress_ab(fp32, bundle / by[fmt]["path"], duration=args.duration)
                row[fmt] = {"latency_ratio_median": round(d["decision"]["ratio"], 3),
                            "ci95": [round(d["decision"]["ci_low"], 3), round(d["decision"]["ci_high"], 3)],
                            "fp32_p50_ms": round(d["baseline_latency"]["p50_ms"], 3),
                            "p50_ms": round(d["candidate_latency"]["p50_ms"], 3),
                            "bytes_ratio": round(by[fmt]["bytes"] / by["onnx-simplified"]["bytes"], 3)}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
