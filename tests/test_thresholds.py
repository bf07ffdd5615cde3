"""Thresholds chosen on validation data: each chooser finds the known answer on constructed data, breaks ties
towards 0.5, and reads its curve off one pass of counts that equals the direct computation at every candidate."""

import json

import numpy as np
import pytest

from cellops.classifier.metrics import classification_scores
from cellops.coco import to_rle
from cellops.maskrcnn.evaluation import match_detections, match_f1
from cellops.metrics import binary_segmentation_scores, pooled_f1
from cellops.thresholds import (PROBABILITY_CANDIDATES, ThresholdChoice, choose_operating_point,
                                choose_probability_threshold, choose_score_threshold, foreground_iou_curve)

# --- U-Net: probability threshold ----------------------------------------------------------------------------------


def test_probability_threshold_is_the_only_one_that_separates():
    # Background at 0.66, foreground from exactly 0.7 (in float32, as the U-Net writes it): only 0.7 is perfect.
    truth = np.zeros((2, 8, 8), bool)
    truth[:, 2:5, 2:6] = True
    probabilities = np.where(truth, np.float32(0.7), np.float32(0.66)).astype(np.float32)
    probabilities[0, 3, 3] = 0.99
    probabilities[1, 0, :] = 0.1
    choice = choose_probability_threshold(probabilities, truth)
    assert (choice.value, choice.metric, choice.metric_value) == (0.7, "foreground_iou", 1.0)
    assert [c for c, m in choice.curve if m == 1.0] == [0.7]
    assert binary_segmentation_scores(probabilities >= choice.value, truth).foreground_iou == 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_histogram_iou_equals_direct_computation_at_every_candidate(rng, dtype):
    truth = rng.random((3, 40, 50)) < 0.3
    probabilities = np.clip(0.35 * truth + rng.random(truth.shape), 0, 1).astype(dtype)
    # Values exactly on candidates are where a quantised histogram would go wrong.
    probabilities.flat[:: 7] = rng.choice(PROBABILITY_CANDIDATES, size=probabilities.flat[:: 7].shape)
    candidates, iou = foreground_iou_curve(probabilities, truth)
    assert candidates.tolist() == PROBABILITY_CANDIDATES.tolist()
    direct = [binary_segmentation_scores(probabilities >= float(t), truth).foreground_iou for t in candidates]
    assert iou.tolist() == direct
    choice = choose_probability_threshold(probabilities, truth)
    assert choice.metric_value == max(direct) and [m for _, m in choice.curve] == direct


def test_empty_truth_and_empty_prediction_count_as_perfect():
    _, iou = foreground_iou_curve(np.full((4, 4), 0.01), np.zeros((4, 4), bool), candidates=[0.5, 0.005])
    assert iou.tolist() == [0.0, 1.0]  # at 0.005 every pixel is a false positive; at 0.5 none is predicted


def test_probability_ties_go_to_the_candidate_closest_to_one_half():
    truth = np.array([0, 0, 1, 1], bool)
    assert choose_probability_threshold(np.array([0.1, 0.2, 0.9, 0.95]), truth).value == 0.5  # 0.25..0.9 perfect
    assert choose_probability_threshold(np.array([0.1, 0.62, 0.9, 0.95]), truth).value == 0.65  # 0.65..0.9
    assert choose_probability_threshold(np.array([0.1, 0.2, 0.3, 0.35]), truth).value == 0.3  # 0.25 and 0.3
    # 0.45 and 0.55 equally close and equally good: the lower one.
    equal = choose_probability_threshold(np.array([0.1, 0.2, 0.9, 0.95]), truth, candidates=[0.55, 0.45])
    assert equal.value == 0.45


def test_probability_threshold_errors_name_the_problem():
    with pytest.raises(ValueError, match="shape"):
        choose_probability_threshold(np.zeros((2, 3)), np.zeros((3, 2), bool))
    with pytest.raises(ValueError, match="empty"):
        choose_probability_threshold(np.zeros(0), np.zeros(0, bool))
    with pytest.raises(ValueError, match="NaN"):
        choose_probability_threshold(np.array([0.2, np.nan]), np.array([0, 1], bool))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        choose_probability_threshold(np.array([0.2, 0.8]), np.array([0, 1], bool), candidates=[0.5, 1.5])
    with pytest.raises(ValueError, match="non-empty"):
        choose_probability_threshold(np.array([0.2, 0.8]), np.array([0, 1], bool), candidates=[])


def test_threshold_choice_round_trips_through_json():
    choice = choose_probability_threshold(np.array([0.1, 0.62, 0.75, 0.9]), np.array([0, 0, 1, 1], bool))
    assert ThresholdChoice.from_dict(json.loads(json.dumps(choice.as_dict()))) == choice
    assert len(choice.as_dict()["curve"]) == 19


