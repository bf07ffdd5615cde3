"""Classifier uncertainty: normalised predictive entropy (sure 0, a coin toss 1, in the order of the images, the
served probabilities unchanged), MC dropout (seeded, the model left as it was, refused for a network without
dropout), and the uncertainty columns of classified files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cellops.classifier.predict import (DEFAULT_UNCERTAINTY, classify_files, classify_with_uncertainty,
                                        mc_dropout_probabilities)
from cellops.classifier.specs import ClassifierServing
from cellops.classifier.train import predict_probabilities
from cellops.io import encode_image
from cellops.uncertainty import normalised_entropy

SETTINGS = ClassifierServing(classes=("ec", "other", "third"), positive_class="ec", channels=1, size=8, batch_size=2)


class MeanBrightness(nn.Module):
    """Logits from the mean brightness m of the image: class 0 for dark, 1 for bright, scale ``sharpness``; an image
    of m = 0.5 is a coin toss between them (class 2 is never likely)."""

    def __init__(self, sharpness: float = 40.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.sharpness = sharpness
        self.norm = nn.BatchNorm1d(1).eval()
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.drop(x.mean(dim=(1, 2, 3))[:, None].repeat(1, 8)).mean(dim=1)
        z = self.sharpness * (m - 0.5)
        return torch.stack([-z, z, torch.full_like(z, -50.0)], dim=1)


def _images(*brightness: float) -> np.ndarray:
    return np.stack([np.full((1, 4, 4), b, np.float32) for b in brightness])


def test_entropy_is_zero_when_sure_one_for_a_coin_toss_and_follows_the_images():
    probabilities, uncertainties = classify_with_uncertainty(MeanBrightness(), _images(0.0, 0.5, 1.0, 0.52),
                                                             SETTINGS, method="entropy")
    np.testing.assert_allclose(probabilities, predict_probabilities(MeanBrightness(), _images(0.0, 0.5, 1.0, 0.52), 2))
    scores = [u.image for u in uncertainties]
    assert scores[0] < 1e-6 and scores[2] < 1e-6  # clear: dark, bright
    assert scores[1] == pytest.approx(np.log(2) / np.log(3), abs=1e-6)  # a toss between two of three classes
    assert scores[0] < scores[3] < scores[1]  # a nearly ambiguous image is less sure than a clear one
    assert {u.method for u in uncertainties} == {"entropy"} and all(u.per_object == () for u in uncertainties)
    assert classify_with_uncertainty(MeanBrightness(), np.zeros((0, 1, 4, 4), np.float32), SETTINGS)[1] == []


def test_normalised_entropy_checks_its_input():
    assert normalised_entropy(np.full((1, 4), 0.25))[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2 classes"):
        normalised_entropy(np.ones((3, 1)))


def test_mc_dropout_is_seeded_leaves_the_model_as_it_was_and_sees_what_dropout_changes():
    model = MeanBrightness(sharpness=10.0, dropout=0.5).eval()
    images = _images(0.0, 0.55)
    state = torch.random.get_rng_state()
    first = mc_dropout_probabilities(model, images, batch_size=2, samples=8, seed=3)
    assert torch.equal(state, torch.random.get_rng_state())  # torch's generator left alone
    np.testing.assert_array_equal(first, mc_dropout_probabilities(model, images, batch_size=2, samples=8, seed=3))
    assert first.shape == (8, 2, 3) and not model.training and not model.drop.training and not model.norm.training
    assert first[:, 1, 1].std() > 0.01  # dropout changes the answer for the image near the boundary
    probabilities, uncertainties = classify_with_uncertainty(model, images, SETTINGS, method="mc-dropout")
    np.testing.assert_allclose(probabilities, predict_probabilities(model, images, 2))  # the served labels stay
    assert uncertainties[0].image < uncertainties[1].image and uncertainties[1].method == "mc-dropout"


def test_mc_dropout_is_refused_for_a_network_without_dropout_and_unknown_methods_are_named():
    with pytest.raises(ValueError, match="MeanBrightness has no dropout layer"):
        classify_with_uncertainty(MeanBrightness(), _images(0.3), SETTINGS, method="mc-dropout")
    with pytest.raises(ValueError, match="unknown uncertainty method 'ensembles'"):
        classify_with_uncertainty(MeanBrightness(), _images(0.3), SETTINGS, method="ensembles")
    assert DEFAULT_UNCERTAINTY in ("entropy", "mc-dropout")


def test_classified_files_carry_their_uncertainty_when_asked(tmp_path):
    from models.classifier import build_classifier

    net = build_classifier("efficientcellnet", num_classes=2, in_channels=1, options={"widths": [8, 16]}).eval()
    settings = ClassifierServing(classes=("ec", "other"), positive_class="ec", channels=1, size=32, batch_size=4)
    files = []
    for i, value in enumerate((40, 120, 200)):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(encode_image(np.full((40, 50), value, np.uint8) + np.eye(40, 50, dtype=np.uint8), "png"))
    plain, _, _, _ = classify_files(net, files, settings)
    rows, _, _, images = classify_files(net, files, settings, uncertainty=True)
    assert "uncertainty" not in plain[0] and [r["label"] for r in rows] == [r["label"] for r in plain]
    _, expected = classify_with_uncertainty(net, images, settings)
    assert [r["uncertainty"] for r in rows] == pytest.approx([u.image for u in expected], abs=1e-6)
    assert {r["uncertainty_method"] for r in rows} == {DEFAULT_UNCERTAINTY}
