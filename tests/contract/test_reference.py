"""Differential tests against the reference implementation, bsconv 0.4.0 (get_model raises
for a name it lacks, so building each name here also proves the reference offers it)."""
import pytest
import torch

bsconv_pytorch = pytest.importorskip("bsconv.pytorch")

from bsconv_export.models import create_model, get_entry, list_models  # noqa: E402
from bsconv_export.models.profile import count_params  # noqa: E402

from zoo_sample import representative  # noqa: E402

REFERENCE_NAMES = [n for n in list_models() if get_entry(n).in_reference]
SAMPLE = set(representative())


def sweep(names):
    """make test compares one name of every family and variant; make test-zoo compares all of them."""
    return [n if n in SAMPLE else pytest.param(n, marks=pytest.mark.zoo) for n in names]


def fitted_statistics(model, size: int) -> None:
    """BatchNorm statistics from a batch of inputs: non-trivial, and they keep a 600-layer
    plain ResNet's activations finite (the seeded init alone overflows it)."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, size, size, generator=torch.Generator().manual_seed(1)))
    model.eval()


def test_reference_offers_exactly_our_reference_names():
    assert len(REFERENCE_NAMES) == 64 + 102   # MobileNets, then ResNets, pre-ResNets and WRNs


@pytest.mark.parametrize("name", sweep(REFERENCE_NAMES))
def test_same_keys_shapes_params_and_outputs(name):
    ours = create_model(name, num_classes=10)
    ref = bsconv_pytorch.get_model(name, num_classes=10).eval()
    sd_ours, sd_ref = ours.state_dict(), ref.state_dict()
    assert list(sd_ours) == list(sd_ref)
    assert all(sd_ours[k].shape == sd_ref[k].shape for k in sd_ref)
    assert count_params(ours) == count_params(ref)
    size = 32 if name.startswith("cifar_") else 96
    fitted_statistics(ref, size)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        a, b = ours(x), ref(x)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    if hasattr(ref, "reg_loss"):
        torch.testing.assert_close(ours.reg_loss(0.1), torch.as_tensor(ref.reg_loss(0.1)), atol=1e-5, rtol=1e-6)
