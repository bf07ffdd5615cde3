"""Sizes and thresholds measured from the image, the robustness sweep on a few hard conditions, and
statistics at the level of the experimental unit."""

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from cellops.classical.colonies import ColonyParams, colony_settings, measure_colonies
from cellops.classical.nuclei import NucleusParams, segment_nuclei_with_settings
from cellops.classical.scale import estimate_blob_diameter
from cellops.classical.stats import compare_groups, compare_replicates
from cellops.metrics import match_instances
from cellops.robustness import SweepSettings, robustness_sweep, summarise_sweep
from cellops.synthetic.colonies import generate_colony_image
from cellops.synthetic.nuclei import generate_nuclei_image


@pytest.mark.parametrize("scale", [0.4, 1.0, 2.0])
def test_nucleus_diameter_is_measured_within_a_quarter(scale):
    sample = generate_nuclei_image("Control", (384, 384), seed=7, n_nuclei=int(30 / scale**2 * 0.6),
                                   diameter_scale=scale)
    truth = float(np.median(np.sqrt(sample.ellipses["major_axis"] * sample.ellipses["minor_axis"])))
    measured = estimate_blob_diameter(sample.image).diameter_px
    assert 0.7 * truth < measured < 1.15 * truth


def test_an_empty_field_has_no_size():
    with pytest.raises(ValueError, match="cannot be estimated"):
        estimate_blob_diameter(np.random.default_rng(0).normal(100, 1, (128, 128)))


def test_threshold_turns_local_for_vignetting_and_dim_nuclei_and_stays_global_otherwise():
    def choice(haze: float = 0.0, **settings):
        image = generate_nuclei_image("Control", (384, 384), seed=3, n_nuclei=30, **settings).image
        # Out-of-focus haze rising across the field: an uneven background under the nuclei.
        image = image + haze * float(image.max()) * np.linspace(0, 1, image.shape[1])[None, :]
        return segment_nuclei_with_settings(image)

    assert choice().threshold == "otsu"
    assert choice(brightness=(0.05, 1.0)).threshold == "local"
    hazy = choice(haze=0.5)
    assert hazy.threshold == "local" and "unevenness" in hazy.threshold_reason


def test_explicit_values_override_and_bad_ones_are_named():
    image = generate_nuclei_image("Control", (256, 256), seed=1, n_nuclei=12).image
    given = segment_nuclei_with_settings(image, NucleusParams(nucleus_diameter_um=12.0, pixel_size_um=0.5,
                                                              threshold="local"))
    assert (given.diameter_px, given.diameter_source, given.threshold) == (24.0, "given", "local")
    with pytest.raises(ValueError, match="'automatic'"):
        NucleusParams(nucleus_diameter_px="automatic")
    with pytest.raises(ValueError, match="unknown threshold method 'mean'"):
        NucleusParams(threshold="mean")
    with pytest.raises(ValueError, match="canny_high must be a number or 'auto'"):
        ColonyParams(canny_high="high")
    fixed = colony_settings(generate_colony_image((256, 256), seed=1).image, ColonyParams(min_area=10.0, blur_sigma=1.5))
    assert (fixed.min_area, fixed.blur_sigma) == (10.0, 1.5)


def test_colonies_at_4x_and_touching_colonies_are_found_with_the_defaults():
    for sample in (generate_colony_image((512, 512), seed=101, magnification=4.0),
                   generate_colony_image((512, 512), seed=101, gap=(0.0, 3.0))):
        result = measure_colonies(sample.image)
        assert match_instances(sample.labels, result.labels).f1 >= 0.9
        assert "touches_border" in result.table


def _square_pair(seam: bool) -> tuple[np.ndarray, np.ndarray]:
    """Two textured squares side by side (one rectangle: no neck), bright halo around, optionally a seam."""
    rng = np.random.default_rng(0)
    truth = np.zeros((200, 300), np.int32)
    truth[40:160, 30:150] = 1
    truth[40:160, 150:270] = 2
    image = np.where(truth > 0, 0.45 + 0.08 * rng.normal(size=truth.shape), 0.55)
    outside = ndimage.distance_transform_edt(truth == 0)
    image += 0.3 * np.exp(-((outside - 2) / 2.5) ** 2) * (truth == 0)
    if seam:
        image[:, 149:151] += 0.3 * (truth[:, 149:151] > 0)
    return np.clip(ndimage.gaussian_filter(image, 0.7) * 255, 0, 255).astype(np.uint8), truth


