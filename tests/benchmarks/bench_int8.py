"""Benchmark: every int8 artifact at 224, verified against the int8 gate and timed against
onnxruntime fp32, side by side in one run (not a test; `make bench-int8`).

Untrained weights make an int8 gate meaningless: their BatchNorm statistics (mean 0, variance 1)
do not describe any data, so activations grow or vanish layer by layer and the logits are a few
saturated values. So each model first gets **realistic BatchNorm statistics**: its BatchNorm
layers re-estimated (cumulative average, ``momentum=None``) on 256 images of the digits' training
split, each grey 8×8 digit read by the app's pixel rule at 224 (:func:`kernel.pixels.to_input`);
the weights stay the seeded initialisation. That network is written as a checkpoint and exported
with ``onnx, int8, pte, pte-int8, tflite, tflite-int8``, calibrated on those same 256 training
images (``--calibration`` npz), and checked on the 360 held-out digits (``check --data`` npz,
inputs only: a 1000-class model has no digit labels, so the gate is agreement, slope and class
bias against PyTorch). How well the network separates that data is printed beside it: the number
of distinct top-1 classes and the median gap between the two largest logits, in units of the
logits' standard deviation.

Then ``bench`` times every file against the simplified ONNX on onnxruntime, interleaved (ABBA) in
this one process, batch 1, 2 threads; the ratio is the median of paired ratios with a 95 %
bootstrap interval. Needs ``make setup-litert`` for the ``.tflite`` rows.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from bsconv_export.exporter.bench.bench import BenchOptions, run_bench
from bsconv_export.exporter.bench.regress import regress_ab
from bsconv_export.exporter.check.run import CheckOptions
from bsconv_export.exporter.export.run import export_bundle
from bsconv_export.exporter.kit.options import ExportOptions
from bsconv_export.kernel.pixels import to_input
from bsconv_export.models.checkpoint import resolve_model, save_checkpoint
from bsconv_export.models.data import split_digits

MODELS = ("mobilenetv1_w1_bsconvu", "mobilenetv2_w1_bsconvs_p1d6", "mobilenetv3_large_w1_bsconvs_p1d6")
FORMATS = ("onnx", "int8", "pte", "pte-int8", "tflite", "tflite-int8")
CALIBRATION = 256


def digits_at(images: np.ndarray, spec) -> np.ndarray:
    pixels = (np.asarray(images, dtype=np.float64) * (255 / 16)).round().astype(np.uint8)[..., None]
    return np.concatenate([to_input(p, spec) for p in pixels])


def with_data_statistics(model: torch.nn.Module, x: np.ndarray, batch: int = 32) -> torch.nn.Module:
    """``model`` with every BatchNorm's running mean and variance measured on ``x``."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            model(torch.from_numpy(x[i:i + batch]))
    return model.eval()


def separation(model: torch.nn.Module, x: np.ndarray) -> dict:
    with torch.no_grad():
        y = torch.cat([model(torch.from_numpy(x[i:i + 32])) for i in range(0, len(x), 32)]).numpy()
    top2 = np.sort(y, axis=1)[:, -2:]
    return {"distinct_top1": int(len(set(y.argmax(1).tolist()))),
            "median_top1_gap_in_logit_std": round(float(np.median((top2[:, 1] - top2[:, 0]) / y.std(axis=1))), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of paired timing per file")
    args = ap.parse_args()
    torch.set_num_threads(2)
    train, _, held_out, _ = split_digits()
    order = np.random.default_rng(0).permutation(len(train))[:CALIBRATION]
    rows, machine = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.models.split(","):
            loaded = resolve_model(arch)
            spec = loaded.model.input_spec
            calib, check = digits_at(train[order], spec), digits_at(held_out, spec)
            model = with_data_statistics(loaded.model, calib)
            ckpt = save_checkpoint(model, Path(tmp) / f"{arch}.pt",
                                   extra={"note": "seeded weights, BatchNorm statistics of 256 digits at 224"})
            np.savez(Path(tmp) / "calibration.npz", input=calib)
            np.savez(Path(tmp) / "check.npz", input=check)
            bundle = Path(tmp) / arch
            result = export_bundle(resolve_model(arch, ckpt), bundle,
                                   ExportOptions(formats=tuple(args.formats.split(",")),
                                                 calibration=str(Path(tmp) / "calibration.npz")),
                                   check=CheckOptions(data=str(Path(tmp) / "check.npz")))
            checks = {}
            for c in result.manifest.check.records:
                checks.setdefault(c.artifact, []).append(
                    {"runner": c.runner, "status": c.status.value, "reason": c.reason,
                     **{k: round(v, 4) for k, v in (c.metrics or {}).items()
                        if k in ("top1_agreement", "slope", "class_bias_rms") and isinstance(v, float)}})
            sizes = {a.format: a.bytes for a in result.manifest.artifacts if a.ok and a.bytes}
            res = run_bench(bundle, BenchOptions(duration=args.duration))
            machine = res["machine"]
            row = {"arch": arch, "weights": "seeded, BatchNorm statistics of 256 digits at 224",
                   **separation(model, check), "files": {}}
            for pair in res["paired"]:
                fmt = pair["artifact"]
                row["files"].setdefault(fmt, {"bytes_vs_onnx": round(sizes.get(fmt, 0) / sizes["onnx-simplified"], 3)
                                              if sizes.get("onnx-simplified") else None,
                                              "check": checks.get(fmt, []), "latency": []})
                row["files"][fmt]["latency"].append(
                    {"runner": pair["runner"], "status": pair["status"],
                     **({"ratio_to_ort_fp32": round(pair["ratio_median"], 3),
                         "ci95": [round(v, 3) for v in pair["ratio_ci95"]], "p50_ms": round(pair["latency"]["p50_ms"], 3),
                         "ort_fp32_p50_ms": round(pair["baseline_latency"]["p50_ms"], 3)}
                        if pair["status"] == "ok" else {"reason": pair.get("reason")})})
            if "int8" in sizes:    # onnxruntime int8 against onnxruntime fp32: bench's pairs leave out ORT's own
                by = {a.format: a.path for a in result.manifest.artifacts if a.ok and a.path}
                d = regress_ab(bundle / by["onnx-simplified"], bundle / by["int8"], duration=args.duration)
                row["files"]["int8"] = {
                    "bytes_vs_onnx": round(sizes["int8"] / sizes["onnx-simplified"], 3), "check": checks.get("int8", []),
                    "latency": [{"runner": "onnxruntime-cpu", "status": "ok",
                                 "ratio_to_ort_fp32": round(d["decision"]["ratio"], 3),
                                 "ci95": [round(d["decision"]["ci_low"], 3), round(d["decision"]["ci_high"], 3)],
                                 "p50_ms": round(d["candidate_latency"]["p50_ms"], 3),
                                 "ort_fp32_p50_ms": round(d["baseline_latency"]["p50_ms"], 3)}]}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps({"machine": machine and machine["cpu"], "isa": machine and machine["isa"], "results": rows},
                     indent=1))


if __name__ == "__main__":
    main()
