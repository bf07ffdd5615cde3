import pytest
import torch

from models.unet import UNet


@pytest.mark.parametrize("depth,base,size", [(1, 4, 32), (3, 8, 64), (4, 8, 96)])
def test_output_has_input_resolution(depth, base, size):
    net = UNet(in_channels=1, out_channels=2, base_channels=base, depth=depth)
    out = net(torch.randn(2, 1, size, size))
    assert out.shape == (2, 2, size, size)


def test_channels_double_per_level():
    net = UNet(base_channels=4, depth=3)
    assert net.bottleneck[0].out_channels == 32
    assert net.size_divisor == 8


def test_indivisible_input_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="divisible by 16"):
        UNet(depth=4)(torch.zeros(1, 1, 40, 40))


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="depth"):
        UNet(depth=0)
