import numpy as np
import pytest

import cv2
from scipy import ndimage
from skimage.segmentation import find_boundaries

from cellops.classical.colonies import (ColonyParams, _edge_regions, bright_seams, colony_overlay, colony_properties,
                                        colony_settings, measure_colonies)
from cellops.classical.common import to_uint8_gray
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


def _detection_mask(gray):
    """The detection mask split_touching_colonies gets (detect_colony_labels' first steps)."""
    settings = colony_settings(gray)
    regions = _edge_regions(gray, settings.blur_sigma, settings.canny_low, settings.canny_high, 5,
                            settings.dilate_iterations, settings.erode_iterations)
    _, components, stats, _ = cv2.connectedComponentsWithStats(regions, connectivity=8)
    big = stats[:, cv2.CC_STAT_AREA] > int(settings.min_area * 0.5)
    big[0] = False
    return big[components], settings


def test_chain_of_small_touching_4x_colonies_is_split_along_its_seams():
    # Five small 4x colonies in a chain that detection sees as one blob; the seams between them are a pixel
    # wide and no brighter per pixel than the texture (a2c0712 found one colony of the five: F1 0.29).
    sample = generate_colony_image((512, 512), seed=103, magnification=4.0, gap=(0.0, 3.0), clutter=3.0)
    found = measure_colonies(sample.image).labels
    match = match_instances(sample.labels, found)
    assert len(match.pairs) >= 4 and match.f1 >= 0.85
    errors = [abs((found == p).sum() / (sample.labels == t).sum() - 1) for t, p, _ in match.pairs]
    assert np.median(errors) <= 0.05


def test_seams_lie_on_the_lines_between_colonies():
    for seed in (103, 107):
        sample = generate_colony_image((512, 512), seed=seed, magnification=4.0, gap=(0.0, 3.0), clutter=3.0)
        gray = to_uint8_gray(sample.image)
        mask, settings = _detection_mask(gray)
        seams = bright_seams(gray, mask, settings.colony_diameter_px / 2, 0.5 * settings.min_area)
        assert seams.sum() > 50 and not (seams & ~mask).any()
        # Every seam pixel within a few pixels of a true outline (a seam or a colony's edge), none inside.
        distance = ndimage.distance_transform_edt(~find_boundaries(sample.labels))
        assert distance[seams].max() <= 5


def test_no_seams_inside_lone_colonies():
    for seed in (3, 4):
        sample = generate_colony_image((384, 384), seed=seed, n_colonies=(1, 1), radius=(60, 80))
        gray = to_uint8_gray(sample.image)
        mask, settings = _detection_mask(gray)
        assert not bright_seams(gray, mask, settings.colony_diameter_px / 2, 0.5 * settings.min_area).any()


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
