"""Measure the reduced-precision scale gates on correct exports: how much of each bound they use.

For every model of the zoo sample (one per flavour × family × variant, at native size, seeded
weights with realistic BatchNorm statistics, as tests/e2e/test_zoo_check.py makes them) and for the
shipped digits model: export ONNX, fp16 and int8 (random calibration, uniform plan: the
measurement is of the gates, not the plan), check them, and print per artifact the logit slope,
the per-class bias and the fp16 error against PyTorch fp16's own, each as a share of its bound.
A correct export must stay well under 1 on every one; the worst case goes in docs/check.md.

    .venv/bin/python tests/benchmarks/bench_scale_gates.py [--models N] [--out results.jsonl]
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bsconv_export.exporter.export.run import export_bundle  # noqa: E402
from bsconv_export.exporter.check.run import CheckOptions  # noqa: E402
from bsconv_export.exporter.kit.options import ExportOptions  # noqa: E402
from bsconv_export.models.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, resolve_model  # noqa: E402
from test_zoo_check import realistic_statistics  # noqa: E402
from zoo_sample import representative  # noqa: E402

USES = ("slope_bound_used", "class_bias_bound_used", "fp16_bound_used", "fp16_typical_bound_used")


def measure(name: str, loaded, formats, calibration, tmp: Path) -> list[dict]:
    t0 = time.perf_counter()
    r = export_bundle(loaded, tmp / name, ExportOptions(formats=formats, calibration=calibration,
                                                        int8_plan="uniform"), check=CheckOptions())
    rows = []
    for rec in r.manifest.check.records:
        if rec.precision == "fp32" or rec.status.value == "skipped":
            continue
        rows.append({"model": name, "artifact": rec.artifact, "runner": rec.runner, "status": rec.status.value,
                     "reason": rec.reason, "seconds": round(time.perf_counter() - t0, 1),
                     **{k: rec.metrics.get(k) for k in ("slope", "class_bias_max", "top1_agreement", *USES)}})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=int, default=None, help="only the first N of the zoo sample")
    ap.add_argument("--out", type=Path, default=None, help="append every row to this .jsonl")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        shipped = load_checkpoint(DEFAULT_CHECKPOINT)
        rows += measure("digits (shipped, real data)", shipped, ("onnx", "fp16", "int8", "coreml-fp16"), None,
                        Path(tmp))
        for arch in representative()[:args.models]:
            torch.manual_seed(0)
            loaded = resolve_model(arch)
            realistic_statistics(loaded.model, loaded.input_spec)
            rows += measure(arch, loaded, ("onnx", "fp16", "int8"), "random", Path(tmp))
            for row in rows[-2:]:
                print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    summarize(rows)


NEW_GATES = ("least-squares slope", "more or less likely", "PyTorch fp16")


def summarize(rows: list[dict]) -> None:
    """The worst use of each new bound among artifacts the other gates pass, and what the new gates fail."""
    print("\nworst use of each bound among artifacts that pass the other gates:")
    for precision in ("fp16", "int8"):
        mine = [r for r in rows if (r["artifact"] in ("fp16", "coreml-fp16")) == (precision == "fp16")]
        judged = [r for r in mine if r["status"] == "ok" or any(g in (r["reason"] or "") for g in NEW_GATES)]
        print(f"  {precision}: {len(judged)} of {len(mine)} artifacts pass the cosine/agreement/accuracy gates")
        for key in USES:
            vals = [(r[key], r["model"], r["artifact"]) for r in judged if r.get(key) is not None]
            if vals:
                v, model, art = max(vals)
                print(f"    {key}: {v:.3f} ({model}, {art})")
        for r in judged:
            if r["status"] != "ok":
                print(f"    failed by a new gate: {r['model']} {r['artifact']} (top-1 agreement "
                      f"{r['top1_agreement']:.1%}): {r['reason']}")


if __name__ == "__main__":
    main()
