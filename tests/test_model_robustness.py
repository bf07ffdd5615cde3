"""The perturbations of the per-version robustness sweep and the sweep itself (pure: numbers in, rows out)."""

from __future__ import annotations

import numpy as np
import pytest

from cellops.model_robustness import KINDS, Perturbation, parse_perturbations, perturb, perturb_each, robustness_sweep


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(1).normal(100.0, 20.0, size=(3, 32, 32)).astype(np.float32)


def test_each_kind_does_what_its_strength_says(image):
    rng = np.random.default_rng(0)
    noisy = perturb(image, Perturbation("gaussian_noise", 0.5), rng)
    assert noisy.dtype == np.float32 and noisy.shape == image.shape
    assert np.std(noisy - image) == pytest.approx(0.5 * image.std(), rel=0.05)
    blurred = perturb(image, Perturbation("gaussian_blur", 2.0), rng)
    assert blurred.std() < 0.5 * image.std()
    # Blur is spatial only: the slices of a stack (or channels) are not mixed.
    single = perturb(image[1], Perturbation("gaussian_blur", 2.0), rng)
    np.testing.assert_allclose(blurred[1], single, rtol=1e-5)
    assert perturb(image, Perturbation("contrast", 0.5), rng).std() == pytest.approx(0.5 * image.std(), rel=1e-4)
    np.testing.assert_allclose(perturb(image, Perturbation("gain", 2.0), rng), 2 * image, rtol=1e-6)
    np.testing.assert_allclose(perturb(image, Perturbation("offset", 1.0), rng), image + image.std(), rtol=1e-5)
    bright = perturb(image, Perturbation("gamma", 0.5), rng)  # lifts the middle, keeps the ends
    assert (bright.min(), bright.max()) == pytest.approx((image.min(), image.max()), rel=1e-5)
    assert np.median(bright) > np.median(image)


def test_strength_zero_or_one_leaves_the_image(image):
    rng = np.random.default_rng(0)
    for kind, neutral in (("gaussian_noise", 0.0), ("gaussian_blur", 0.0), ("contrast", 1.0), ("gain", 1.0),
                          ("offset", 0.0), ("gamma", 1.0)):
        np.testing.assert_allclose(perturb(image, Perturbation(kind, neutral), rng), image, rtol=1e-5, atol=1e-3)


def test_an_8_bit_image_is_perturbed_as_float_without_wrapping():
    image = np.full((8, 8), 250, dtype=np.uint8)
    out = perturb(image, Perturbation("gain", 2.0), np.random.default_rng(0))
    assert out.dtype == np.float32 and float(out.max()) == 500.0


def test_the_sweep_is_seeded_and_compares_with_the_clean_metrics(image):
    def score(perturbation, rng):
        perturbed = perturb_each([image, image[0]], perturbation, rng)
        return {"error": float(np.abs(perturbed[0] - image).mean()), "other": 1.0}

    sweep = [Perturbation("gaussian_noise", 0.3), Perturbation("contrast", 0.5)]
    first = robustness_sweep(score, sweep, {"error": 0.0, "other": 1.0}, ["error"], seed=3)
    again = robustness_sweep(score, sweep, {"error": 0.0, "other": 1.0}, ["error"], seed=3)
    other_seed = robustness_sweep(score, sweep, {"error": 0.0, "other": 1.0}, ["error"], seed=4)
    assert [r.as_dict() for r in first] == [r.as_dict() for r in again]
    assert first[0].value != other_seed[0].value
    assert [(r.condition, r.metric) for r in first] == [("gaussian_noise 0.3", "error"), ("contrast 0.5", "error")]
    assert all(r.difference == r.value - r.clean_value for r in first)
    with pytest.raises(KeyError, match="'missing' is not among the clean metrics"):
        robustness_sweep(score, sweep, {"error": 0.0}, ["missing"])


@pytest.mark.parametrize("entry, message", [
    ({"kind": "fog", "strength": 1}, "unknown perturbation kind 'fog'"),
    ({"kind": "gain", "strength": 0}, "gain: strength must be > 0"),
    ({"kind": "gaussian_blur", "strength": -1}, "gaussian_blur: strength must be >= 0"),
    ({"kind": "contrast"}, "contrast: strength must be a number"),
    ({"kind": "offset", "strength": float("nan")}, "offset: strength must be >= 0 and finite"),
])
def test_a_bad_perturbation_is_refused_naming_it(entry, message):
    with pytest.raises(ValueError, match=message):
        parse_perturbations([entry])


def test_the_same_perturbation_twice_is_refused():
    with pytest.raises(ValueError, match="contrast 0.5 is listed twice"):
        parse_perturbations([{"kind": "contrast", "strength": 0.5}] * 2)
    assert len(KINDS) == 6
