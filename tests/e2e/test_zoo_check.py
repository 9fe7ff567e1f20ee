"""The zoo at native size: every fp32 format exports and passes the check, no false failures.

Weights are the zoo's seeded initialisation (the reference's init scheme, same modules as
``bsconv==0.4.0``); BatchNorm statistics are made realistic by
running the network in training mode over inputs drawn with another seed than
the check's, so the check never sees the data its statistics were fitted to.
``make test`` runs one width of every flavour × family × variant (24 models);
``make test-zoo`` (``-m zoo``) runs all 96. Set ZOO_REPORT=path.jsonl to record
each artifact's error next to PyTorch fp32's own.
"""
import json
import os
import re

import numpy as np
import pytest
import torch
from torch import nn

from bsconv_export.exporter.export.run import export_bundle
from bsconv_export.exporter.check.run import CheckOptions
from bsconv_export.exporter.kit.options import ExportOptions
from bsconv_export.exporter.formats import FORMATS
from bsconv_export.models import list_models
from bsconv_export.models.checkpoint import resolve_model

from zoo_sample import family, representative

# exports many formats or models: make test-all, not the fast tier
pytestmark = pytest.mark.slow

STATS_SEED = 12345   # the check draws with seed 0
# make test's sample leaves the .pte out (ExecuTorch's lowering takes ~15 s per model on 2 cores;
# tests/e2e/test_export.py lowers one model per family); the whole-zoo sweep takes every fp32 format.
SAMPLE_FORMATS = ("pt2", "onnx", "ort", "coreml")
FP32_FORMATS = tuple(f.name for f in FORMATS.values() if f.selectable and f.precision == "fp32")


def realistic_statistics(model: nn.Module, spec, n: int = 16) -> None:
    lo, hi = spec.value_range
    x = torch.from_numpy(np.random.default_rng(STATS_SEED).uniform(lo, hi, (n,) + spec.shape).astype(np.float32))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None   # a cumulative average over the batch
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()


def export_and_check(arch, tmp_path, formats):
    torch.manual_seed(0)
    loaded = resolve_model(arch)
    realistic_statistics(loaded.model, loaded.input_spec)
    r = export_bundle(loaded, tmp_path / "b", ExportOptions(formats=formats), check=CheckOptions(samples=4))
    report = os.environ.get("ZOO_REPORT")
    if report:
        with open(report, "a") as f:
            for rec in r.manifest.check.records:
                f.write(json.dumps({"arch": arch, "artifact": rec.artifact, "runner": rec.runner,
                                    "status": rec.status.value, "reason": rec.reason, **rec.metrics,
                                    **r.manifest.check.reference_error}) + "\n")
    failed = [(rec.artifact, rec.runner, rec.reason) for rec in r.manifest.check.records
              if rec.status.value not in ("ok", "skipped")]
    assert r.ok and not failed, failed or [a.error for a in r.manifest.artifacts if not a.ok]


@pytest.mark.parametrize("arch", representative())
def test_representative_zoo_sample_passes_at_native_size(tmp_path, arch):
    export_and_check(arch, tmp_path, SAMPLE_FORMATS)


@pytest.mark.zoo
@pytest.mark.parametrize("arch", list_models())
def test_whole_zoo_passes_at_native_size(tmp_path, arch):
    export_and_check(arch, tmp_path, FP32_FORMATS)


def test_every_fp32_format_is_in_the_sweep():
    assert {"pt2", "onnx", "ort", "coreml", "pte"} <= set(FP32_FORMATS)


def test_sample_covers_every_family_and_variant():
    assert {family(n) for n in representative()} == {family(n) for n in list_models()}
    assert len(representative()) == 24 + 15   # MobileNets, then ResNet/pre-ResNet (×2 flavours) and WRN
