import pytest
import torch

from bsconv_export.models import UnknownModelError, create_model, get_entry, list_models, register_model
from bsconv_export.models.layers import BSConvS, BSConvU
from bsconv_export.models.mobilenet import BSConvUBottleneck, LinearBottleneck

from zoo_sample import representative

SAMPLE = set(representative())


def sweep(names):
    """Every MobileNet, and one ResNet of each family and variant; make test-zoo builds them all."""
    return [n if "mobilenet" in n or n in SAMPLE else pytest.param(n, marks=pytest.mark.zoo) for n in names]


def test_zoo_has_every_family_width_variant_and_flavour():
    names = list_models()
    assert len(names) == 96 + 102 and len(set(names)) == len(names)
    assert "mobilenetv1_w1_bsconvu" in names and "cifar_mobilenetv3_large_w7d20_bsconvs_p1d6" in names
    assert {"resnet18_bsconvs_p1d6", "cifar_preresnet602", "cifar_wrn40_10_bsconvu"} <= set(names)
    assert sum(get_entry(n).in_reference for n in names) == 64 + 102


def test_duplicate_registration_is_an_error():
    with pytest.raises(ValueError, match="registered twice"):
        register_model("mobilenetv1_w1", family="x", default_size=1, default_num_classes=1,
                       in_reference=False)(lambda **kw: None)


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UnknownModelError, match="did you mean mobilenetv2_w1_bsconvs_p1d6"):
        create_model("mobilenetv2_w1_bsconvs_p1d7")


@pytest.mark.parametrize("name", sweep(list_models("cifar_*")))
def test_every_cifar_model_builds_and_runs(name):
    m = create_model(name, num_classes=7)
    assert m.input_spec.size == 32 and m.input_spec.num_classes == 7
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        feats = m.forward_features(x)
        assert feats.shape[0] == 2 and feats.shape[2:] == (1, 1)
        # NaN-equal: a 600-layer plain ResNet with the reference's init and identity BatchNorm
        # statistics overflows (as the reference's does) until it is trained
        torch.testing.assert_close(m.forward_head(feats), m(x), rtol=0, atol=0, equal_nan=True)
    assert m(x).shape == (2, 7)


@pytest.mark.parametrize("name", sweep([n for n in list_models() if not n.startswith("cifar_")]))
def test_every_imagenet_model_builds_with_1000_classes(name):
    m = create_model(name)
    assert m.input_spec.size == 224 and m.total_stride == 32
    with torch.no_grad():
        assert m(torch.rand(1, 3, 64, 64)).shape == (1, 1000)


def test_added_variants_are_built_as_documented():
    v1s = create_model("mobilenetv1_w1_bsconvs_p1d6")
    assert isinstance(v1s.backbone.stage2.unit1[0], BSConvS)
    assert v1s.backbone.stage2.unit1[0].pw1.out_channels == 11  # ceil(64 / 6)
    assert v1s.reg_loss().item() > 0
    v2u = create_model("mobilenetv2_w1_bsconvu")
    unit = v2u.backbone.stage2.unit1
    assert isinstance(unit, BSConvUBottleneck) and isinstance(unit.bsconv, BSConvU)
    assert "backbone.stage2.unit1.bsconv.pw.weight" in v2u.state_dict()
    assert v2u.reg_loss().item() == 0
    v2s = create_model("mobilenetv2_w1_bsconvs_p1d6")
    assert isinstance(v2s.backbone.stage2.unit1, LinearBottleneck) and v2s.reg_loss().item() > 0
    assert create_model("mobilenetv2_w1").reg_loss().item() == 0
