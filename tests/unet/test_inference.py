import numpy as np
import pytest
import torch

from cellops.inference import gaussian_weight_map, plan_tiles, sliding_window_predict
from cellops.tiling import tile_starts
from models.unet import UNet


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = UNet(base_channels=4, depth=2).eval()
    # Give batch-norm non-trivial running statistics so eval mode is really exercised.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model


def test_equals_whole_image_inference_where_the_image_fits_one_tile(net, rng):
    image = rng.random((64, 64), dtype=np.float32)
    with torch.inference_mode():
        whole = torch.sigmoid(net(torch.from_numpy(image)[None, None]))[0, 0].numpy()
    tiled = sliding_window_predict(net, image, tile_size=64, overlap=32)
    np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-6)


def test_blending_is_exact_for_a_pointwise_model(rng):
    pointwise = torch.nn.Conv2d(1, 1, 1)
    torch.nn.init.constant_(pointwise.weight, 2.0)
    torch.nn.init.constant_(pointwise.bias, -1.0)
    image = rng.random((3, 100, 130), dtype=np.float32)
    out = sliding_window_predict(pointwise, image, tile_size=32, overlap=13, batch_size=5)
    np.testing.assert_allclose(out, 1 / (1 + np.exp(-(2 * image - 1))), rtol=1e-5, atol=1e-6)


def test_stack_equals_slice_by_slice(net, rng):
    stack = rng.random((3, 80, 72), dtype=np.float32)
    together = sliding_window_predict(net, stack, tile_size=32, overlap=8, batch_size=7)
    apart = np.stack([sliding_window_predict(net, s, tile_size=32, overlap=8, batch_size=1) for s in stack])
    np.testing.assert_allclose(together, apart, rtol=1e-5, atol=1e-6)


def test_images_smaller_than_a_tile_are_padded_and_cropped_back(net, rng):
    out = sliding_window_predict(net, rng.random((20, 50), dtype=np.float32), tile_size=64)
    assert out.shape == (20, 50) and np.all((out >= 0) & (out <= 1))


def test_tiles_cover_every_pixel():
    starts = tile_starts(1000, 128, 32)
    assert starts[0] == 0 and starts[-1] == 1000 - 128
    assert all(b - a <= 96 for a, b in zip(starts, starts[1:]))
    plan = plan_tiles(300, 200, 64, 16, gaussian_weight_map(64))
    assert plan.normaliser.min() > 0


@pytest.mark.parametrize("kwargs,match", [({"overlap": 64}, "overlap"), ({"overlap": 0.25}, "whole number of pixels"),
                                          ({"batch_size": 0}, "batch_size")])
def test_bad_settings_are_refused(net, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sliding_window_predict(net, np.zeros((64, 64), np.float32), tile_size=64, **kwargs)


def test_four_dimensional_input_is_refused(net):
    with pytest.raises(ValueError, match="2-D image or 3-D stack"):
        sliding_window_predict(net, np.zeros((1, 1, 64, 64), np.float32))


def test_prepared_model_computes_the_same_function(net, rng):
    from cellops.inference import prepare_for_inference

    fast = prepare_for_inference(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # original untouched
    image = rng.random((2, 96, 80), dtype=np.float32)
    np.testing.assert_allclose(
        sliding_window_predict(fast, image, tile_size=32), sliding_window_predict(net, image, tile_size=32), atol=1e-5
    )
