"""Benchmark: the regression gate's false-alarm and detection rates on this machine (not a test).

(a) a model against itself, (b) the same model against a copy about 10 % slower
(the same network exported at a larger input size, 224 → 235: 10 % more pixels).
The true ratio of (b) is measured first with one long paired run. Each decision
is a `regress` A/B run of --duration seconds. Run: `make bench-gate`.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bsconv_export.exporter.export.run import export_bundle
from bsconv_export.exporter.kit.options import ExportOptions
from bsconv_export.exporter.bench.regress import regress_ab
from bsconv_export.models.checkpoint import resolve_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--arch", default="mobilenetv2_w1_bsconvs_p1d6")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--slow-size", type=int, default=235)
    ap.add_argument("--runs", type=int, default=25)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--truth-duration", type=float, default=60.0)
    ap.add_argument("--max-slowdown", type=float, default=0.05)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        loaded = resolve_model(args.arch)
        base, slow = Path(tmp) / "base", Path(tmp) / "slow"
        export_bundle(loaded, base, ExportOptions(formats=("onnx",), input_size=args.size))
        export_bundle(loaded, slow, ExportOptions(formats=("onnx",), input_size=args.slow_size))
        truth = regress_ab(base, slow, duration=args.truth_duration)["decision"]
        print(f"true ratio {truth['ratio']:.3f} (CI {truth['ci_low']:.3f}-{truth['ci_high']:.3f}, "
              f"{truth['pairs']} pairs)", file=sys.stderr, flush=True)
        outcome = {}
        for name, cand in (("same", base), ("slower", slow)):
            alarms, seconds, ratios = 0, [], []
            for i in range(args.runs):
                t0 = time.perf_counter()
                d = regress_ab(base, cand, duration=args.duration, max_slowdown=args.max_slowdown)["decision"]
                seconds.append(time.perf_counter() - t0)
                alarms += d["regression"]
                ratios.append(round(d["ratio"], 4))
                print(f"{name} {i + 1}/{args.runs}: ratio {d['ratio']:.3f} [{d['ci_low']:.3f}, {d['ci_high']:.3f}]"
                      f" -> {'REGRESSION' if d['regression'] else 'ok'}", file=sys.stderr, flush=True)
            outcome[name] = {"runs": args.runs, "alarms": alarms, "rate": alarms / args.runs,
                             "decision_seconds_max": round(max(seconds), 1), "ratios": ratios}
    print(json.dumps({"arch": args.arch, "sizes": [args.size, args.slow_size], "max_slowdown": args.max_slowdown,
                      "true_ratio": truth, "false_alarm": outcome["same"], "detection": outcome["slower"]}, indent=1))


if __name__ == "__main__":
    main()