# --- Mask R-CNN: score threshold -----------------------------------------------------------------------------------


def _square(x, y, side):
    return [[x, y, x + side, y, x + side, y + side, x, y + side]]


def _det(image_id, score, segmentation, category=1):
    return {"image_id": image_id, "category_id": category, "score": score, "segmentation": segmentation}


GT = {"images": [{"id": 1, "height": 100, "width": 100}, {"id": 2, "height": 100, "width": 100},
                 {"id": 3, "height": 100, "width": 100}],
      "categories": [{"id": 1}, {"id": 2}],
      "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": _square(10, 10, 20)},
                      {"id": 2, "image_id": 1, "category_id": 1, "segmentation": _square(50, 50, 20)},
                      {"id": 3, "image_id": 1, "category_id": 2, "segmentation": _square(70, 10, 20)},
                      {"id": 4, "image_id": 2, "category_id": 1, "segmentation": _square(20, 20, 30)},
                      {"id": 5, "image_id": 2, "category_id": 1, "segmentation": _square(60, 60, 10), "iscrowd": 1}]}
DETECTIONS = [
    _det(1, 0.95, _square(10, 10, 20)),       # exact hit
    _det(1, 0.80, _square(12, 10, 20)),       # duplicate of the same object: false positive
    _det(1, 0.72, _square(50, 50, 17)),       # hit at IoU 0.72
    _det(1, 0.40, _square(50, 50, 20)),       # better IoU, but the object is taken: false positive
    _det(1, 0.90, _square(70, 10, 20), 2),    # hit of the second category
    _det(1, 0.60, _square(10, 10, 20), 2),    # right place, wrong category: false positive
    _det(2, 0.30, _square(20, 20, 30)),       # hit at a low score
    _det(2, 0.68, _square(60, 60, 10)),       # on a crowd region: false positive
    _det(3, 0.20, _square(5, 5, 10)),         # image without ground truth
]


def _reference_match_f1(ground_truth, detections, score_threshold, iou_threshold=0.5):
    """The matching written out plainly, filtering by score first (how match_f1 read before match_detections)."""
    from pycocotools import mask as coco_mask

    sizes = {img["id"]: (img["height"], img["width"]) for img in ground_truth["images"]}
    tp = n_detections = n_truth = 0
    keys = {(a["image_id"], a["category_id"]) for a in ground_truth["annotations"] if not a.get("iscrowd", 0)}
    keys |= {(d["image_id"], d["category_id"]) for d in detections if d["score"] >= score_threshold}
    for image_id, category in keys:
        truth = [to_rle(a["segmentation"], *sizes[image_id]) for a in ground_truth["annotations"]
                 if a["image_id"] == image_id and a["category_id"] == category and not a.get("iscrowd", 0)]
        found = sorted((d for d in detections if d["image_id"] == image_id and d["category_id"] == category
                        and d["score"] >= score_threshold), key=lambda d: -d["score"])
        n_truth, n_detections = n_truth + len(truth), n_detections + len(found)
        if not truth or not found:
            continue
        ious = np.asarray(coco_mask.iou([to_rle(d["segmentation"], *sizes[image_id]) for d in found], truth,
                                        [0] * len(truth))).reshape(len(found), len(truth))
        taken = np.zeros(len(truth), bool)
        for row in ious:
            candidates = np.where(~taken & (row >= iou_threshold))[0]
            if len(candidates):
                taken[candidates[np.argmax(row[candidates])]] = True
                tp += 1
    precision = tp / n_detections if n_detections else 0.0
    recall = tp / n_truth if n_truth else 0.0
    return (2 * precision * recall / (precision + recall) if precision + recall else 0.0), precision, recall


@pytest.mark.parametrize("threshold", [0.0, 0.25, 0.35, 0.5, 0.65, 0.7, 0.75, 0.85, 0.92, 0.99])
def test_one_matching_gives_match_f1_at_every_threshold(threshold):
    matched = match_detections(GT, DETECTIONS)
    expected = _reference_match_f1(GT, DETECTIONS, threshold)
    assert matched.f1_at(threshold) == pytest.approx(expected, abs=1e-15)
    assert match_f1(GT, DETECTIONS, score_threshold=threshold) == pytest.approx(expected, abs=1e-15)


def test_matching_records_every_detection_and_the_truth_per_image():
    matched = match_detections(GT, DETECTIONS)
    assert matched.image_ids.tolist() == [1, 2, 3]
    assert matched.truth_per_image.tolist() == [3, 1, 0]  # the crowd annotation is left out
    hits = {(int(matched.image_ids[i]), s) for i, s, m in zip(matched.image_index, matched.scores, matched.matched)
            if m}
    assert hits == {(1, 0.95), (1, 0.72), (1, 0.90), (2, 0.30)}
    assert len(matched.scores) == len(DETECTIONS)


