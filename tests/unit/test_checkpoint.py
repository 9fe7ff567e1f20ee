import os
import pickle

import pytest
import torch

from bsconv_export.models import CheckpointError, UnknownModelError, UserInputError, create_model
from bsconv_export.models.checkpoint import load_checkpoint, save_checkpoint

ARCH = "cifar_mobilenetv1_w1d4_bsconvu"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    return create_model(ARCH, num_classes=5)


def _same(a, b):
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        return torch.equal(a(x), b(x))


@pytest.mark.parametrize("wrap", ["raw", "model_state_dict", "state_dict", "module_prefix"])
def test_accepts_the_common_state_dict_layouts(tmp_path, model, wrap):
    sd = model.state_dict()
    obj = {"raw": sd, "model_state_dict": {"model_state_dict": sd, "epoch": 3},
           "state_dict": {"state_dict": sd}, "module_prefix": {f"module.{k}": v for k, v in sd.items()}}[wrap]
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    loaded = load_checkpoint(path, arch=ARCH)
    assert loaded.arch == ARCH and loaded.input_spec.num_classes == 5 and len(loaded.sha256) == 64
    assert _same(loaded.model, model)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_project_format_round_trips_without_arch(tmp_path, model, suffix):
    path = save_checkpoint(model, tmp_path / f"m{suffix}")
    loaded = load_checkpoint(path)
    assert loaded.arch == ARCH and loaded.input_spec == model.input_spec
    assert _same(loaded.model, model)


def test_raw_safetensors_needs_arch(tmp_path, model):
    from safetensors.torch import save_file
    path = tmp_path / "raw.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    with pytest.raises(UserInputError, match="does not record its architecture; name it"):
        load_checkpoint(path)
    assert _same(load_checkpoint(path, arch=ARCH).model, model)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_refuses_a_pickle_that_would_run_code(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Evil()}, f)
    with pytest.raises(CheckpointError, match="(refused|not a PyTorch checkpoint)"):
        load_checkpoint(path, arch=ARCH)
    path2 = tmp_path / "evil2.pt"
    torch.save({"x": _Evil()}, path2)
    with pytest.raises(CheckpointError, match="refused, the pickle would run code"):
        load_checkpoint(path2, arch=ARCH)


def test_missing_and_unexpected_keys_are_named(tmp_path, model):
    sd = dict(model.state_dict())
    sd.pop("classifier.conv.bias")
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "k.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"1 missing keys \(classifier.conv.bias\); 1 unexpected keys \(extra.weight\)"):
        load_checkpoint(path, arch=ARCH)


def test_shape_mismatch_names_key_expected_and_found(tmp_path, model):
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"backbone.init_conv.conv.weight: expected \[16, 3, 3, 3\], found \[8, 3, 3, 3\]"):
        load_checkpoint(path, arch="cifar_mobilenetv1_w1d2_bsconvu")


def test_not_a_checkpoint_truncated_missing_and_unknown_arch(tmp_path, model):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"hello, not a checkpoint")
    with pytest.raises(CheckpointError, match="not"):
        load_checkpoint(junk, arch=ARCH)
    good = save_checkpoint(model, tmp_path / "good.pt")
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(trunc)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save(model.state_dict(), tmp_path / "raw.pt")
    with pytest.raises(UnknownModelError, match="did you mean"):
        load_checkpoint(tmp_path / "raw.pt", arch="cifar_mobilenetv1_w1d4_bsconvz")


def test_arch_contradicting_the_file_is_refused(tmp_path, model):
    path = save_checkpoint(model, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="was saved for"):
        load_checkpoint(path, arch="cifar_mobilenetv1_w1d4")


def test_shipped_model_is_small_and_accurate(shipped):
    from bsconv_export.models.data import load_holdout
    from bsconv_export.models.train import accuracy
    assert shipped.path.stat().st_size < 5e6
    x, y = load_holdout(shipped.input_spec.size)
    assert len(x) == 360
    assert accuracy(shipped.model, x, y) >= 0.95
    assert shipped.input_spec.labels == tuple(str(i) for i in range(10))
