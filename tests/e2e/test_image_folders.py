"""A folder of the user's own images calibrates, checks and evaluates (``--calibration DIR``,
``check --data DIR``, ``evaluate --data DIR``): class subfolders named by the labels give accuracy, a
flat folder agreement only; images go through the app's pixel rule, PNG and JPEG alike."""
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from bsconv_export.cli import app
from bsconv_export.models.data import HOLDOUT_PATH, load_inputs
from bsconv_export.models.registry import InputSpec

runner = CliRunner()


def write_digits(folder, *, classes: bool, jpeg_every: int = 0):
    """The held-out digits as 8×8 grey images: in class subfolders (``0``…``9``) or flat; every
    ``jpeg_every``-th one a JPEG."""
    with np.load(HOLDOUT_PATH) as f:
        images, labels = f["images"], f["labels"]
    for i, (img, label) in enumerate(zip(images, labels)):
        where = folder / str(label) if classes else folder
        where.mkdir(parents=True, exist_ok=True)
        jpeg = jpeg_every and i % jpeg_every == 0
        pixels = np.round(img.astype(np.float64) * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels, "L").save(where / f"{i:03d}.{'jpg' if jpeg else 'png'}", quality=100)
    return labels


def test_a_class_folder_reads_as_the_shipped_digits_through_the_pixel_rule(tmp_path):
    labels = write_digits(tmp_path / "d", classes=True)
    spec = InputSpec(size=32, num_classes=10, labels=tuple("0123456789"))
    x, y = load_inputs(tmp_path / "d", spec)
    assert x.shape == (len(labels), 3, 32, 32) and sorted(y.tolist()) == sorted(labels.tolist())
    assert x.min() >= 0.0 and x.max() <= 1.0


def test_evaluate_and_check_on_a_folder_of_images(tmp_path, shared_bundle):
    write_digits(tmp_path / "d", classes=True, jpeg_every=7)
    r = runner.invoke(app, ["evaluate", "--data", str(tmp_path / "d"), "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert got["samples"] == 360 and got["top1"] > 0.97, got   # JPEG's loss costs a digit or two at most
    bundle = tmp_path / "b"
    import shutil
    shutil.copytree(shared_bundle("onnx-ort-coreml"), bundle)   # the folder is under test, not every runner
    r = runner.invoke(app, ["check", str(bundle), "--data", str(tmp_path / "d"), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["inputs"].startswith(str(tmp_path / "d")) and report["passed"]
    assert all(c["accuracy"] is not None for c in report["results"] if c["status"] == "ok")
    # a flat folder: agreement only; evaluate needs labels
    write_digits(tmp_path / "flat", classes=False)
    r = runner.invoke(app, ["check", str(bundle), "--data", str(tmp_path / "flat"), "--json"])
    assert r.exit_code == 0 and all(c["accuracy"] is None for c in json.loads(r.stdout)["results"])
    r = runner.invoke(app, ["evaluate", "--data", str(tmp_path / "flat")])
    assert r.exit_code == 2 and "has no labels" in r.output


@pytest.mark.slow
def test_an_int8_export_calibrates_on_a_folder_of_images(tmp_path):
    write_digits(tmp_path / "cal", classes=False, jpeg_every=3)
    r = runner.invoke(app, ["export", "--out", str(tmp_path / "b"), "--formats", "int8", "--calibration",
                            str(tmp_path / "cal"), "--json", "--jobs", "1"])
    assert r.exit_code == 0, r.output
    manifest = json.loads(r.stdout)
    int8 = next(a for a in manifest["artifacts"] if a["format"] == "int8")
    assert str(tmp_path / "cal") in json.dumps(int8["details"]) and manifest["verdict"] == "passed"
