"""Promotion against a real MLflow registry (SQLite store in a temporary folder)."""

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from steps.registry import champion_score, register_and_maybe_promote


@pytest.fixture
def client(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("promotion", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment(experiment_id=experiment)
    yield MlflowClient(uri)
    mlflow.set_tracking_uri(None)


def _register(client, iou):
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(torch.nn.Conv2d(1, 1, 1), name="model", serialization_format="pickle")
        return register_and_maybe_promote(
            client, info.model_uri, "cellops-test", {"foreground_iou": iou, "dice": 0.5}, {"lineage.data_version": "x"},
            promotion_metric="foreground_iou",
        )


def test_worse_model_never_becomes_champion(client):
    first = _register(client, 0.80)
    assert first["promoted"] and first["champion_version_before"] is None
    worse = _register(client, 0.70)
    tie = _register(client, 0.80)
    assert not worse["promoted"] and not tie["promoted"]
    assert champion_score(client, "cellops-test", "champion", "foreground_iou") == (first["version"], 0.8)
    better = _register(client, 0.90)
    assert better["promoted"] and better["champion_score_before"] == 0.8
    champion = client.get_model_version_by_alias("cellops-test", "champion")
    assert champion.version == better["version"]
    assert champion.tags["metric.foreground_iou"] == "0.9" and champion.tags["lineage.data_version"] == "x"
    # Every version is registered, promoted or not.
    assert len(client.search_model_versions("name='cellops-test'")) == 4


def test_an_equal_retrain_is_not_promoted_whatever_its_digits(client):
    score = 0.8575004644108986
    assert _register(client, score)["promoted"]
    again = _register(client, score)
    assert not again["promoted"] and again["champion_score_before"] == score


def test_unknown_promotion_metric_is_refused(client):
    with pytest.raises(KeyError, match="'accuracy' is not among"):
        register_and_maybe_promote(client, "runs:/x/model", "m", {"dice": 1.0}, {}, promotion_metric="accuracy")
