import numpy as np
import pytest

from cellops.classical.colonies import ColonyParams, colony_overlay, colony_properties, measure_colonies
from cellops.config import from_mapping
from cellops.metrics import match_instances
from cellops.coco import coco_to_labels, labels_to_coco
from cellops.synthetic.colonies import generate_colony_image


@pytest.fixture(scope="module")
def samples():
    return [generate_colony_image((512, 512), seed=100 + s) for s in range(4)]


def test_detection_f1_and_area_error_on_synthetic_images(samples):
    f1s, errors = [], []
    for sample in samples:
        result = measure_colonies(sample.image)
        match = match_instances(sample.labels, result.labels)
        f1s.append(match.f1)
        errors += [abs((result.labels == p).sum() / (sample.labels == t).sum() - 1) for t, p, _ in match.pairs]
    assert np.mean(f1s) >= 0.95
    assert np.median(errors) < 0.05


def test_touching_colonies_among_single_cells_and_debris_are_split_and_not_inflated():
    # Colonies 0-3 px apart (most meet along a bright seam) with three times the single cells and debris: the
    # earlier split (fixed neck depth, outlines on the distance transform's line) merged pairs here.
    f1s, errors = [], []
    for seed in (100, 101):
        sample = generate_colony_image((512, 512), seed=seed, gap=(0.0, 3.0), clutter=3.0)
        found = measure_colonies(sample.image).labels
        match = match_instances(sample.labels, found)
        f1s.append(match.f1)
        errors += [abs((found == p).sum() / (sample.labels == t).sum() - 1) for t, p, _ in match.pairs]
    assert np.mean(f1s) >= 0.95
    assert np.median(errors) <= 0.05


def test_properties_of_a_hand_drawn_rectangle():
    rect = np.array([[[10, 20]], [[10, 59]], [[89, 59]], [[89, 20]]], np.int32)  # 80 x 40 (x, y)
    p = colony_properties(rect)
    assert p["area"] == 79 * 39  # OpenCV's polygon area of the outline through pixel centres
    assert (p["bbox_x"], p["bbox_y"], p["bbox_width"], p["bbox_height"]) == (10, 20, 80, 40)
    assert p["rotated_width"] == pytest.approx(79) and p["rotated_height"] == pytest.approx(39)
    assert p["solidity"] == pytest.approx(1.0) and p["hull_vertices"] == 4
    assert p["centroid_x"] == pytest.approx(49.5) and p["centroid_y"] == pytest.approx(39.5)
    assert p["circularity"] == pytest.approx(4 * np.pi * 79 * 39 / (2 * (79 + 39)) ** 2)
    assert p["equivalent_diameter"] == pytest.approx(np.sqrt(4 * 79 * 39 / np.pi))


def test_single_cells_and_debris_are_not_colonies():
    sample = generate_colony_image((256, 256), seed=5, n_colonies=(0, 0), n_single_cells=40, n_debris=100)
    assert sample.labels.max() == 0
    assert measure_colonies(sample.image).table.empty


def test_table_and_labels_agree(samples):
    result = measure_colonies(samples[0].image)
    assert len(result.table) == len(result.contours) == result.labels.max()
    assert result.table["area"].is_monotonic_decreasing
    assert {"hu_1", "hu_7", "rotated_angle", "hull_area", "solidity"} <= set(result.table.columns)


def test_overlay_colours(samples):
    result = measure_colonies(samples[0].image)
    overlay = colony_overlay(samples[0].image, result.contours)
    colours = {tuple(c) for c in overlay.reshape(-1, 3)[::7]}
    assert (255, 0, 0) in colours and (0, 255, 0) in colours and (0, 0, 255) in colours


def test_coco_round_trip(samples):
    labels = {"a.png": samples[0].labels, "b.png": samples[1].labels}
    coco = labels_to_coco(labels)
    assert len(coco["annotations"]) == samples[0].labels.max() + samples[1].labels.max()
    assert np.array_equal(coco_to_labels(coco, "b.png"), samples[1].labels)
    with pytest.raises(KeyError, match="c.png"):
        coco_to_labels(coco, "c.png")


def test_sixteen_bit_and_rgb_inputs_are_handled(samples):
    image = samples[0].image
    n8 = len(measure_colonies(image).contours)
    assert len(measure_colonies(image.astype(np.uint16) * 257).contours) == n8
    assert len(measure_colonies(np.stack([image] * 3, axis=-1)).contours) == n8


def test_unknown_parameter_is_named():
    with pytest.raises(ValueError, match=r"ColonyParams: unknown keys \['canny_hi'\]"):
        from_mapping(ColonyParams, {"canny_hi": 10})
