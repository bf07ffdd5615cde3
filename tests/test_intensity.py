"""Per-image intensity normalisation (cellops.intensity): the same picture stored as 8-bit, 16-bit full range,
16-bit using 1 % of its range or float gives the same prediction in every family; a constant image is refused with a
message, never divided by zero; a volume read slab by slab is scaled exactly as read whole."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from cellops.intensity import Normalization, histogram_percentiles, integer_histogram, percentile_bounds
from cellops.io import ImageInputError

PERCENTILE = Normalization(mode="percentile", low=1.0, high=99.8)


def _versions(picture8: np.ndarray) -> dict[str, np.ndarray]:
    """One picture as a lab's files hold it: 8-bit, 16-bit full range, 16-bit using 1 % of its range, float."""
    return {"uint8": picture8,
            "uint16 full range": picture8.astype(np.uint16) * 257,
            "uint16 1 % of range": (picture8.astype(np.uint32) * 655 // 255).astype(np.uint16),
            "float": picture8.astype(np.float64) * 3.7 - 12.0}


@pytest.fixture(scope="module")
def picture8() -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    blobs = sum(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 40.0) for cy, cx in ((16, 20), (44, 40), (30, 52)))
    return np.clip(blobs * 200 + rng.normal(20, 5, (64, 64)), 0, 255).astype(np.uint8)


def test_percentiles_from_histograms_equal_numpys():
    values = np.random.default_rng(1).integers(0, 4096, 10_001).astype(np.uint16)
    expected = np.percentile(values, [0, 1, 37.5, 99.8, 100])
    assert np.allclose(histogram_percentiles(integer_histogram(values), [0, 1, 37.5, 99.8, 100]), expected)


def test_every_storage_of_one_picture_gives_the_same_input(picture8):
    inputs = {name: PERCENTILE.apply(version) for name, version in _versions(picture8).items()}
    # 1 % of the 16-bit range quantises differently from 8-bit (655 vs 255 levels): equal to that step only.
    for name, scaled in inputs.items():
        step = 1.0 / 255 if "1 %" in name else 1e-5
        assert np.abs(scaled - inputs["uint8"]).max() <= step, name
    # Dtype scaling is what left a 12-bit-in-16-bit picture almost black: its brightest pixel at 1 % of white.
    assert Normalization(mode="dtype").apply(_versions(picture8)["uint16 1 % of range"]).max() < 0.011


def test_a_constant_image_is_refused_and_a_sparse_one_falls_back_to_its_range():
    with pytest.raises(ImageInputError, match=r"flat.tif: constant image \(every pixel is 7\)"):
        PERCENTILE.apply(np.full((16, 16), 7, np.uint16), source="flat.tif")
    with pytest.raises(ImageInputError, match="constant image"):
        PERCENTILE.apply(np.full((16, 16), 0.5))
    sparse = np.zeros((64, 64), np.uint8)
    sparse[3, 3] = 200  # one bright pixel: both percentiles are 0
    assert percentile_bounds(sparse, 1.0, 99.8) == (0.0, 200.0)
    assert PERCENTILE.apply(sparse).max() == 1.0
    with pytest.raises(ValueError, match="mode must be one of"):
        Normalization(mode="zscore")
    with pytest.raises(ValueError, match="0 <= low < high <= 100"):
        Normalization(low=99.0, high=1.0)


def test_unet_masks_are_the_same_for_every_storage_and_a_constant_image_is_refused(picture8):
    from cellops.unet.predict import load_for_inference, segment
    from cellops.unet.specs import UNetServing
    from models.unet import UNet

    torch.manual_seed(0)
    model = load_for_inference(UNet(base_channels=4, depth=2))
    settings = UNetServing(tile_size=32, tile_overlap=0.25, batch_size=4, threshold=0.5,
                                 normalization=PERCENTILE)
    probabilities = {}
    from cellops.unet.predict import predict_probabilities

    for name, version in _versions(picture8).items():
        probabilities[name] = predict_probabilities(model, version, settings)
    reference = probabilities["uint8"]
    assert 0.01 < (reference > 0.5).mean() < 0.99 or reference.std() > 1e-4  # the network answers something
    for name, p in probabilities.items():
        tolerance = 0.02 if "1 %" in name else 1e-4
        assert np.abs(p - reference).max() < tolerance, name
    assert np.array_equal(segment(model, _versions(picture8)["uint16 full range"], settings),
                          segment(model, picture8, settings))
    with pytest.raises(ImageInputError, match="constant image"):
        segment(model, np.zeros((40, 40), np.uint16), settings)


def test_a_volume_read_slab_by_slab_is_scaled_as_read_whole(tmp_path):
    from cellops.unet.streaming import volume_bounds

    volume = np.random.default_rng(3).integers(0, 3000, (7, 20, 24)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "v.tif", volume)
    assert volume_bounds(tmp_path / "v.tif", PERCENTILE, slab=2) == PERCENTILE.bounds(volume)
    floats = volume.astype(np.float32) / 7.0
    tifffile.imwrite(tmp_path / "f.tif", floats)
    assert np.allclose(volume_bounds(tmp_path / "f.tif", PERCENTILE, slab=3), PERCENTILE.bounds(floats))


def test_classifier_probabilities_are_the_same_for_every_storage(picture8):
    from cellops.classifier.data import to_model_input
    from models.classifier import build_classifier

    torch.manual_seed(0)
    model = build_classifier("efficientcellnet", num_classes=2, in_channels=1).eval()
    colour = np.repeat(picture8[..., None], 3, axis=2)
    outputs = {}
    for name, version in {**_versions(picture8), "rgb": colour}.items():
        x = to_model_input(version, channels=1, size=48, normalization=PERCENTILE)
        with torch.no_grad():
            outputs[name] = torch.softmax(model(torch.from_numpy(x)[None]), 1).numpy()
    for name, p in outputs.items():
        assert np.abs(p - outputs["uint8"]).max() < (0.01 if "1 %" in name else 1e-4), name
    with pytest.raises(ImageInputError, match="upload.png: constant image"):
        to_model_input(np.full((20, 20), 9, np.uint8), channels=1, size=16, normalization=PERCENTILE,
                       source="upload.png")


def test_maskrcnn_instances_are_the_same_for_every_storage(picture8):
    from cellops.maskrcnn.predict import predict_image
    from cellops.maskrcnn.specs import MaskRCNNServing
    from models.maskrcnn import MaskRCNNSettings, build_maskrcnn

    torch.manual_seed(0)
    model = build_maskrcnn(MaskRCNNSettings(backbone="resnet18", fpn_channels=16, representation_size=32,
                                            mask_head_layers=1, anchor_sizes=(8, 16, 32, 64, 128), min_size=64,
                                            max_size=64, score_threshold=0.0, detections_per_image=20), 2).eval()
    settings = MaskRCNNServing(score_threshold=0.0, tile_size=64, tile_overlap=16, normalization=PERCENTILE)
    found = {name: predict_image(model, version, settings) for name, version in _versions(picture8).items()
             if "1 %" not in name}  # the 1 % version quantises to other levels: scores move in the 3rd digit
    reference = [(i.box, round(i.score, 3)) for i in found["uint8"]]
    assert reference  # a random network with threshold 0 reports detections
    for name, instances in found.items():
        assert [(i.box, round(i.score, 3)) for i in instances] == reference, name
    with pytest.raises(ImageInputError, match="constant image"):
        predict_image(model, np.full((64, 64), 3, np.uint8), settings)
