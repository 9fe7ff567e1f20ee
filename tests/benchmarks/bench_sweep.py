"""Benchmark: a zoo sample exported and checked one job at a time vs side by side on Dask (not a test).

The same plan (``--models``, each with ``--formats``, the check on) runs as ``sweep --workers 1``
and ``sweep --workers N`` (default: the usable cores), alternating, ``--runs`` times each, each
run a fresh process into fresh folders; the wall time of each run, their medians and the ratio
of medians are printed. Run: `make bench-sweep`.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("cifar_mobilenetv1_w1d4_bsconvu", "cifar_mobilenetv2_w1d4_bsconvu", "cifar_mobilenetv3_small_w7d20_bsconvu",
          "cifar_preresnet20_bsconvu", "cifar_resnet20_bsconvu", "cifar_wrn16_2_bsconvu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--formats", default="onnx,ort")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    exe = Path(sys.executable).with_name("bsconv-export")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ORT_DISABLE_TELEMETRY": "1"}
    times: dict[int, list[float]] = {1: [], args.workers: []}
    for run in range(args.runs):
        for workers in (1, args.workers) if run % 2 == 0 else (args.workers, 1):
            with tempfile.TemporaryDirectory() as tmp:
                plan = Path(tmp) / "plan.toml"
                plan.write_text("[defaults]\nformats = [" + ", ".join(f'"{f}"' for f in args.formats.split(","))
                                + "]\n\n" + "".join(f'[[job]]\nmodel = "{m}"\nout = "{m}"\n\n'
                                                   for m in args.models.split(",")))
                t0 = time.perf_counter()
                p = subprocess.run([str(exe), "sweep", str(plan), "--workers", str(workers), "--json"],
                                   capture_output=True, text=True, env=env)
                wall = time.perf_counter() - t0
                verdicts = [(j["verdict"], j["out"], j["error"]) for j in json.loads(p.stdout)["jobs"]
                            if j["verdict"] != "passed"] if p.stdout else []
                if p.returncode != 0:
                    sys.exit(f"sweep --workers {workers} exited {p.returncode}: {verdicts} {p.stderr[-500:]}")
                times[workers].append(wall)
                print(json.dumps({"workers": workers, "run": run, "wall_s": round(wall, 1)}), file=sys.stderr,
                      flush=True)
    one, many = statistics.median(times[1]), statistics.median(times[args.workers])
    print(json.dumps({"models": args.models.split(","), "formats": args.formats, "runs": args.runs,
                      "wall_s": {str(k): [round(v, 1) for v in vs] for k, vs in times.items()},
                      "median_s": {"1": round(one, 1), str(args.workers): round(many, 1)},
                      "ratio": round(many / one, 3)}, indent=1))


if __name__ == "__main__":
    main()