def test_a_bright_seam_splits_colonies_that_meet_along_a_wide_front():
    with_seam, truth = _square_pair(seam=True)
    assert match_instances(truth, measure_colonies(with_seam).labels).f1 == 1.0
    # No neck and no seam: one colony, as anyone would see it.
    without, _ = _square_pair(seam=False)
    assert measure_colonies(without).labels.max() == 1


def test_outlines_reach_a_paler_differentiated_rim():
    sample = generate_colony_image((512, 512), seed=102, differentiated_fraction=1.0)
    refined = measure_colonies(sample.image).labels
    unrefined = measure_colonies(sample.image, ColonyParams(refine_edges=False)).labels
    def area_error(found):
        return np.median([abs((found == p).sum() / (sample.labels == t).sum() - 1)
                          for t, p, _ in match_instances(sample.labels, found).pairs])
    assert area_error(refined) < 0.05 < area_error(unrefined)


#: The lowest score each condition of the sweep may reach with the defaults (one image of each, seed 100): the
#: targets (nuclei and colony F1 0.85 and 0.90, colony area error 5 %, calcium F1 0.90 and median trace r 0.98)
#: where the defaults meet them, and a floor a little under today's figure for the known misses, which the README
#: reports (touching and cluttered colonies, calcium cells of mixed sizes; nuclei under strong vignetting sit at
#: the target). Every condition is checked: a regression in any of them fails, a miss cannot hide.
SWEEP_FLOORS = {
    # Measured with one image per condition (seed 100): dim beside bright 0.894, strong vignetting 0.911, low light
    # and 8-bit 0.932, dim and bright populations 0.867, confluent 0.925, the rest >= 0.955 (a nucleus is 0.02 here).
    "nuclei": {"f1": {"dim beside bright": 0.87, "strong vignetting": 0.88, "low light": 0.90, "8-bit": 0.90,
                      "dim and bright populations": 0.84, "confluent clusters (18 px)": 0.90, "*": 0.92}},
    "colonies": {"f1": {"touching colonies": 0.70, "4x, touching, cluttered": 0.75, "4x magnification": 0.85, "*": 0.90},
                 "median_area_error": {"touching colonies": 0.25, "4x, touching, cluttered": 0.15,
                                       "4x magnification": 0.08, "*": 0.05}},
    "calcium": {"f1": {"mixed sizes": 0.80, "*": 0.90}, "median_r": {"*": 0.98}},
}


@pytest.mark.parametrize("kind", ["nuclei", "colonies", "calcium"])
def test_every_condition_of_the_sweep_holds_its_floor(kind):
    from cellops.robustness import CALCIUM_CONDITIONS, COLONY_CONDITIONS, NUCLEI_CONDITIONS

    conditions = {"nuclei": NUCLEI_CONDITIONS, "colonies": COLONY_CONDITIONS, "calcium": CALCIUM_CONDITIONS}[kind]
    summary = summarise_sweep(robustness_sweep(kind, list(conditions), SweepSettings(images_per_condition=1)))
    assert list(summary["condition"]) == list(conditions)  # all of them, not a chosen few
    for column, floors in SWEEP_FLOORS[kind].items():
        assert set(floors) - {"*"} <= set(conditions), f"{kind}: floors for unknown conditions"
        for condition, value in zip(summary["condition"], summary[column]):
            floor = floors.get(condition, floors["*"])
            # An error must stay under its bound; a score over it.
            ok = value <= floor if column.endswith("error") else value >= floor
            assert ok, f"{kind} '{condition}': {column} {value:.3f} against {floor}"
    with pytest.raises(ValueError, match=f"unknown {kind} conditions"):
        robustness_sweep(kind, ["sunny"], SweepSettings(images_per_condition=1))


def test_replicate_tests_do_not_pseudoreplicate():
    # Two groups with no real difference; each image has its own offset (culture-to-culture variation).
    rng = np.random.default_rng(1)
    images = np.repeat(np.arange(8), 400)
    offsets = rng.normal(0, 1, 8)
    table = pd.DataFrame({"group": np.where(images < 4, "A", "B"), "image": images,
                          "x": offsets[images] + rng.normal(0, 1, len(images))})
    objects = compare_groups(table, ["x"])
    replicates = compare_replicates(table, ["x"])
    # Object-level tests treat 3200 nuclei as independent: a "highly significant" difference from 8 images.
    assert objects["p_value"].iloc[0] < 1e-6
    assert replicates["p_value"].iloc[0] > 0.01
    assert set(replicates["level"]) == {"replicate"} and replicates["n"].iloc[0] == 8
    with pytest.raises(ValueError, match="no column \\['well'\\]"):
        compare_replicates(table, ["x"], replicate_column="well")
