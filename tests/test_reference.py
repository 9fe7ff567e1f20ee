"""Differential tests against the reference implementation, bsconv 0.4.0."""
import pytest
import torch

bsconv_pytorch = pytest.importorskip("bsconv.pytorch")

from bsconv_export.models import create_model, get_entry, list_models  # noqa: E402
from bsconv_export.models.profile import count_params  # noqa: E402

REFERENCE_NAMES = [n for n in list_models() if get_entry(n).in_reference]


def test_reference_offers_exactly_our_reference_names():
    assert len(REFERENCE_NAMES) == 64
    for name in REFERENCE_NAMES:
        bsconv_pytorch.get_model(name, num_classes=10)  # raises if the reference lacks it


@pytest.mark.parametrize("name", REFERENCE_NAMES)
def test_same_keys_shapes_params_and_outputs(name):
    ours = create_model(name, num_classes=10)
    ref = bsconv_pytorch.get_model(name, num_classes=10).eval()
    sd_ours, sd_ref = ours.state_dict(), ref.state_dict()
    assert list(sd_ours) == list(sd_ref)
    assert all(sd_ours[k].shape == sd_ref[k].shape for k in sd_ref)
    assert count_params(ours) == count_params(ref)
    # Give BN statistics non-trivial values so the comparison exercises them.
    with torch.no_grad():
        for k, v in sd_ref.items():
            if k.endswith("running_var"):
                v.uniform_(0.5, 2.0)
            elif k.endswith("running_mean"):
                v.uniform_(-0.2, 0.2)
    ours.load_state_dict(sd_ref, strict=True)
    size = 32 if name.startswith("cifar_") else 96
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        a, b = ours(x), ref(x)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    if hasattr(ref, "reg_loss"):
        torch.testing.assert_close(ours.reg_loss(0.1), torch.as_tensor(ref.reg_loss(0.1)), atol=1e-5, rtol=1e-6)
