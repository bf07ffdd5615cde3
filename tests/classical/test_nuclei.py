import numpy as np
import pandas as pd
import pytest

from cellops.classical.nuclei import NucleusParams, nucleus_table, segment_nuclei
from cellops.classical.stats import compare_groups, holm_correction
from cellops.metrics import match_instances
from cellops.synthetic.nuclei import GROUP_SHAPES, generate_nuclei_image


@pytest.fixture(scope="module")
def per_group():
    return {g: [generate_nuclei_image(g, (384, 384), seed=200 + i, n_nuclei=30) for i in range(2)] for g in GROUP_SHAPES}


def test_segmentation_f1_and_aspect_ratio_error(per_group):
    f1s, errors = [], []
    for samples in per_group.values():
        for sample in samples:
            labels = segment_nuclei(sample.image)
            match = match_instances(sample.labels, labels)
            f1s.append(match.f1)
            table = nucleus_table(labels).set_index("label")
            truth = sample.ellipses.set_index("label")
            errors += [abs(table.loc[p, "aspect_ratio_ellipse"] / truth.loc[t, "aspect_ratio"] - 1)
                       for t, p, _ in match.pairs]
    assert np.mean(f1s) >= 0.90
    assert np.median(errors) < 0.05


def test_group_ordering_is_recovered(per_group):
    tables = [nucleus_table(segment_nuclei(s.image)).assign(group=g) for g, ss in per_group.items() for s in ss]
    table = pd.concat(tables)
    medians = table.groupby("group")["aspect_ratio_ellipse"].median()
    assert medians["Control"] < medians["Coating"] < medians["Film"]
    result = compare_groups(table, ["aspect_ratio_ellipse"]).set_index("comparison")
    assert result.loc["all groups", "p_value"] < 0.01
    assert result.loc["Control vs Film", "p_holm"] < 0.01
    assert result.loc["Control vs Film", "effect_size"] < -0.5  # Film larger


def test_table_of_a_hand_drawn_ellipse():
    yy, xx = np.mgrid[:100, :100]
    labels = (((xx - 50) / 30.0) ** 2 + ((yy - 50) / 15.0) ** 2 <= 1).astype(np.int32)
    row = nucleus_table(labels).iloc[0]
    assert row.aspect_ratio_ellipse == pytest.approx(2.0, rel=0.02)
    assert row.aspect_ratio_rectangle == pytest.approx(2.0, rel=0.05)
    assert row.area == pytest.approx(np.pi * 30 * 15, rel=0.02)
    assert row.feret_max == pytest.approx(61, abs=2) and row.feret_min == pytest.approx(31, abs=2)
    # An ellipse of aspect ratio 2 has circularity 0.84 (Ramanujan perimeter); digitised, a bit less.
    assert 0.72 < row.circularity < 0.86 and row.solidity > 0.95


def test_sizes_scale_with_the_configured_diameter():
    sample = generate_nuclei_image("Control", (256, 256), seed=9, n_nuclei=12)
    # The same image at twice the resolution, with the diameter doubled: about the same nuclei.
    big = np.kron(sample.image, np.ones((2, 2), sample.image.dtype))
    n_small = segment_nuclei(sample.image).max()
    n_big = segment_nuclei(big, NucleusParams(nucleus_diameter_px=60)).max()
    assert abs(int(n_big) - int(n_small)) <= 1


def test_local_threshold_handles_strong_illumination_gradient():
    sample = generate_nuclei_image("Coating", (256, 256), seed=4, n_nuclei=15)
    ramp = np.linspace(0.3, 1.7, 256)[None, :]
    image = np.clip(sample.image * ramp, 0, 65535).astype(np.uint16)
    labels = segment_nuclei(image, NucleusParams(threshold="local"))
    assert match_instances(sample.labels, labels).f1 >= 0.8


def test_holm_and_unknown_threshold():
    assert holm_correction([0.01, 0.02, 0.5]).tolist() == pytest.approx([0.03, 0.04, 0.5])
    with pytest.raises(ValueError, match="unknown threshold method 'li'"):
        segment_nuclei(np.ones((10, 10)), NucleusParams(threshold="li"))


def test_harder_generator_options_leave_the_default_image_alone_and_do_what_they_say():
    plain = generate_nuclei_image("Control", (128, 128), seed=5, n_nuclei=8)
    # Off (the default) each option draws nothing: the built-in dataset keeps its bytes.
    again = generate_nuclei_image("Control", (128, 128), seed=5, n_nuclei=8, dim_fraction=0.0, confluence=0.0,
                                  blotchy_background=0.0, vignetting=0.0, out_of_focus_fraction=0.0)
    assert plain.image.tobytes() == again.image.tobytes()
    low = generate_nuclei_image("Control", (128, 128), seed=5, n_nuclei=8, levels_per_unit=300.0,
                                offset_levels=2000.0).image
    assert low.min() > 1900 and int(low.max()) - int(low.min()) < 700  # a few hundred grey levels on an offset
    blurred = generate_nuclei_image("Control", (128, 128), seed=5, n_nuclei=8, out_of_focus_fraction=0.5)
    kinds = blurred.ellipses["kind"].value_counts()
    assert kinds.get("out of focus", 0) >= 2 and blurred.labels.max() == len(blurred.ellipses)  # they count
    dense = generate_nuclei_image("Control", (128, 128), seed=5, n_nuclei=200, diameter_scale=0.6, confluence=0.8)
    assert dense.labels.max() >= 25  # packed on a lattice, many more than 8 would fit scattered


