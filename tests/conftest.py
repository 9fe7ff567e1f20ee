import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from bsconv_export.models.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint


# `make test` runs the suite in one worker per core (pytest-xdist). Each worker keeps to one torch
# thread, and so do the runtimes the tool sizes from the caller's torch pool (the check's runners,
# the int8 stage's sessions: exporter/check/run.py, exporter/export/run.py), exactly as production sizes
# them: two workers that each spin two threads on two cores slow down many-fold.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")   # and the CLI processes tests start: one torch thread


# Exports in tests run their stages in this process (tests that run them side by side pass jobs=2)
# and keep their stage cache in the test's own folder: no test reuses another's files.
os.environ["BSCONV_EXPORT_JOBS"] = "1"
os.environ["BSCONV_EXPORT_STAGE_CACHE"] = _session_cache = tempfile.mkdtemp(prefix="bsconv-export-test-cache-")
atexit.register(shutil.rmtree, _session_cache, True)


@pytest.fixture(autouse=True)
def _own_stage_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("BSCONV_EXPORT_STAGE_CACHE", str(tmp_path_factory.mktemp("stage-cache")))


@pytest.fixture(scope="session")
def shipped():
    return load_checkpoint(DEFAULT_CHECKPOINT)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# Bundles of the shipped model that several test files read. Each is exported (and checked) once
# per run, by whichever worker asks first; the others wait on its lock and read the same folder.
# Tests copy a shared bundle before changing anything in it.
SHARED_BUNDLES = {
    # every default format (pt2, onnx, ort, coreml, pte), checked: test_export, test_program
    "every-format": dict(formats=None),
    # the formats the planted faults edit, checked: test_check, test_faults, test_vouch, test_hostile
    "onnx-ort-coreml": dict(formats=("onnx", "ort", "coreml")),
    # reduced precision (int8 on the uniform plan: the gates, not the plan, are under test): test_vouch
    "reduced": dict(formats=("onnx", "fp16", "int8"), int8_plan="uniform"),
}


@pytest.fixture(scope="session")
def shared_bundle(tmp_path_factory, shipped):
    from bsconv_export.exporter.export.run import export_bundle
    from bsconv_export.exporter.check.run import CheckOptions
    from bsconv_export.exporter.kit.options import ExportOptions

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent   # the run's folder, above every worker's own
    root = root / "shared"
    root.mkdir(exist_ok=True)

    def get(name: str) -> Path:
        folder = root / name
        out = folder / "bundle"
        with FileLock(str(folder) + ".lock"):
            if not (out / "manifest.json").is_file():
                folder.mkdir(exist_ok=True)
                r = export_bundle(shipped, out, ExportOptions(**{k: v for k, v in SHARED_BUNDLES[name].items() if v}),
                                  check=CheckOptions())
                assert r.ok, ([a.error for a in r.records], r.manifest.check and
                              [(c.artifact, c.runner, c.reason) for c in r.manifest.check.records])
        return out

    return get
