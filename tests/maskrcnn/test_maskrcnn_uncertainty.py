"""Mask R-CNN uncertainty from test-time flips and quarter turns: instances brought back from every view exactly, a
flip-equivariant model sure of every instance, an instance only some views see less sure than one all see, extra
detections raising the image's uncertainty, empty everywhere sure, the served instances unchanged, and the
per-instance column of the batch table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

from cellops.io import encode_image
from cellops.maskrcnn.files import segment_image_to_files
from cellops.maskrcnn.predict import (Instance, crop_instance, instances_back, predict_image, predict_with_uncertainty,
                                      tta_uncertainty)
from cellops.maskrcnn.specs import MaskRCNNServing
from cellops.uncertainty import DIHEDRAL

SETTINGS = MaskRCNNServing(score_threshold=0.5, tile_size=64, tile_overlap=16, normalization={"mode": "dtype"})


class BlobModel(torch.nn.Module):
    """Stands in for a torchvision Mask R-CNN: every bright connected blob of the picture is an instance (score
    0.9): the same whatever way up the picture is. With ``left_only``, blobs whose centre lies in the left half
    of what it is shown score 0.9 and the others 0.6 (a model that depends on where things are, so the views
    disagree on scores); with ``hide_top_left``, blobs in the top-left quarter of what it is shown are missed."""

    def __init__(self, *, left_only: bool = False, hide_top_left: bool = False) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))  # so that the model has a device
        self.left_only, self.hide_top_left = left_only, hide_top_left

    def forward(self, images: list[torch.Tensor]) -> list[dict]:
        picture = images[0][0].numpy()
        labels, n = ndimage.label(picture > 0.5)  # dtype normalisation: 230 of 255 is bright, 20 is not
        masks, scores = [], []
        height, width = picture.shape
        for i in range(1, n + 1):
            ys, xs = np.nonzero(labels == i)
            if self.hide_top_left and ys.mean() < height / 2 and xs.mean() < width / 2:
                continue
            masks.append(labels == i)
            scores.append(0.9 if not self.left_only or xs.mean() < width / 2 else 0.6)
        masks = torch.from_numpy(np.array(masks, np.float32).reshape(-1, 1, height, width))
        return [{"masks": masks, "labels": torch.ones(len(scores), dtype=torch.int64),
                 "scores": torch.tensor(scores, dtype=torch.float32)}]


def _picture() -> np.ndarray:
    image = np.full((64, 64), 20, np.uint8)
    image[8:20, 6:16] = 230  # top left
    image[40:52, 44:58] = 230  # bottom right
    image[36:46, 8:18] = 230  # bottom left
    return image


def test_instances_come_back_from_every_view_exactly():
    rng = np.random.default_rng(0)
    full = np.zeros((30, 44), bool)
    full[5:12, 20:31] = rng.random((7, 11)) > 0.3
    original = crop_instance(full, 2, 0.7)
    for view in DIHEDRAL:
        seen = np.ascontiguousarray(view.apply(full))
        [back] = instances_back([crop_instance(seen, 2, 0.7)], view, seen.shape)
        np.testing.assert_array_equal(back.full_mask(full.shape), full)
        assert (back.box, back.category, back.score) == (original.box, 2, 0.7)


def test_a_model_right_under_every_flip_is_sure_of_every_instance():
    instances, uncertainty = predict_with_uncertainty(BlobModel(), _picture(), SETTINGS)
    assert len(instances) == 3 and uncertainty.method == "flip-tta"
    assert uncertainty.image == pytest.approx(0.0) and uncertainty.per_object == pytest.approx((0.0, 0.0, 0.0))
    assert [(i.box, i.score) for i in instances] == [(i.box, i.score) for i in predict_image(BlobModel(), _picture(),
                                                                                                SETTINGS)]


def test_an_instance_some_views_miss_is_less_sure_and_per_object_follows_the_instances():
    model = BlobModel(hide_top_left=True)
    instances, uncertainty = predict_with_uncertainty(model, _picture(), SETTINGS)
    assert len(uncertainty.per_object) == len(instances) == 2  # the top-left blob is missed in the served view
    by_box = {i.box: u for i, u in zip(instances, uncertainty.per_object)}
    # Each blob is turned into the top-left quarter (and missed) by two of the eight views; the agreement is
    # averaged over the seven augmented views.
    assert by_box[(44, 40, 58, 52)] == by_box[(8, 36, 18, 46)] == pytest.approx(2 / 7)
    # The top-left blob, which the served view misses and other views find, is disagreement on what exists.
    assert uncertainty.image > max(uncertainty.per_object) / 2
    _, sure = predict_with_uncertainty(BlobModel(), _picture(), SETTINGS)
    assert uncertainty.image > sure.image


def test_score_spread_raises_an_instance_uncertainty():
    _, uncertainty = predict_with_uncertainty(BlobModel(left_only=True), _picture(), SETTINGS)
    assert all(0.0 < u < 0.5 for u in uncertainty.per_object)  # same masks everywhere, scores 0.9 or 0.6


def test_empty_on_every_view_is_sure_and_extra_detections_are_not():
    assert tta_uncertainty([], [[] for _ in range(7)]).image == 0.0
    dim = np.full((64, 64), 20, np.uint8) + np.eye(64, dtype=np.uint8)  # nothing bright: no instance in any view
    instances, uncertainty = predict_with_uncertainty(BlobModel(hide_top_left=True), dim, SETTINGS)
    assert instances == [] and uncertainty.per_object == () and uncertainty.image == 0.0
    a = Instance(0, 0, np.ones((4, 4), bool), 1, 0.9)
    assert tta_uncertainty([], [[a]] + [[] for _ in range(6)]).image == pytest.approx(1 / 7)
    assert tta_uncertainty([a], [[a, a.shifted(10, 10)]]).image == pytest.approx(1 - 2 / 3)
    other_category = Instance(0, 0, np.ones((4, 4), bool), 2, 0.9)
    assert tta_uncertainty([a], [[other_category]]).per_object == (1.0,)  # never matched across categories


def test_the_batch_table_gets_a_column_per_instance(tmp_path):
    path = tmp_path / "colonies.png"
    path.write_bytes(encode_image(_picture(), "png"))
    plain = segment_image_to_files(BlobModel(hide_top_left=True), path, tmp_path, "plain", SETTINGS)
    assert "uncertainty" not in plain and "uncertainty" not in pd.read_csv(tmp_path / "plain_instances.csv")
    measured = segment_image_to_files(BlobModel(hide_top_left=True), path, tmp_path, "m", SETTINGS, uncertainty=True)
    table = pd.read_csv(tmp_path / "m_instances.csv")
    assert measured["uncertainty_method"] == "flip-tta" and 0.0 < measured["uncertainty"] <= 1.0
    assert len(table) == measured["instances"] == 2 and table["uncertainty"].between(0, 1).all()
    assert table["uncertainty"].gt(0).all()


def test_a_real_tiny_model_serves_the_same_instances_with_uncertainty():
    from models.maskrcnn import MaskRCNNSettings, build_maskrcnn

    tiny = MaskRCNNSettings(backbone="resnet18", fpn_channels=16, representation_size=32, mask_head_layers=1,
                            min_size=64, max_size=64, anchor_sizes=(8, 16, 32, 64, 128), rpn_post_nms_train=50,
                            rpn_post_nms_test=50, box_batch_size_per_image=32)
    torch.manual_seed(0)
    model = build_maskrcnn(tiny, 2).eval()
    settings = MaskRCNNServing(score_threshold=0.0, tile_size=64, tile_overlap=16)
    image = (np.random.default_rng(1).random((48, 64)) * 255).astype(np.uint8)
    instances, uncertainty = predict_with_uncertainty(model, image, settings)
    expected = predict_image(model, image, settings)
    assert [(i.box, i.score) for i in instances] == [(i.box, i.score) for i in expected]
    assert len(uncertainty.per_object) == len(instances) and 0.0 <= uncertainty.image <= 1.0