def test_dim_population_and_out_of_focus_neighbours_are_found():
    for settings in ({"dim_fraction": 0.35}, {"out_of_focus_fraction": 0.3}):
        sample = generate_nuclei_image("Control", (256, 256), seed=2, n_nuclei=12, **settings)
        assert match_instances(sample.labels, segment_nuclei(sample.image)).f1 >= 0.85, settings


def test_confluent_clusters_are_split_and_a_blotchy_background_is_not_taken_for_nuclei():
    # Nuclei on a lattice touching on several sides: the foreground is one sheet, only the seams part them
    # (the shape split alone found 0.82 here).
    confluent = generate_nuclei_image("Control", (256, 256), seed=2, n_nuclei=200, diameter_scale=0.6,
                                      confluence=0.7)
    assert match_instances(confluent.labels, segment_nuclei(confluent.image)).f1 >= 0.88
    # Background bumps of a nucleus's size left over by the background map (four of them were nuclei before).
    blotchy = generate_nuclei_image("Control", (256, 256), seed=3, n_nuclei=12, blotchy_background=0.35,
                                    vignetting=0.5)
    match = match_instances(blotchy.labels, segment_nuclei(blotchy.image))
    assert match.f1 >= 0.9 and match.false_positives == 0


def _blobs_field(side: int = 192, seed: int = 0) -> np.ndarray:
    """Blurred random blobs: a smoothed distance transform that is zero between its objects, like the cores'."""
    import cv2

    rng = np.random.default_rng(seed)
    mask = cv2.GaussianBlur(rng.random((side, side)).astype(np.float32), (0, 0), 4) > 0.52
    distance = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE).astype(np.float64)
    return cv2.GaussianBlur(distance, (0, 0), 1.2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_object_by_object_operations_equal_the_whole_image_ones(seed):
    from scipy import ndimage
    from skimage import morphology

    from cellops.classical.objects import fill_holes, h_maxima_by_object, remove_small_objects

    field = _blobs_field(seed=seed)
    for h in (0.5, 1.5, 3.0):
        assert (h_maxima_by_object(field, h) == morphology.h_maxima(field, h).astype(bool)).all(), h
    mask = ndimage.binary_opening(np.random.default_rng(seed).random((120, 150)) > 0.45)
    assert (fill_holes(mask) == ndimage.binary_fill_holes(mask)).all()
    assert (remove_small_objects(mask, 12) == morphology.remove_small_objects(mask, max_size=12)).all()


def test_table_equals_scikit_image_regionprops():
    from skimage.measure import regionprops

    sample = generate_nuclei_image("Film", (256, 256), seed=7, n_nuclei=14, touching_fraction=0.5)
    labels = segment_nuclei(sample.image)
    table = nucleus_table(labels, sample.image).set_index("label")
    for region in regionprops(labels, intensity_image=sample.image):
        row = table.loc[region.label]
        assert row.area == region.area and row.perimeter == pytest.approx(region.perimeter, abs=1e-9)
        assert row.solidity == pytest.approx(region.solidity, abs=1e-12)
        assert row.feret_max == pytest.approx(region.feret_diameter_max, abs=1e-9)
        assert row.major_axis == pytest.approx(region.axis_major_length, rel=1e-9)
        assert row.minor_axis == pytest.approx(region.axis_minor_length, rel=1e-9)
        assert row.orientation_rad == pytest.approx(region.orientation, abs=1e-9)
        assert (row.centroid_y, row.centroid_x) == pytest.approx(region.centroid, abs=1e-9)
        assert row.mean_intensity == pytest.approx(region.intensity_mean, rel=1e-12)


def test_same_nuclei_with_one_thread_or_two():
    import cv2

    # 1600 x 1600: large enough that the diameter is measured on tiles, in threads.
    image = np.tile(generate_nuclei_image("Control", (400, 400), seed=11, n_nuclei=28).image, (4, 4))
    threads = cv2.getNumThreads()
    try:
        cv2.setNumThreads(1)
        one = segment_nuclei(image)
        cv2.setNumThreads(2)
        two = segment_nuclei(image)
    finally:
        cv2.setNumThreads(threads)
    assert one.max() >= 300 and (one == two).all()
