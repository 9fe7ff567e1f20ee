"""The .pte int8 recipe's activation observer: ExecuTorch's default, or the plain range, nothing else."""
import pytest

pytest.importorskip("executorch", reason="executorch is not installed: the .pte int8 recipe cannot be built")


def test_the_recipe_observes_activations_as_asked_and_keeps_per_channel_weights():
    from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver, PerChannelMinMaxObserver
    from bsconv_export.exporter.formats.executorch.export import xnnpack_quantization_config

    def observer(spec):
        return spec.observer_or_fake_quant_ctr.p.func    # the class behind .with_args(...)

    default = xnnpack_quantization_config()
    assert observer(default.input_activation) is HistogramObserver
    plain = xnnpack_quantization_config("minmax")
    assert observer(plain.input_activation) is MinMaxObserver and observer(plain.output_activation) is MinMaxObserver
    assert plain.input_activation.qscheme == default.input_activation.qscheme      # still per tensor, int8
    assert observer(plain.weight) is PerChannelMinMaxObserver                       # weights unchanged
    with pytest.raises(ValueError, match="unknown activation observer"):
        xnnpack_quantization_config("percentile")
