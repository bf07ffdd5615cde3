"""The one COCO codec: every segmentation form (polygons, compressed and uncompressed RLE) decodes to the same
mask, label images and masks round-trip, and scoring and evaluation take uncompressed RLE ground truth and
predictions as they take the other forms."""

import json

import numpy as np
import pytest

from cellops.coco import (annotation_masks, coco_to_labels, cropped_mask_to_rle, labels_to_coco, mask_to_rle,
                          segmentation_area, segmentation_bbox, segmentation_ious, segmentation_mask, to_rle)
from cellops.io import write_tiff_stack
from cellops.maskrcnn.evaluation import coco_ap, evaluate_instances, match_detections, match_f1
from cellops.scoring import score_colonies


def uncompressed(mask: np.ndarray) -> dict:
    """``mask`` as uncompressed RLE, computed here without pycocotools: run lengths down the columns, starting
    with background (a zero-length first run when the first pixel is foreground)."""
    flat = mask.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.r_[0, edges, flat.size])
    if flat[0]:
        runs = np.r_[0, runs]
    return {"size": [int(v) for v in mask.shape], "counts": [int(v) for v in runs]}


def square_mask(shape, top, left, side) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top:top + side, left:left + side] = True
    return mask


def square_polygon(top, left, side) -> list:
    x0, y0, x1, y1 = left, top, left + side, top + side
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


@pytest.mark.parametrize("form", ["compressed", "uncompressed", "compressed_bytes"])
def test_every_rle_form_decodes_to_the_mask(form, rng):
    mask = rng.random((23, 31)) > 0.6
    mask[0, 0] = True  # a foreground first pixel: the uncompressed form starts with an empty background run
    segmentation = {"compressed": mask_to_rle(mask), "uncompressed": uncompressed(mask),
                    "compressed_bytes": to_rle(mask_to_rle(mask), 23, 31)}[form]
    assert np.array_equal(segmentation_mask(segmentation, 23, 31), mask)
    assert to_rle(segmentation, 23, 31) == to_rle(mask_to_rle(mask), 23, 31)
    assert segmentation_area(segmentation, 23, 31) == mask.sum()


def test_polygons_rle_and_boxes_agree():
    polygon = square_polygon(4, 6, 10)
    mask = segmentation_mask(polygon, 30, 40)
    assert segmentation_area(polygon, 30, 40) == mask.sum() == segmentation_area(uncompressed(mask), 30, 40)
    assert segmentation_bbox(polygon, 30, 40) == segmentation_bbox(uncompressed(mask), 30, 40)
    assert np.array_equal(segmentation_mask([], 30, 40), np.zeros((30, 40), bool))
    two_parts = square_polygon(0, 0, 4) + square_polygon(10, 10, 4)  # one instance in two parts: merged
    assert segmentation_mask(two_parts, 20, 20).sum() == 2 * segmentation_mask(square_polygon(0, 0, 4), 20, 20).sum()


def test_a_crop_encodes_as_its_full_size_mask(rng):
    crop = rng.random((7, 5)) > 0.4
    crop[0, 0] = crop[-1, -1] = True
    full = np.zeros((20, 16), bool)
    full[9:16, 11:16] = crop
    assert cropped_mask_to_rle(crop, 9, 11, (20, 16)) == mask_to_rle(full)
    assert cropped_mask_to_rle(np.zeros((2, 2), bool), 0, 0, (4, 4)) == mask_to_rle(np.zeros((4, 4), bool))


def test_label_images_round_trip_through_coco_as_json():
    labels = np.zeros((30, 40), np.uint32)
    labels[2:9, 3:12] = 70000  # sparse 32-bit ids
    labels[15:25, 20:38] = 5
    coco = json.loads(json.dumps(labels_to_coco({"b.png": labels, "a.png": labels[::-1]}, category="nucleus")))
    assert [img["file_name"] for img in coco["images"]] == ["a.png", "b.png"]
    assert coco["categories"] == [{"id": 1, "name": "nucleus"}]
    rebuilt = coco_to_labels(coco, "b.png")
    assert np.array_equal(rebuilt > 0, labels > 0) and len(np.unique(rebuilt)) == 3
    first = coco["annotations"][2]  # b.png's first instance: label 5, the smaller id
    assert first["bbox"] == [20.0, 15.0, 18.0, 10.0] and first["area"] == 180.0
    with pytest.raises(KeyError, match="c.png"):
        coco_to_labels(coco, "c.png")


