"""Benchmark: ORT CPU latency of exported BSConv MobileNets as a ratio to PyTorch eager (not a test).

For each model: export to ONNX at 224 (untrained weights: latency does not depend
on their values), then time onnxruntime and PyTorch eager interleaved in ABBA
order in this one process, batch 1, both with the same thread count. The ratio
is the median of the paired ratios, with a 95 % bootstrap interval.
Run: `make bench-latency`.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from bsconv_export.exporter.bench.bench import BenchOptions, run_bench
from bsconv_export.exporter.export.run import export_bundle
from bsconv_export.exporter.kit.options import ExportOptions
from bsconv_export.models.checkpoint import resolve_model

MODELS = ("mobilenetv1_w1_bsconvu", "mobilenetv2_w1_bsconvs_p1d6", "mobilenetv3_large_w1_bsconvs_p1d6")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of paired timing per model")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.models.split(","):
            loaded = resolve_model(arch)
            bundle = Path(tmp) / arch
            export_bundle(loaded, bundle, ExportOptions(formats=("onnx",), input_size=224))
            res = run_bench(bundle, BenchOptions(threads=args.threads, duration=args.duration, vs_torch=True),
                            torch_model=loaded.model)
            r = res["results"][0]
            vs = r["vs_torch"]
            rows.append({"arch": arch, "ort_p50_ms": round(r["latency"]["p50_ms"], 3),
                         "torch_p50_ms": round(vs["torch_latency"]["p50_ms"], 3),
                         "ratio_median": round(vs["ratio_median"], 3),
                         "ratio_ci95": [round(v, 3) for v in vs["ratio_ci95"]], "pairs": vs["pairs"],
                         "threads": args.threads})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"machine": res["machine"]["cpu"], "isa": res["machine"]["isa"], "results": rows}, indent=1))


if __name__ == "__main__":
    main()
