"""U-Net uncertainty from test-time flips and quarter turns: the served mask unchanged, a flip-equivariant model
sure of everything, a model that is not unsure where its views disagree, an ambiguous image less sure than a clear
one, a volume gathered slab by slab as when held whole, and `cellops predict unet --uncertainty` on the batch
engine."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from mlflow import MlflowClient

from cellops.batch import SUMMARY
from cellops.inference import prepare_for_inference
from cellops.uncertainty import DIHEDRAL, FLIPS, Dihedral, Uncertainty, mean_pairwise_iou
from cellops.unet.predict import TTAStatistics, segment, segment_with_uncertainty, stack_uncertainty
from cellops.unet.specs import UNetServing

BASE = dict(tile_size=16, tile_overlap=4, batch_size=4, threshold=0.5)
pytestmark = pytest.mark.minutes(1)


def _pointwise_model() -> torch.nn.Module:
    """sigmoid(8x - 4): a per-pixel model, the same under every flip and turn."""
    conv = torch.nn.Conv2d(1, 1, 1)
    torch.nn.init.constant_(conv.weight, 8.0)
    torch.nn.init.constant_(conv.bias, -4.0)
    return prepare_for_inference(conv)


def _left_neighbour_model() -> torch.nn.Module:
    """sigmoid(40 (x[left] - 0.5)): each pixel takes its left neighbour's value, so turning the image changes which
    neighbour it reads: views disagree wherever neighbours differ."""
    conv = torch.nn.Conv2d(1, 1, (1, 3), padding=(0, 1))
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 40.0
        conv.bias.fill_(-20.0)
    return prepare_for_inference(conv)


def test_the_dihedral_views_are_eight_distinct_symmetries_each_undone_by_its_inverse(rng):
    image = rng.random((5, 7))
    seen = [view.apply(image) for view in DIHEDRAL]
    assert DIHEDRAL[0].name == "identity" and len({v.tobytes() for v in seen}) == 8
    for view, picture in zip(DIHEDRAL, seen):
        np.testing.assert_array_equal(view.invert(picture), image)
    assert set(FLIPS) <= set(DIHEDRAL)
    np.testing.assert_array_equal(Dihedral(True, 2).apply(image), image[::-1])  # the rows flipped


@pytest.mark.parametrize("changes", [{}, {"flip_averaging": True}, {"z_smoothing": 3}])
def test_the_mask_is_what_segment_serves_bit_for_bit(rng, changes):
    torch.manual_seed(0)
    from models.unet import UNet

    model = prepare_for_inference(UNet(base_channels=4, depth=2))
    settings = UNetServing(**{**BASE, "tile_size": 32, "tile_overlap": 8}, **changes)
    for image in (rng.integers(0, 255, (36, 44), dtype=np.uint8), rng.integers(0, 255, (3, 36, 44), dtype=np.uint8)):
        mask, uncertainty = segment_with_uncertainty(model, image, settings)
        np.testing.assert_array_equal(mask, segment(model, image, settings))
        assert uncertainty.pixels.shape == image.shape and uncertainty.pixels.dtype == np.float32
        assert 0.0 <= uncertainty.pixels.min() and uncertainty.pixels.max() <= 1.0 and 0.0 <= uncertainty.image <= 1.0
        assert uncertainty.method == "flip-tta" and uncertainty.per_object == ()


def test_a_model_right_under_every_flip_is_sure_and_one_that_is_not_is_unsure(rng):
    image = (rng.random((40, 40)) > 0.5).astype(np.uint8) * 255
    settings = UNetServing(**{**BASE, "tile_size": 48})  # one tile: no tile border inside the image
    _, sure = segment_with_uncertainty(_pointwise_model(), image, settings)
    assert sure.image < 1e-6 and float(sure.pixels.max()) < 1e-6
    _, unsure = segment_with_uncertainty(_left_neighbour_model(), image, settings)
    assert unsure.image > 0.3
    # Where the views disagree is where the pixel map says so: pixels whose neighbours all agree are sure.
    bright = image >= 128
    agree = bright & np.roll(bright, 1, 0) & np.roll(bright, -1, 0) & np.roll(bright, 1, 1) & np.roll(bright, -1, 1)
    agree[[0, -1]] = agree[:, [0, -1]] = False
    assert float(unsure.pixels[agree].max()) < 0.01 and float(unsure.pixels.max()) > 0.9


def test_an_ambiguous_image_is_less_sure_than_a_clear_one(rng):
    settings = UNetServing(**BASE)
    clear = np.zeros((48, 48), np.uint8)
    clear[12:36, 10:38] = 255  # one large object: the views disagree on its outline only
    ambiguous = (rng.random((48, 48)) > 0.5).astype(np.uint8) * 255  # speckle: every pixel's neighbours differ
    _, clear_u = segment_with_uncertainty(_left_neighbour_model(), clear, settings)
    _, ambiguous_u = segment_with_uncertainty(_left_neighbour_model(), ambiguous, settings)
    assert clear_u.image < 0.3 and ambiguous_u.image > 2 * clear_u.image
    _, empty = segment_with_uncertainty(_left_neighbour_model(), np.zeros((48, 48), np.uint8), settings)
    assert empty.image == 0.0  # nothing anywhere, in every view: sure


def test_the_image_scores_count_what_the_views_say():
    views = np.zeros((8, 4, 4), np.float32)
    views[:, :2, :2] = 1.0  # every view: the same 2x2 object
    views[0, 3, 3] = 1.0  # one view also sees one more pixel
    statistics = TTAStatistics(0.5)
    pixels = statistics.add(views)
    spread = 2 * np.std([1.0] + [0.0] * 7)
    assert pixels[3, 3] == pytest.approx(spread) and pixels[0, 0] == 0.0
    scores = statistics.scores()
    assert scores["foreground-spread"] == pytest.approx(spread / 5)
    assert scores["all-spread"] == pytest.approx(spread / 16)
    masks = list(views >= 0.5)
    assert scores["pairwise-iou"] == pytest.approx(1 - mean_pairwise_iou(masks))


def test_a_volume_gathered_slab_by_slab_scores_as_when_held_whole(rng):
    stack = (rng.random((5, 24, 24)) * 255).astype(np.uint8)
    settings = UNetServing(**BASE, z_smoothing=3, normalization={"mode": "percentile", "low": 1.0, "high": 99.0})
    model = _left_neighbour_model()
    _, whole = segment_with_uncertainty(model, stack, settings)
    halo, slabs = 1, []  # slabs of 2 slices, each read with the z-smoothing halo, as the batch engine reads them
    for start in range(0, 5, 2):
        stop = min(5, start + 2)
        first, last = max(0, start - halo), min(5, stop + halo)
        slabs.append((stack[first:last], slice(start - first, stop - first)))
    gathered = stack_uncertainty(model, slabs, settings, bounds=settings.normalization.bounds(stack))
    assert gathered.pixels is None and gathered.image == pytest.approx(whole.image, abs=1e-6)
    assert gathered.image > 0.1


def test_the_record_is_json_ready_and_checked():
    record = Uncertainty(0.5, "flip-tta", per_object=(np.float32(0.25),), pixels=np.zeros((2, 2), np.float32))
    assert record.as_dict() == {"image": 0.5, "method": "flip-tta", "per_object": [0.25]}
    with pytest.raises(ValueError, match=r"\[0, 1\], got 1.5"):
        Uncertainty(1.5, "entropy")


@pytest.fixture
def unet_registry(tmp_path):
    """A real MLflow SQLite store holding ``cellops-unet`` v1 (champion): a tiny untrained U-Net with its serving
    record (as tests/tracking/test_cli.py registers one)."""
    from models.unet import UNet
    from tracking import tags
    from tracking.registry import register_and_maybe_promote

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("predict", artifact_location=(tmp_path / "artifacts").as_uri())
    settings = UNetServing(tile_size=32, tile_overlap=8, batch_size=4, threshold=0.5)
    torch.manual_seed(0)
    model = UNet(base_channels=4, depth=2).eval()
    with mlflow.start_run(experiment_id=experiment) as run:
        logged = mlflow.pytorch.log_model(model, name="model", serialization_format="pickle", pip_requirements=[])
        register_and_maybe_promote(MlflowClient(uri), logged.model_uri, "cellops-unet", {"dice": 0.5},
                                   {**tags.lineage_to_tags({"data_version": "aaa.dir", "git_commit": "c0ffee"}),
                                    **tags.inference_to_tags(settings.as_dict()), tags.MLFLOW_RUN_ID: run.info.run_id},
                                   promotion_metric="dice", alias="champion", min_improvement=0.0)
    yield uri, model, settings
    mlflow.set_tracking_uri(None)


def test_cli_predict_with_uncertainty_adds_it_to_the_summary_and_redoes_results_without_it(unet_registry, tmp_path,
                                                                                          capsys):
    from cellops.unet.predict import load_for_inference
    from tracking.cli import main

    uri, model, settings = unet_registry
    volume = np.random.default_rng(0).integers(0, 255, (3, 40, 48), dtype=np.uint8)
    good = tmp_path / "in" / "a.tif"
    good.parent.mkdir()
    tifffile.imwrite(good, volume)
    out = tmp_path / "out"
    assert main(["predict", "unet", str(good), "--out", str(out), "--slab", "2", "--tracking-uri", uri]) == 0
    assert "uncertainty" not in pd.read_csv(out / SUMMARY).columns
    capsys.readouterr()
    # Asked for now: the cached result has none, so the file is predicted again.
    assert main(["predict", "unet", str(good), "--out", str(out), "--slab", "2", "--uncertainty",
                 "--tracking-uri", uri]) == 0
    assert "with its uncertainty" in capsys.readouterr().out
    summary = pd.read_csv(out / SUMMARY)
    assert list(summary["status"]) == ["done"] and summary["uncertainty_method"][0] == "flip-tta"
    served = load_for_inference(model)
    _, expected = segment_with_uncertainty(served, volume, settings)
    assert summary["uncertainty"][0] == pytest.approx(expected.image, abs=1e-5)
    np.testing.assert_array_equal(tifffile.imread(out / "a_mask.tif") > 0, segment(served, volume, settings))
    assert main(["predict", "unet", str(good), "--out", str(out), "--uncertainty", "--tracking-uri", uri]) == 0
    again = pd.read_csv(out / SUMMARY)
    assert list(again["status"]) == ["skipped"] and again["uncertainty"][0] == summary["uncertainty"][0]
