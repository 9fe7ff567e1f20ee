import pytest
import torch

from bsconv_export.models import create_model
from bsconv_export.models.profile import profile_model
from bsconv_export.models.train import TrainConfig, train_digits


def test_macs_match_a_hand_count_for_bsconvu_v1():
    m = create_model("cifar_mobilenetv1_w1d4_bsconvu")
    prof = profile_model(m)
    init = next(layer for layer in prof.layers if layer.name == "backbone.init_conv.conv")
    assert init.macs == 32 * 32 * 8 * 3 * 9 and init.params == 8 * 3 * 9
    pw = next(layer for layer in prof.layers if layer.name == "backbone.stage1.unit1.0.pw")
    dw = next(layer for layer in prof.layers if layer.name == "backbone.stage1.unit1.0.dw")
    assert pw.macs == 32 * 32 * 16 * 8 and dw.macs == 32 * 32 * 16 * 9
    assert prof.params == sum(p.numel() for p in m.parameters())
    assert prof.macs == sum(layer.macs for layer in prof.layers)


def test_profile_scales_with_input_size():
    m = create_model("mobilenetv2_w1d2_bsconvs_p1d6")
    assert profile_model(m, 448).macs > 3.9 * profile_model(m, 224).macs


@pytest.mark.slow
def test_training_is_seeded_and_reproducible():
    # one thread: make test runs one pytest worker per core, two threads each would contend
    cfg = TrainConfig(arch="cifar_mobilenetv1_w1d4_bsconvu", epochs=1, batch_size=128, threads=1)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        a, ra = train_digits(cfg)
        assert torch.get_num_threads() == 3   # the caller's thread count is restored
    finally:
        torch.set_num_threads(before)
    b, rb = train_digits(cfg)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert ra.history == rb.history
    # the reported accuracy is the model's on the shipped held-out digits, counted again here
    from bsconv_export.models.data import load_holdout
    x, y = load_holdout(32)
    with torch.no_grad():
        hits = int((a.eval()(torch.from_numpy(x)).argmax(1).numpy() == y).sum())
    assert ra.holdout_accuracy == hits / len(y) == ra.history[-1]["holdout_accuracy"]

