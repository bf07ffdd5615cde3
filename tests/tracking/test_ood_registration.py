"""An out-of-distribution reference registered with its version (a real MLflow store in a temporary folder), carried
into the BentoML model, and the one the tiny U-Net training run registers."""

import logging
from pathlib import Path

import bentoml
import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from cellops.ood import OOD_ARTIFACTS, REFERENCE_FILE, OODReference, fit_reference
from tracking import tags
from tracking.registry import (describe_versions, load_ood_reference, record_ood, register_and_maybe_promote,
                               resolve_version)

# The last test reads the session's shared U-Net training: the whole module runs in its group.
pytestmark = pytest.mark.xdist_group("unet_trained")

NAME = "cellops-ood-test"
FEATURES = ("a", "b", "c")


@pytest.fixture
def client(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("ood", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment(experiment_id=experiment)
    yield MlflowClient(uri)
    mlflow.set_tracking_uri(None)


def _register(client, iou: float) -> str:
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(torch.nn.Conv2d(1, 1, 1), name="model", serialization_format="pickle",
                                        pip_requirements=["torch"])
        decision = register_and_maybe_promote(
            client, info.model_uri, NAME, {"foreground_iou": iou},
            {**tags.lineage_to_tags({"data_version": "x.dir"}), **tags.inference_to_tags({"tile_size": 64}),
             tags.WEIGHTS_SHA256: str(iou)},
            promotion_metric="foreground_iou", alias="champion", min_improvement=0.0)
    return decision["version"]


def _reference(seed: int = 0) -> OODReference:
    rng = np.random.default_rng(seed)
    return fit_reference("demo", rng.normal(size=(60, 3)), rng.normal(size=(40, 3)), FEATURES)


def test_a_recorded_reference_round_trips_with_its_tags(client):
    version = _register(client, 0.8)
    reference = _reference()
    recorded = record_ood(client, NAME, version, reference)
    stored = client.get_model_version(NAME, version)
    assert {key: stored.tags[key] for key in recorded} == recorded
    assert float(stored.tags[tags.OOD_THRESHOLD]) == reference.threshold
    assert float(stored.tags[tags.OOD_FALSE_ALARM_RATE]) == 0.05
    assert stored.tags[tags.OOD_SCORE] == reference.score_name and stored.tags[tags.OOD_FEATURES] == '["a","b","c"]'
    artifacts = {a.path for a in client.list_artifacts(stored.run_id, OOD_ARTIFACTS)}
    assert artifacts == {f"{OOD_ARTIFACTS}/{REFERENCE_FILE}"}

    for tracking in (client, mlflow.get_tracking_uri()):  # a client or the store's URI
        loaded = load_ood_reference(tracking, NAME, version)
        assert loaded.threshold == reference.threshold and loaded.feature_names == FEATURES
        np.testing.assert_array_equal(loaded.calibration_scores, reference.calibration_scores)
        np.testing.assert_array_equal(loaded.precision, reference.precision)
        assert loaded.verdict(np.full(3, 9.0)).in_distribution is False
    # The registry's record (what /metadata and `cellops lineage` show) carries the threshold and the rate.
    record = resolve_version(client, NAME, "@champion")
    assert record["ood"] == {"threshold": reference.threshold, "false_alarm_rate": 0.05,
                             "score": reference.score_name, "features": list(FEATURES)}
    assert describe_versions(client, NAME)[0]["ood"] == record["ood"]


def test_a_version_without_a_reference_has_none(client):
    version = _register(client, 0.8)
    assert load_ood_reference(client, NAME, version) is None
    assert resolve_version(client, NAME, version)["ood"] is None
    # Tagged, but its run lost the artifact: said, not taken for a version without one.
    client.set_model_version_tag(NAME, version, tags.OOD_THRESHOLD, "3.0")
    with pytest.raises(LookupError, match="holds no ood/reference.json"):
        load_ood_reference(client, NAME, version)


def test_each_version_keeps_its_own_reference(client):
    first, second = _register(client, 0.8), _register(client, 0.9)
    record_ood(client, NAME, first, _reference(0))
    record_ood(client, NAME, second, _reference(1))
    assert load_ood_reference(client, NAME, first).threshold == _reference(0).threshold
    assert load_ood_reference(client, NAME, second).threshold == _reference(1).threshold


def test_the_bento_model_carries_the_reference_and_a_version_without_one_is_imported_all_the_same(client, caplog):
    from steps.deployment import import_with_runtime, without_none

    with_reference, without = _register(client, 0.8), _register(client, 0.9)
    reference = _reference()
    record_ood(client, NAME, with_reference, reference)
    for version in (with_reference, without):
        record = resolve_version(client, NAME, version)
        metadata = without_none({**record, "ood_policy": "flag"})
        with caplog.at_level(logging.WARNING):
            bento_model = import_with_runtime("cellops-ood-test", NAME, record, metadata)
        stored = bentoml.models.get(bento_model.tag)
        assert stored.info.metadata["ood_policy"] == "flag"
        if version == with_reference:
            loaded = OODReference.load(stored.path_of(f"{OOD_ARTIFACTS}/{REFERENCE_FILE}"))
            assert loaded.threshold == reference.threshold
            assert stored.info.metadata["ood"]["threshold"] == reference.threshold
        else:
            assert not Path(stored.path_of(OOD_ARTIFACTS)).exists()
            assert "ood" not in stored.info.metadata
            assert "has no out-of-distribution reference" in caplog.text


def test_the_deployment_refuses_an_unknown_policy():
    from cellops.ood import check_policy

    with pytest.raises(ValueError, match="flag, refuse"):
        check_policy("ignore")


@pytest.mark.e2e
def test_the_tiny_unet_run_registers_a_reference_that_keeps_its_false_alarm_rate(unet_trained):
    import tifffile
    import yaml

    from cellops.unet.ood import FEATURE_NAMES, reference_rows
    from cellops.unet.predict import load_for_inference
    from cellops.unet.specs import UNetServing

    root, _, _ = unet_trained
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(uri)
    champion = client.get_model_version_by_alias("cellops-unet", "champion")
    reference = load_ood_reference(uri, "cellops-unet", champion.version)
    config = yaml.safe_load((root / "tests" / "configs" / "unet_tiny.yaml").read_text())
    settings = config["steps"]["record_unet_ood"]["parameters"]
    assert reference.family == "unet" and reference.feature_names == FEATURE_NAMES
    assert (reference.n_reference, reference.n_calibration) == (settings["reference_crops"],
                                                                settings["calibration_crops"])
    assert reference.false_alarm_rate == settings["false_alarm_rate"] == 0.05
    assert np.mean(reference.calibration_scores > reference.threshold) <= reference.false_alarm_rate
    assert float(champion.tags[tags.OOD_THRESHOLD]) == reference.threshold
    assert client.get_run(champion.run_id).data.metrics["ood_threshold"] == pytest.approx(reference.threshold)

    # Held out from both the reference and its calibration: crops of the test volume, and the same crops shifted.
    mlflow.set_tracking_uri(uri)
    try:
        model = load_for_inference(mlflow.pytorch.load_model(f"models:/cellops-unet/{champion.version}",
                                                             map_location="cpu"))
    finally:
        mlflow.set_tracking_uri(None)
    served = UNetServing.from_dict(tags.inference_from_tags(champion.tags))
    test = tifffile.imread(root / "data" / "em" / "testing.tif")
    sizes = tuple(settings["crop_sizes"])
    held_out = reference.scores(reference_rows(model, test, served, count=60, sizes=sizes, seed=11))
    inverted = reference.scores(reference_rows(model, test.max() - test, served, count=20, sizes=sizes, seed=11))
    assert np.mean(held_out > reference.threshold) <= 0.2, np.sort(held_out)
    assert np.mean(inverted > reference.threshold) >= 0.9, np.sort(inverted)