def test_per_image_counts_pool_to_the_f1():
    matched = match_detections(GT, DETECTIONS)
    tp, detections, truth = matched.per_image_counts(0.5)
    assert (tp.tolist(), detections.tolist(), truth.tolist()) == ([3, 0, 0], [5, 1, 0], [3, 1, 0])
    for threshold in (0.0, 0.5, 0.7, 0.9):
        assert pooled_f1(*matched.per_image_counts(threshold)) == pytest.approx(matched.f1_at(threshold)[0])


def test_score_threshold_is_the_only_one_that_separates():
    # Hits from 0.70 up, false positives at 0.68 and below: only 0.70 keeps every hit and no false positive.
    gt = {"images": [{"id": 1, "height": 100, "width": 100}], "categories": [{"id": 1}],
          "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "segmentation": _square(5 + 30 * i, 5, 20)}
                          for i in range(3)]}
    detections = [_det(1, s, _square(5 + 30 * i, 5, 20)) for i, s in enumerate((0.7, 0.8, 0.99))]
    detections += [_det(1, s, _square(5, 60, 20)) for s in (0.68, 0.3)]
    choice = choose_score_threshold(match_detections(gt, detections))
    assert (choice.value, choice.metric, choice.metric_value) == (0.7, "f1_50", 1.0)
    assert [c for c, m in choice.curve if m == 1.0] == [0.7]
    assert match_f1(gt, detections, score_threshold=choice.value) == (1.0, 1.0, 1.0)


def test_score_ties_go_to_one_half_and_matching_must_reach_below_every_candidate():
    gt = {"images": [{"id": 1, "height": 50, "width": 50}], "categories": [{"id": 1}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": _square(5, 5, 20)}]}
    detections = [_det(1, 0.97, _square(5, 5, 20))]
    assert choose_score_threshold(match_detections(gt, detections)).value == 0.5  # every candidate has F1 1
    with pytest.raises(ValueError, match="min_score"):
        choose_score_threshold(match_detections(gt, detections, min_score=0.5))
    with pytest.raises(ValueError, match="not among"):
        match_detections(gt, [_det(9, 0.9, _square(5, 5, 20))])


# --- classifier: operating point -----------------------------------------------------------------------------------


def test_operating_point_is_the_only_one_that_separates():
    p = np.array([0.1, 0.3, 0.66, 0.69, 0.7, 0.72, 0.9, 0.97])
    is_positive = np.array([0, 0, 0, 0, 1, 1, 1, 1], bool)
    choice = choose_operating_point(p, is_positive)
    assert (choice.value, choice.metric, choice.metric_value) == (0.7, "youden_j", 1.0)
    assert [c for c, m in choice.curve if m == 1.0] == [0.7]
    # Sensitivity alone would be maximal at the lowest candidate; J there is 0 (every image called positive).
    assert dict(choice.curve)[0.05] == 0.0
    scores = classification_scores(np.stack([1 - p, p], axis=1), is_positive.astype(int), 1, threshold=choice.value)
    assert (scores.sensitivity, scores.specificity) == (1.0, 1.0)


def test_operating_point_ties_and_errors():
    p, is_positive = np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])
    assert choose_operating_point(p, is_positive).value == 0.5
    assert choose_operating_point(p, is_positive, candidates=[0.6, 0.4]).value == 0.4
    with pytest.raises(ValueError, match="positive and negative"):
        choose_operating_point(p, np.ones(4))
    with pytest.raises(ValueError, match="shapes"):
        choose_operating_point(p, np.array([0, 1]))


def test_classification_scores_with_a_threshold():
    # Three classes, positive 0: below the threshold an image goes to the likelier of the other two classes, even
    # when the positive class is its most probable.
    p = np.array([[0.5, 0.1, 0.4], [0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [0.45, 0.5, 0.05]])
    labels = np.array([0, 0, 2, 1])
    assert classification_scores(p, labels, 0).accuracy == 1.0
    s = classification_scores(p, labels, 0, threshold=0.6)
    assert np.array(s.confusion).tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 1]]
    assert (s.sensitivity, s.specificity, s.accuracy) == (0.5, 1.0, 0.75)
    low = classification_scores(p, labels, 0, threshold=0.25)
    assert (low.sensitivity, low.specificity) == (1.0, 0.0)
    assert low.loss == s.loss and low.roc_auc == s.roc_auc  # threshold-free scores do not move
    assert classification_scores(p, labels, 0, threshold=None) == classification_scores(p, labels, 0)
    with pytest.raises(ValueError, match="threshold"):
        classification_scores(p, labels, 0, threshold=1.5)
