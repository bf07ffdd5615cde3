import time
import warnings

import numpy as np
import pytest

from cellops.metrics import (binary_segmentation_scores, bootstrap_interval, per_slice_overlap, pooled_f1,
                             pooled_foreground_iou, pooled_sensitivity)


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


# --- per-unit counts and bootstrap intervals -----------------------------------------------------------------------

def test_per_slice_overlap_pools_to_the_volume_iou(rng):
    pred, truth = rng.random((2, 6, 16, 16)) > 0.6
    truth[2] = pred[2] = False  # an empty slice weighs nothing
    intersection, union = per_slice_overlap(pred, truth)
    assert (intersection[2], union[2]) == (0, 0) and len(union) == 6
    assert pooled_foreground_iou(intersection, union) == pytest.approx(
        binary_segmentation_scores(pred, truth).foreground_iou)
    with pytest.raises(ValueError, match="shape"):
        per_slice_overlap(pred, truth[:3])


def test_pooled_statistics_on_empty_units_and_along_an_axis():
    assert pooled_foreground_iou(np.zeros(3), np.zeros(3)) == 1.0
    assert pooled_f1(np.zeros(2), np.zeros(2), np.zeros(2)) == 0.0
    assert np.isnan(pooled_sensitivity(np.zeros(2), np.zeros(2)))
    rows = pooled_foreground_iou(np.array([[1, 1], [0, 0]]), np.array([[2, 2], [0, 0]]), axis=-1)
    assert rows.tolist() == [0.5, 1.0]


def _units(rng, n):
    union = rng.integers(50, 150, n)
    return (union * rng.beta(8, 2, n)).astype(int), union


def test_interval_contains_the_estimate_and_narrows_with_more_units(rng):
    few = bootstrap_interval(pooled_foreground_iou, *_units(rng, 15))
    many = bootstrap_interval(pooled_foreground_iou, *_units(rng, 600))
    for ci in (few, many):
        assert ci.low < ci.estimate < ci.high and ci.method == "percentile" and ci.confidence == 0.95
    assert (many.high - many.low) < 0.5 * (few.high - few.low)
    assert (few.n_units, many.n_units) == (15, 600)
    assert 0.7 < many.estimate < 0.9


def test_interval_is_reproducible_with_its_seed_and_fast(rng):
    tp, detections, truth = rng.integers(0, 5, 200), rng.integers(3, 8, 200), rng.integers(3, 8, 200)
    start = time.perf_counter()
    first = bootstrap_interval(pooled_f1, tp, detections, truth, seed=3)
    assert time.perf_counter() - start < 2.0
    assert bootstrap_interval(pooled_f1, tp, detections, truth, seed=3) == first
    assert bootstrap_interval(pooled_f1, tp, detections, truth, seed=4) != first
    assert first.estimate == pytest.approx(2 * tp.sum() / (detections.sum() + truth.sum()))
    # A statistic without ``axis`` is called once per resample on the same resamples: the same interval.
    one_by_one = bootstrap_interval(lambda a, b, c: pooled_f1(a, b, c), tp, detections, truth, seed=3)
    assert one_by_one == first
    narrower = bootstrap_interval(pooled_f1, tp, detections, truth, seed=3, confidence=0.5)
    assert first.low < narrower.low < narrower.high < first.high


def test_degenerate_data_gives_a_point_interval_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        single = bootstrap_interval(pooled_foreground_iou, np.array([3]), np.array([4]))
        alike = bootstrap_interval(pooled_foreground_iou, np.full(10, 3), np.full(10, 4))
        perfect = bootstrap_interval(pooled_foreground_iou, np.arange(1, 9), np.arange(1, 9))  # units differ
    assert (single.low, single.high, single.estimate, single.n_units) == (0.75, 0.75, 0.75, 1)
    assert (alike.low, alike.high, alike.estimate) == (0.75, 0.75, 0.75) and alike.method == "degenerate"
    assert (perfect.low, perfect.high, perfect.estimate) == (1.0, 1.0, 1.0)


def test_sensitivity_interval_leaves_out_resamples_without_a_positive():
    detected = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    positive = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ci = bootstrap_interval(pooled_sensitivity, detected, positive)
    assert ci.estimate == pytest.approx(2 / 3)
    assert 0.0 <= ci.low <= ci.estimate <= ci.high <= 1.0
    assert "undefined" in ci.method  # about 0.7 ** 10 of resamples draw no positive image


def test_interval_errors_name_the_problem():
    with pytest.raises(ValueError, match="one length"):
        bootstrap_interval(pooled_foreground_iou, np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="one length"):
        bootstrap_interval(pooled_foreground_iou, np.ones((3, 2)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="at least one unit"):
        bootstrap_interval(pooled_foreground_iou, np.ones(0), np.ones(0))
    with pytest.raises(ValueError, match="per-unit array"):
        bootstrap_interval(pooled_foreground_iou)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_interval(pooled_foreground_iou, np.ones(3), np.ones(3), confidence=95)


def test_a_proportion_at_one_keeps_the_width_of_its_sample_size():
    from cellops.metrics import bootstrap_interval, pooled_sensitivity, proportion_interval

    found = np.ones(60)  # 60 positives, all found
    assert bootstrap_interval(pooled_sensitivity, found, found).low == 1.0  # the bootstrap cannot show it
    wilson = proportion_interval(60, 60)
    assert 0.93 < wilson.low < 0.95 and wilson.high == 1.0 and wilson.n_units == 60
    assert proportion_interval(6, 6).low < wilson.low  # fewer positives, less certainty
    with pytest.raises(ValueError, match="successes <= trials"):
        proportion_interval(7, 6)
