"""Benchmark: every int8 artifact at 224 on a *trained* network, verified against the int8 gate and
timed against onnxruntime fp32, side by side in one run (not a test; `make bench-int8`).

Why trained: an int8 gate on untrained weights measures nothing an app sees. Measured with V1 at 224
and seeded weights (BatchNorm statistics re-estimated on 256 digits, a logistic-regression head fitted
on the backbone's features, 77 % held-out accuracy): every int8 path — ONNX QDQ, ``.pte``, ``.tflite``
— kept 32–46 % top-1 agreement at logit slope 0.03–0.10: random convolutions spread the class signal
thin over channels whose ranges differ by orders of magnitude, and per-tensor activation scales
drown it. A trained network concentrates it. So each model is trained here on the digits' 1,437
training images at 224 (:func:`models.train.train_digits`, seeded, batch 32, no shift augmentation
or BSConv-S regulariser — the shipped recipe's extras cost 3× the time at 224; cached under ``--cache``) and exported with ``onnx, int8, pte, pte-int8, tflite, tflite-int8``: calibrated on
the digits' training split, checked on the 360 held-out digits (with accuracy) plus the check's
coloured copies and edge cases, as for the shipped model.

Then ``bench`` times every file against the simplified ONNX on onnxruntime, interleaved (ABBA) in
this one process, batch 1, the usable cores, onnxruntime's spinning off; the ratio is the median of
paired ratios with a 95 % bootstrap interval. The ONNX int8 file is paired with the same ONNX by
``regress``. Needs ``make setup-litert`` for the ``.tflite`` rows.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bsconv_export.exporter.bench.bench import BenchOptions, run_bench
from bsconv_export.exporter.bench.regress import regress_ab
from bsconv_export.exporter.check.run import CheckOptions
from bsconv_export.exporter.export.run import export_bundle
from bsconv_export.exporter.kit.options import ExportOptions
from bsconv_export.models.checkpoint import load_checkpoint, resolve_model, save_checkpoint
from bsconv_export.models.data import load_holdout
from bsconv_export.models.train import TrainConfig, accuracy, train_digits

MODELS = ("mobilenetv1_w1_bsconvu", "mobilenetv2_w1_bsconvs_p1d6", "mobilenetv3_large_w1_bsconvs_p1d6")
FORMATS = ("onnx", "int8", "pte", "pte-int8", "tflite", "tflite-int8")


def trained(arch: str, epochs: int, cache: Path) -> tuple[Path, float]:
    """The checkpoint of ``arch`` trained ``epochs`` on the digits at its native size (made once),
    and its held-out accuracy."""
    path = cache / f"{arch}-digits-{epochs}ep.pt"
    if not path.exists():
        config = TrainConfig(arch=arch, epochs=epochs, batch_size=32, reg_alpha=0.0, max_shift=0)
        model, result = train_digits(config, progress=lambda e, row: print(f"{arch} epoch {e}: {row}", file=sys.stderr,
                                                                          flush=True))
        save_checkpoint(model, path)
    model = load_checkpoint(path).model
    held_out, labels = load_holdout(model.input_spec.size)
    return path, accuracy(model, held_out, labels, batch_size=32)


def _checks(manifest) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for c in manifest.check.records:
        m = c.metrics or {}
        out.setdefault(c.artifact, []).append(
            {"runner": c.runner, "status": c.status.value, "reason": c.reason, "accuracy": c.accuracy,
             "reference_accuracy": c.reference_accuracy,
             **{k: round(m[k], 4) for k in ("top1_agreement", "slope", "class_bias_max") if isinstance(m.get(k), float)}})
    return out


def _latency(pair: dict) -> dict:
    if pair["status"] != "ok":
        return {"runner": pair.get("runner"), "status": pair["status"], "reason": pair.get("reason")}
    return {"runner": pair["runner"], "status": "ok", "ratio_to_ort_fp32": round(pair["ratio_median"], 3),
            "ci95": [round(v, 3) for v in pair["ratio_ci95"]], "p50_ms": round(pair["latency"]["p50_ms"], 3),
            "ort_fp32_p50_ms": round(pair["baseline_latency"]["p50_ms"], 3)}


def measure(arch: str, checkpoint: Path, formats: tuple[str, ...], duration: float, tmp: Path) -> tuple[dict, dict]:
    bundle = tmp / arch
    result = export_bundle(resolve_model(arch, checkpoint), bundle, ExportOptions(formats=formats),
                           check=CheckOptions())
    checks = _checks(result.manifest)
    rows = {a.format: a for a in result.manifest.artifacts if a.ok and a.path}
    base = rows["onnx-simplified"]
    files: dict[str, dict] = {}
    res = run_bench(bundle, BenchOptions(duration=duration))
    for pair in res["paired"]:
        fmt = pair["artifact"]
        files.setdefault(fmt, {"bytes_vs_onnx": round(rows[fmt].bytes / base.bytes, 3), "check": checks.get(fmt, []),
                               "latency": []})["latency"].append(_latency(pair))
    if "int8" in rows:     # bench pairs other runtimes with onnxruntime; ORT's own int8 file is paired here
        d = regress_ab(bundle / base.path, bundle / rows["int8"].path, duration=duration)
        files["int8"] = {"bytes_vs_onnx": round(rows["int8"].bytes / base.bytes, 3), "check": checks.get("int8", []),
                         "latency": [{"runner": "onnxruntime-cpu", "status": "ok",
                                      "ratio_to_ort_fp32": round(d["decision"]["ratio"], 3),
                                      "ci95": [round(d["decision"]["ci_low"], 3), round(d["decision"]["ci_high"], 3)],
                                      "p50_ms": round(d["candidate_latency"]["p50_ms"], 3),
                                      "ort_fp32_p50_ms": round(d["baseline_latency"]["p50_ms"], 3)}]}
    for fmt in ("pte-int8", "tflite-int8"):
        if fmt in rows:
            files.setdefault(fmt, {})["op_types"] = rows[fmt].details.get("op_types")
    return files, res["machine"]


def fastest_verified(files: dict) -> dict | None:
    """The int8 file with the lowest latency ratio among those every runner passed."""
    best = None
    for fmt, f in files.items():
        if "int8" not in fmt or not f.get("check") or any(c["status"] != "ok" for c in f["check"]):
            continue
        for lat in f.get("latency", []):
            if lat.get("status") == "ok" and (best is None or lat["ratio_to_ort_fp32"] < best["ratio_to_ort_fp32"]):
                best = {"format": fmt, **lat}
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--epochs", default="2", help="training epochs per model (checkpoints are cached): one number "
                    "for every model, or one per model in --models' order (5,5,2)")
    ap.add_argument("--cache", type=Path, default=Path("build/bench-int8"), help="where trained checkpoints are kept")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of paired timing per file and runner")
    args = ap.parse_args()
    models = args.models.split(",")
    epochs = [int(e) for e in args.epochs.split(",")]
    if len(epochs) == 1:
        epochs *= len(models)
    if len(epochs) != len(models):
        ap.error(f"--epochs: {len(epochs)} numbers for {len(models)} models (give one, or one per model)")
    rows, machine = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for arch, n in zip(models, epochs):
            checkpoint, accuracy = trained(arch, n, args.cache)
            files, machine = measure(arch, checkpoint, tuple(args.formats.split(",")), args.duration, Path(tmp))
            row = {"arch": arch, "weights": f"trained {n} epochs on the digits at 224 (seed 0)",
                   "holdout_accuracy": accuracy,
                   "fastest_verified_int8": fastest_verified(files), "files": files}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps({"machine": machine and machine["cpu"], "isa": machine and machine["isa"],
                      "cores": machine and machine["usable_cores"], "results": rows}, indent=1))


if __name__ == "__main__":
    main()
