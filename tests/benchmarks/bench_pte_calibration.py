"""Benchmark: the ``.pte`` int8 calibration chosen by measurement (not a test; ``make bench-pte-calibration``).

For each trained network at 224 (the checkpoints ``make bench-int8`` trains and caches), the pt2e
program is quantised with ExecuTorch's XNNPACK recipe under each calibration in the grid — the
activation observer (the recipe's histogram, which clips the tails to minimise the L2 quantisation
error, or the plain min/max seen) and the number of calibration samples from the digits' training
split, and whether BSConv-U's pointwise → depthwise intermediates are equalised first
(:mod:`exporter.kit.equalise`) — and the quantised program is judged by the int8 gate on the check's own inputs (the 360
held-out digits with their labels, their coloured copies and the edge cases) against PyTorch fp32:
top-1 agreement (with its 95 % upper bound), logit slope, class bias, accuracy.

What is judged is the quantised program in PyTorch (``convert_pt2e``: quantise/dequantise around
float kernels), not XNNPACK's int8 kernels: the two differ by int8 rounding, so the choice made here
is confirmed on the real ``.pte`` by ``bench-int8``. Calibration and check inputs never overlap.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bsconv_export.exporter.check.inputs import check_inputs, edge_cases
from bsconv_export.exporter.check.reference import Reference
from bsconv_export.exporter.check.verdict import compare, measure, verdict
from bsconv_export.exporter.formats import tool_versions
from bsconv_export.exporter.formats.executorch.export import ACTIVATION_OBSERVERS, quantize_program
from bsconv_export.exporter.kit.calibration import digits_order
from bsconv_export.exporter.kit.tolerances import DEFAULT_TOLERANCES
from bsconv_export.kernel.machine import machine_info
from bsconv_export.models.checkpoint import load_checkpoint
from bsconv_export.models.data import digits_to_input, split_digits

MODELS = ("mobilenetv1_w1_bsconvu", "mobilenetv2_w1_bsconvs_p1d6", "mobilenetv3_large_w1_bsconvs_p1d6")
SAMPLES = (256, 1024)


def _run(module, x: np.ndarray, batch: int = 16) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([module(torch.from_numpy(x[i:i + batch])).numpy() for i in range(0, len(x), batch)])


def judge(out: np.ndarray, ref: np.ndarray, labels: np.ndarray, n_edges: int) -> dict:
    """The int8 gate's metrics and verdict on ``out`` against PyTorch fp32 ``ref`` (labels: first rows;
    the edge cases: the last ``n_edges``), and the agreement and slope of each kind of input apart."""
    m = measure(out, ref, DEFAULT_TOLERANCES["int8"], n_edges)     # the check's own rule, edge cases apart
    n = len(labels)
    acc = float(np.mean(out[:n].argmax(1) == labels))
    ref_acc = float(np.mean(ref[:n].argmax(1) == labels))
    reference = Reference(r64=ref.astype(np.float64), r32=ref, e32=np.zeros(len(ref)))
    reason = verdict(out, reference, m, DEFAULT_TOLERANCES["int8"], accuracy=acc, reference_accuracy=ref_acc)
    parts = {"held_out": slice(0, n), "coloured": slice(n, len(out) - n_edges), "edge_cases": slice(len(out) - n_edges, None)}
    by_part = {}
    for name, rows in parts.items():
        p = compare(out[rows], ref[rows])
        by_part[name] = {"top1_agreement": round(p["top1_agreement"], 4), "slope": round(p["slope"], 4)}
    return {"passed": reason is None, "reason": reason, "top1_agreement": round(m["top1_agreement"], 4),
            "top1_agreement_high": round(m["top1_agreement_high"], 4), "slope": round(m["slope"], 4),
            "class_bias_max": round(m["class_bias_max"], 4), "accuracy": round(acc, 4),
            "reference_accuracy": round(ref_acc, 4),
            "by_part": by_part}


def study(arch: str, checkpoint: Path, observers: list[str], samples: list[int],
          equalising: tuple[bool, ...] = (False, True)) -> dict:
    loaded = load_checkpoint(checkpoint)
    model = loaded.model.eval()
    spec = model.input_spec
    inputs = check_inputs(spec, reduced=True)
    ref = _run(model, inputs.x)
    n_edges = len(edge_cases(spec, (1,) + spec.shape))
    images, _, _, _ = split_digits()
    order = digits_order(len(images))
    example = torch.from_numpy(inputs.x[:1])
    program = torch.export.export(model, (example,), strict=False)
    rows = []
    for n in samples:
        calibration = digits_to_input(images[order[:n]], spec.size)
        for observer, equalised in [(o, e) for o in observers for e in equalising]:
            t0 = time.perf_counter()
            quantized, done = quantize_program(program, calibration, 1, observer=observer, equalised=equalised)
            seconds = time.perf_counter() - t0
            if equalised and not done["pairs"]:
                continue     # nothing to equalise: the same file as without
            row = {"observer": observer, "equalised": done, "calibration_samples": int(len(calibration)),
                   "calibration_seconds": round(seconds, 1), **judge(_run(quantized, inputs.x), ref, inputs.labels, n_edges)}
            print(json.dumps({"arch": arch, **row}), file=sys.stderr, flush=True)
            rows.append(row)
    return {"arch": arch, "checkpoint": str(checkpoint), "check_inputs": inputs.source, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--epochs", type=int, default=2, help="which cached bench-int8 checkpoints (trained this many epochs)")
    ap.add_argument("--cache", type=Path, default=Path("build/bench-int8"))
    ap.add_argument("--observers", default=",".join(ACTIVATION_OBSERVERS))
    ap.add_argument("--equalise", choices=("both", "yes", "no"), default="both",
                    help="equalise pointwise -> depthwise intermediates first (exporter.kit.equalise)")
    ap.add_argument("--samples", default=",".join(map(str, SAMPLES)), help="calibration sample counts (training split: 1,437)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    results = []
    for arch in args.models.split(","):
        checkpoint = args.cache / f"{arch}-digits-{args.epochs}ep.pt"
        if not checkpoint.exists():
            sys.exit(f"no checkpoint {checkpoint}: run `python tests/benchmarks/bench_int8.py --models {arch} "
                     f"--epochs {args.epochs}` first (it trains and caches it)")
        equalising = {"both": (False, True), "yes": (True,), "no": (False,)}[args.equalise]
        results.append(study(arch, checkpoint, args.observers.split(","), [int(s) for s in args.samples.split(",")],
                             equalising))
    machine = machine_info(tool_versions())
    print(json.dumps({"machine": machine, "torch_threads": torch.get_num_threads(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
