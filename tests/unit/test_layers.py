import math

import pytest
import torch
from torch import nn

from bsconv_export.models.layers import BSConvS, BSConvU, bsconv_s_mid_channels, orthonormality_penalty
from bsconv_export.models.profile import count_params
from bsconv_export.models.replace import replace_convs


def test_bsconvu_has_640_params_where_conv2d_has_2912():
    assert count_params(BSConvU(10, 32, 3)) == 640
    assert count_params(nn.Conv2d(10, 32, 3)) == 2912


def test_bsconvu_structure_and_shape():
    m = BSConvU(10, 32, 3, stride=2, padding=1, with_bn=True)
    assert [n for n, _ in m.named_children()] == ["pw", "bn", "dw"]
    assert m.pw.bias is None and m.dw.groups == 32
    assert m(torch.randn(2, 10, 16, 16)).shape == (2, 32, 8, 8)


@pytest.mark.parametrize("cin,p,expected", [(10, 0.25, 4), (64, 0.25, 16), (3, 0.25, 3), (96, 1 / 6, 16)])
def test_bsconvs_mid_channels(cin, p, expected):
    assert bsconv_s_mid_channels(cin, p, 4) == expected == min(cin, max(4, math.ceil(p * cin)))
    m = BSConvS(cin, 32, 3, p=p, with_bn=True)
    assert [n for n, _ in m.named_children()] == ["pw1", "bn1", "pw2", "bn2", "dw"]
    assert m.pw1.out_channels == expected


def test_bsconvs_rejects_bad_p():
    with pytest.raises(ValueError, match="p must lie"):
        BSConvS(8, 8, 3, p=1.5)


def test_orthonormality_penalty_is_zero_for_orthonormal_rows_and_positive_otherwise():
    q, _ = torch.linalg.qr(torch.randn(16, 4))
    w = q.t().reshape(4, 16, 1, 1)
    assert orthonormality_penalty(w).item() == pytest.approx(0.0, abs=1e-5)
    assert orthonormality_penalty(2 * w).item() == pytest.approx(math.sqrt(4 * 9), rel=1e-4)


def test_replacer_swaps_plain_convs_only_and_reports_params():
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16),
                        nn.Conv2d(16, 32, 5, padding=2), nn.Conv2d(32, 8, 1))
    x = torch.randn(1, 3, 12, 12)
    report = replace_convs(net, kind="bsconvu", kernel_sizes=(3, 5))
    assert report.replaced == ["0", "3"]
    assert isinstance(net[0], BSConvU) and isinstance(net[3], BSConvU)
    assert isinstance(net[2], nn.Conv2d) and isinstance(net[4], nn.Conv2d)
    assert report.params_after == count_params(net) < report.params_before
    assert net(x).shape == (1, 8, 12, 12)


def test_replacer_bsconvs_and_kernel_filter():
    net = nn.Sequential(nn.Conv2d(32, 32, 3), nn.Conv2d(32, 32, 7))
    report = replace_convs(net, kind="bsconvs", kernel_sizes=(7,), p=0.25)
    assert report.replaced == ["1"] and isinstance(net[1], BSConvS) and net[1].pw1.out_channels == 8
    with pytest.raises(ValueError):
        replace_convs(net, kind="bsconvx")
