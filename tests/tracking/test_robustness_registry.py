"""A robustness sweep kept with its registered version (a real MLflow store in a temporary folder) and read back."""

from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient

from tracking.robustness import ROBUSTNESS_TAG, load_robustness, record_robustness

ROWS = [{"condition": "gaussian_noise 0.25", "kind": "gaussian_noise", "strength": 0.25, "metric": "iou",
         "value": 0.4, "clean_value": 0.6, "difference": -0.2},
        {"condition": "contrast 0.5", "kind": "contrast", "strength": 0.5, "metric": "iou", "value": 0.55,
         "clean_value": 0.6, "difference": -0.05}]


@pytest.fixture
def client(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("robustness", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        pass
    client = MlflowClient(uri)
    client.create_registered_model("m")
    client.create_model_version("m", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    client.create_model_version("m", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    yield client
    mlflow.set_tracking_uri(None)


def test_the_sweep_is_kept_with_its_version_and_read_back(client):
    tags = record_robustness(client, "m", "1", ROWS)
    assert '"worst":"gaussian_noise 0.25"' in tags[ROBUSTNESS_TAG]
    assert client.get_model_version("m", "1").tags[ROBUSTNESS_TAG] == tags[ROBUSTNESS_TAG]
    assert load_robustness(client, "m", "1") == ROWS
    assert load_robustness(client, "m", "2") is None  # registered without one


def test_a_tag_without_its_artifact_is_an_error_naming_it(client):
    client.set_model_version_tag("m", "2", ROBUSTNESS_TAG, "{}")
    with pytest.raises(LookupError, match="tagged with a robustness sweep, but its run .* holds no robustness/"):
        load_robustness(client.tracking_uri, "m", "2")
