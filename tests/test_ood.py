"""Out-of-distribution verdicts (cellops.ood and the families' features): the score on hand-made in- and
out-of-distribution sets, calibration holding its false-alarm rate on held-out images, unscorable images, the
refuse policy, the drift window and the stored reference."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cellops.ood import (INTENSITY_FEATURES, DriftWindow, OODReference, OutOfDistribution, Verdict,
                         conformal_threshold, enforce, fit_reference, intensity_features, min_calibration,
                         no_reference_verdict, unscorable_reason, verdict_of)
from cellops.synthetic.em import generate_em_volume
from cellops.synthetic.nuclei import generate_nuclei_image


def _gaussian_reference(rng, n_features=4, false_alarm_rate=0.05):
    names = [f"f{i}" for i in range(n_features)]
    return fit_reference("demo", rng.normal(size=(300, n_features)), rng.normal(size=(400, n_features)), names,
                         false_alarm_rate=false_alarm_rate)


@pytest.mark.parametrize("rate", [0.05, 0.1])
def test_calibration_keeps_the_stated_false_alarm_rate_on_held_out_images(rate):
    rng = np.random.default_rng(1)
    reference = _gaussian_reference(rng, false_alarm_rate=rate)
    held_out = rng.normal(size=(20_000, 4))
    flagged = reference.scores(held_out) > reference.threshold
    # Split conformal: at most `rate` in expectation; 400 calibration rows leave a little slack either way.
    assert rate - 0.02 <= flagged.mean() <= rate + 0.02


def test_the_score_separates_shifted_rows_and_grows_with_the_shift():
    rng = np.random.default_rng(2)
    reference = _gaussian_reference(rng)
    near, far = rng.normal(size=(200, 4)) + 1.0, rng.normal(size=(200, 4)) + 4.0
    assert np.median(reference.scores(far)) > np.median(reference.scores(near)) > reference.threshold / 2
    assert (reference.scores(far) > reference.threshold).mean() > 0.99
    verdict = reference.verdict(np.full(4, 10.0))
    assert verdict.in_distribution is False and verdict.ood_score > verdict.threshold
    assert "> threshold" in verdict.reason


def test_calibration_needs_enough_held_out_images_and_says_how_many():
    rng = np.random.default_rng(3)
    with pytest.raises(ValueError, match="at least 19 held-out"):
        fit_reference("demo", rng.normal(size=(50, 3)), rng.normal(size=(10, 3)), ["a", "b", "c"])
    with pytest.raises(ValueError, match="at least 10 training images"):
        fit_reference("demo", rng.normal(size=(3, 3)), rng.normal(size=(40, 3)), ["a", "b", "c"])
    with pytest.raises(ValueError, match="non-finite"):
        fit_reference("demo", np.full((50, 3), np.nan), rng.normal(size=(40, 3)), ["a", "b", "c"])
    assert min_calibration(0.05) == 19
    assert conformal_threshold(np.arange(1.0, 20.0), 0.05) == 19.0


def test_a_constant_feature_does_not_make_every_image_infinitely_far():
    rng = np.random.default_rng(4)
    reference_rows = np.column_stack([rng.normal(size=200), np.ones(200)])
    calibration = np.column_stack([rng.normal(size=100), np.ones(100)])
    reference = fit_reference("demo", reference_rows, calibration, ["varies", "constant"])
    assert np.isfinite(reference.threshold)
    assert reference.verdict(np.array([0.0, 1.0])).in_distribution is True
    assert reference.verdict(np.array([0.0, 2.0])).in_distribution is False


def test_the_reference_round_trips_through_json(tmp_path):
    reference = _gaussian_reference(np.random.default_rng(5))
    path = reference.save(tmp_path)
    assert path.name == "reference.json" and json.loads(path.read_text())["family"] == "demo"
    again = OODReference.load(tmp_path)
    rows = np.random.default_rng(6).normal(size=(10, 4))
    np.testing.assert_allclose(again.scores(rows), reference.scores(rows))
    assert again.threshold == reference.threshold and again.feature_names == reference.feature_names
    assert len(again.reference_features) == min(400, 500)
    (tmp_path / "broken.json").write_text("{}")
    with pytest.raises(ValueError, match="not an OOD reference: missing family"):
        OODReference.load(tmp_path / "broken.json")
    with pytest.raises(ValueError, match="3 features given; the demo reference has 4"):
        reference.scores(np.zeros((1, 3)))


def test_images_too_small_or_uniform_get_a_verdict_that_says_so():
    reference = _gaussian_reference(np.random.default_rng(7))
    small = verdict_of(reference, np.random.default_rng(0).random((16, 200)), None)
    assert small.in_distribution is None and small.ood_score is None and "too small" in small.reason
    uniform = verdict_of(reference, np.full((64, 64), 0.3), None)
    assert uniform.in_distribution is None and "uniform" in uniform.reason
    assert uniform.headers()["X-In-Distribution"] == "unknown"
    assert unscorable_reason(np.random.default_rng(0).random((2, 64, 64))) is None
    missing = no_reference_verdict()
    assert missing.in_distribution is None and "no out-of-distribution reference" in missing.reason
    assert verdict_of(None, np.zeros((64, 64)), None) == missing


def test_non_finite_features_count_as_out_of_distribution():
    reference = _gaussian_reference(np.random.default_rng(8))
    verdict = reference.verdict(np.array([0.0, np.nan, 0.0, 0.0]))
    assert verdict.in_distribution is False and "f1" in verdict.reason


def test_the_refuse_policy_raises_naming_score_and_threshold_and_flag_answers():
    out = Verdict(12.5, 4.25, False, "far")
    assert enforce(out, "flag") is out
    with pytest.raises(OutOfDistribution, match=r"OOD score 12\.500 is above the threshold 4\.250"):
        enforce(out, "refuse")
    inside = Verdict(1.0, 4.25, True, "near")
    assert enforce(inside, "refuse") is inside
    assert enforce(Verdict(None, 4.25, None, "too small"), "refuse").in_distribution is None
    with pytest.raises(ValueError, match="unknown out-of-distribution policy 'block'; one of flag, refuse"):
        enforce(inside, "block")


def test_the_verdict_as_json_and_headers():
    verdict = Verdict(3.1234567, 5.0, True, "ok")
    assert verdict.as_dict() == {"ood_score": 3.123457, "ood_threshold": 5.0, "in_distribution": True,
                                 "ood_reason": "ok"}
    assert verdict.headers() == {"X-OOD-Score": "3.123457", "X-OOD-Threshold": "5.000000",
                                 "X-In-Distribution": "true"}


def test_the_drift_window_tracks_the_ood_rate_and_the_score_drift():
    rng = np.random.default_rng(9)
    reference = _gaussian_reference(rng)
    window = DriftWindow(reference, size=40)
    for _ in range(40):
        window.add(reference.verdict(rng.normal(size=4)))
    calm_rate, calm_drift = window.ood_rate(), window.drift_statistic()
    assert calm_rate <= 0.2 and calm_drift < 0.35
    for _ in range(40):  # a burst of shifted requests replaces the whole window
        window.add(reference.verdict(rng.normal(size=4) + 5.0))
    assert window.size == 40 and window.ood_rate() == 1.0 and window.drift_statistic() > 0.9
    window.add(Verdict(None, 1.0, None, "too small"))  # unscored requests are left out
    assert window.size == 40
    with pytest.raises(ValueError, match="at least one request"):
        DriftWindow(reference, size=0)


# --- features of real-looking images ---------------------------------------------------------------------------------


def _em_planes(n, seed, size=96):
    return [plane.astype(np.float64) / 255.0 for plane in generate_em_volume((n, size, size), seed=seed).image]


def test_intensity_features_move_the_way_the_shifts_go():
    import cv2

    plane = _em_planes(1, 0)[0]
    names = list(INTENSITY_FEATURES)
    base = intensity_features(plane)
    blurred = intensity_features(cv2.GaussianBlur(plane, (0, 0), 3.0))
    noisy = intensity_features(plane + np.random.default_rng(0).normal(0, 0.2, plane.shape))
    inverted = intensity_features(1.0 - plane)
    assert blurred[names.index("log_gradient")] < base[names.index("log_gradient")]
    assert noisy[names.index("log_noise")] > base[names.index("log_noise")]
    assert np.sign(inverted[names.index("intensity_skew")]) == -np.sign(base[names.index("intensity_skew")])
    assert inverted[names.index("ridge_polarity")] == pytest.approx(-base[names.index("ridge_polarity")], rel=1e-4)
    assert len(base) == len(names) and np.all(np.isfinite(base))


def test_a_stack_is_described_by_its_slices():
    planes = _em_planes(3, 1)
    assert intensity_features(np.stack(planes)) == pytest.approx(np.mean([intensity_features(p) for p in planes],
                                                                         axis=0), rel=1e-5)
    with pytest.raises(ValueError, match="grey image"):
        intensity_features(np.zeros((2, 2, 2, 2)))


def test_unet_reference_flags_other_assays_and_shifts_but_not_new_em_slices():
    """A U-Net reference on EM slices (an untrained network: the input statistics carry the verdict) keeps new EM
    slices in, flags fluorescent nuclei and heavy blur, and scores inverted contrast further out."""
    import cv2

    from cellops.inference import prepare_for_inference
    from cellops.unet import ood as unet_ood
    from cellops.unet.specs import Architecture, UNetServing
    from cellops.unet.train import build_model

    model = prepare_for_inference(build_model(Architecture(1, 1, 4, 2, 0.0), seed=0))
    settings = UNetServing(tile_size=64, tile_overlap=16, batch_size=8, threshold=0.5)
    train = generate_em_volume((6, 160, 160), seed=10).image
    validation = generate_em_volume((6, 160, 160), seed=11).image
    reference = fit_reference("unet", unet_ood.reference_rows(model, train, settings, count=60, sizes=(64, 96)),
                              unet_ood.reference_rows(model, validation, settings, count=40, sizes=(64, 96), seed=1),
                              unet_ood.FEATURE_NAMES)

    def verdict(image):
        from cellops.unet.predict import predict_probabilities

        return unet_ood.verdict_for(reference, image, predict_probabilities(model, image, settings), settings)

    new_em = generate_em_volume((4, 96, 96), seed=12).image
    assert sum(verdict(plane).in_distribution for plane in new_em) >= 3
    nuclei = generate_nuclei_image("Control", (96, 96), seed=3, n_nuclei=8).image
    assert verdict(nuclei).in_distribution is False
    assert verdict(cv2.GaussianBlur(new_em[0], (0, 0), 4.0)).in_distribution is False
    assert verdict(255 - new_em[0]).ood_score > verdict(new_em[0]).ood_score
    assert verdict(new_em[0][:20, :20]).in_distribution is None


def test_classifier_and_maskrcnn_features_come_from_the_served_outputs():
    from cellops.classifier import ood as classifier_ood
    from cellops.maskrcnn import ood as maskrcnn_ood
    from cellops.maskrcnn.predict import Instance

    rng = np.random.default_rng(10)
    sure, unsure = (classifier_ood.image_features(rng.random((1, 64, 64)), p) for p in ([0.99, 0.01], [0.5, 0.5]))
    names = classifier_ood.FEATURE_NAMES
    assert sure[names.index("entropy")] < unsure[names.index("entropy")] == pytest.approx(1.0)
    assert len(sure) == len(names)
    picture = rng.random((64, 64, 3)).astype(np.float32)
    none = maskrcnn_ood.image_features(picture, [])
    one = maskrcnn_ood.image_features(picture, [Instance(0, 0, np.ones((32, 64), bool), 1, 0.9)])
    names = maskrcnn_ood.FEATURE_NAMES
    assert none[names.index("log_instances")] == 0 and one[names.index("covered_fraction")] == pytest.approx(0.5)
    assert one[names.index("top_score")] == pytest.approx(0.9)
    assert maskrcnn_ood.verdict_for(None, picture, []).in_distribution is None
