import numpy as np
import pytest

from cellops.metrics import binary_segmentation_scores


def test_hand_computed_case():
    truth = np.zeros((4, 4), bool)
    truth[:2, :2] = True  # 4 foreground pixels
    pred = np.zeros((4, 4), bool)
    pred[:2, :3] = True  # 6 predicted: TP 4, FP 2, FN 0, TN 10
    s = binary_segmentation_scores(pred, truth)
    assert s.foreground_iou == pytest.approx(4 / 6)
    assert s.dice == pytest.approx(8 / 10)
    assert s.background_iou == pytest.approx(10 / 12)
    assert s.mean_iou == pytest.approx((4 / 6 + 10 / 12) / 2)
    assert s.precision == pytest.approx(4 / 6) and s.recall == 1.0


def test_dice_and_iou_relation_holds_on_random_masks(rng):
    pred, truth = rng.random((2, 5, 32, 32)) > 0.6
    s = binary_segmentation_scores(pred, truth)
    assert s.dice == pytest.approx(2 * s.foreground_iou / (1 + s.foreground_iou))


def test_perfect_and_disjoint_and_empty():
    mask = np.eye(5, dtype=np.uint8) * 255
    assert binary_segmentation_scores(mask, mask).foreground_iou == 1.0
    assert binary_segmentation_scores(mask, 255 - mask).foreground_iou == 0.0
    empty = np.zeros((3, 3))
    assert binary_segmentation_scores(empty, empty).foreground_iou == 1.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        binary_segmentation_scores(np.zeros((2, 2)), np.zeros((2, 3)))