def test_annotation_masks_read_every_form_and_leave_crowds_out():
    masks = [square_mask((32, 32), 1, 1, 6), square_mask((32, 32), 10, 10, 8), square_mask((32, 32), 20, 2, 5)]
    coco = {"images": [{"id": 4, "file_name": "a.png", "height": 32, "width": 32}], "categories": [{"id": 2}],
            "annotations": [
                {"id": 1, "image_id": 4, "category_id": 2, "segmentation": mask_to_rle(masks[0])},
                {"id": 2, "image_id": 4, "category_id": 2, "segmentation": uncompressed(masks[1])},
                {"id": 3, "image_id": 4, "category_id": 2, "segmentation": uncompressed(masks[2]), "iscrowd": 1}]}
    stacked, categories, ids = annotation_masks(coco, 4)
    assert ids == [1, 2] and categories.tolist() == [2, 2]
    assert np.array_equal(stacked, np.stack(masks[:2]))


def test_ious_of_any_forms():
    a, b = square_mask((16, 16), 0, 0, 4), square_mask((16, 16), 0, 2, 4)
    ious = segmentation_ious([uncompressed(a), square_polygon(0, 0, 4)], [mask_to_rle(b), uncompressed(a)], 16, 16)
    assert ious.shape == (2, 2)
    assert ious[0].tolist() == [pytest.approx(8 / 24), 1.0]
    assert segmentation_ious([], [uncompressed(a)], 16, 16).shape == (0, 1)


def test_colony_scoring_reads_uncompressed_rle_ground_truth(tmp_path):
    truth = np.zeros((40, 40), np.int32)
    truth[5:15, 5:15] = 1
    truth[20:30, 20:35] = 2
    coco = labels_to_coco({"a.png": truth})
    for ann, label in zip(coco["annotations"], (1, 2)):
        ann["segmentation"] = uncompressed(truth == label)
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    write_tiff_stack(tmp_path / "a_colonies.tif", truth.astype(np.uint16))
    scores = score_colonies([tmp_path / "a.png"], tmp_path, tmp_path / "annotations.json")
    assert scores == {"detection_f1": 1.0, "median_relative_area_error": 0.0}


def _instances(form_truth, form_found):
    """Ground truth of two images and detections (one hit, one miss, one near miss) in the given forms."""
    shape = (48, 64)
    truth_masks = {1: [square_mask(shape, 2, 2, 10), square_mask(shape, 30, 40, 12)], 2: [square_mask(shape, 5, 5, 20)]}
    found_masks = [(1, 0.9, square_mask(shape, 2, 2, 10)), (1, 0.8, square_mask(shape, 0, 50, 6)),
                   (2, 0.7, square_mask(shape, 8, 8, 20))]
    encode = {"compressed": mask_to_rle, "uncompressed": uncompressed}
    ground_truth = {"images": [{"id": i, "height": shape[0], "width": shape[1]} for i in (1, 2)],
                    "categories": [{"id": 1}],
                    "annotations": [{"id": 10 * image_id + k, "image_id": image_id, "category_id": 1,
                                     "segmentation": encode[form_truth](mask)}
                                    for image_id, masks in truth_masks.items() for k, mask in enumerate(masks)]}
    detections = [{"image_id": image_id, "category_id": 1, "score": score, "segmentation": encode[form_found](mask),
                   "bbox": segmentation_bbox(mask_to_rle(mask), *shape)} for image_id, score, mask in found_masks]
    return ground_truth, detections


@pytest.mark.parametrize("backend", ["pycocotools", "faster-coco-eval"])
def test_evaluation_takes_uncompressed_rle_ground_truth_and_predictions(backend):
    reference = _instances("compressed", "compressed")
    expected_ap = coco_ap(*reference, "segm", 100, backend)
    assert 0 < expected_ap[0] < 1
    for forms in (("uncompressed", "compressed"), ("compressed", "uncompressed"), ("uncompressed", "uncompressed")):
        ground_truth, detections = _instances(*forms)
        assert coco_ap(ground_truth, detections, "segm", 100, backend) == pytest.approx(expected_ap, abs=1e-12)
        assert coco_ap(ground_truth, detections, "bbox", 100, backend) == \
            pytest.approx(coco_ap(*reference, "bbox", 100, backend), abs=1e-12)


def test_matching_takes_uncompressed_rle_ground_truth_and_predictions():
    reference = _instances("compressed", "compressed")
    expected = match_detections(*reference)
    assert expected.matched.tolist() == [True, False, True] and match_f1(*reference) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    for forms in (("uncompressed", "compressed"), ("compressed", "uncompressed"), ("uncompressed", "uncompressed")):
        ground_truth, detections = _instances(*forms)
        assert match_detections(ground_truth, detections).matched.tolist() == expected.matched.tolist()
        assert evaluate_instances(ground_truth, detections, max_detections=100) == \
            evaluate_instances(*reference, max_detections=100)
