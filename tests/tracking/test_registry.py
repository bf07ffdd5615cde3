"""Promotion against a real MLflow registry (SQLite store in a temporary folder)."""

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from tracking import tags
from tracking.registry import champion_version, describe_versions, register_and_maybe_promote, resolve_version


@pytest.fixture
def client(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("promotion", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment(experiment_id=experiment)
    yield MlflowClient(uri)
    mlflow.set_tracking_uri(None)


def _register(client, iou, *, data_version="x.dir", metrics=None, rescore=None, name=None, weights="w1"):
    with mlflow.start_run():
        # Stated requirements: MLflow would otherwise infer them by importing the model in a subprocess (seconds each).
        info = mlflow.pytorch.log_model(torch.nn.Conv2d(1, 1, 1), name="model", serialization_format="pickle",
                                        pip_requirements=["torch"])
        return register_and_maybe_promote(
            client, info.model_uri, "cellops-test", metrics or {"foreground_iou": iou, "dice": 0.5},
            {**tags.lineage_to_tags({"data_version": data_version}), **tags.inference_to_tags({"tile_size": 64}),
             **({tags.MODEL_NAME: name} if name else {}), tags.WEIGHTS_SHA256: weights},
            promotion_metric="foreground_iou", alias="champion", min_improvement=0.0, rescore=rescore,
        )


def test_worse_model_never_becomes_champion(client):
    first = _register(client, 0.80)
    assert first["promoted"] and first["champion_version_before"] is None
    worse = _register(client, 0.70)
    tie = _register(client, 0.80)
    assert not worse["promoted"] and not tie["promoted"]
    assert str(champion_version(client, "cellops-test", "champion").version) == first["version"]
    better = _register(client, 0.90)
    assert better["promoted"] and better["champion_score_before"] == 0.8
    assert better["champion_rescored_score"] is None  # same data version: the recorded score is comparable
    champion = client.get_model_version_by_alias("cellops-test", "champion")
    assert str(champion.version) == better["version"]
    assert champion.tags["metric.foreground_iou"] == "0.9" and champion.tags["lineage.data_version"] == "x.dir"
    # Every version is registered, promoted or not, except the tie: the same model scoring the same is the
    # champion again, not a new version.
    assert not tie["registered"] and tie["version"] is None and "duplicate" in tie["reason"]
    assert len(client.search_model_versions("name='cellops-test'")) == 3


def test_an_equal_retrain_is_not_promoted_whatever_its_digits(client):
    score = 0.8575004644108986
    assert _register(client, score)["promoted"]
    again = _register(client, score)
    assert not again["promoted"] and again["champion_score_before"] == score and not again["registered"]


def test_a_retrain_with_other_weights_that_ties_on_every_score_is_registered(client):
    # Another learning rate, the same scores to the last digit: another model, kept (not dropped as a duplicate).
    assert _register(client, 0.8, weights="lr-0.01")["promoted"]
    other = _register(client, 0.8, weights="lr-0.02")
    assert other["registered"] and not other["promoted"] and other["version"] == "2"
    same = _register(client, 0.8, weights="lr-0.01")  # the champion again: weights, settings, data and scores
    assert not same["registered"] and "duplicate" in same["reason"]


def test_another_model_that_ties_is_registered_but_not_promoted(client):
    _register(client, 0.8, name="unet")
    other = _register(client, 0.8, name="unet_wide")
    assert other["registered"] and not other["promoted"] and other["version"] == "2"


def test_a_model_trained_on_modified_data_is_never_promoted(client):
    _register(client, 0.5)
    edited = _register(client, 0.99, data_version="x.dir+modified", rescore=lambda champion: {"foreground_iou": 0.5})
    assert edited["registered"] and not edited["promoted"] and "never promoted" in edited["reason"]
    assert str(champion_version(client, "cellops-test", "champion").version) == "1"
    first_ever = register_and_maybe_promote  # a first model on untracked data is not promoted either
    with mlflow.start_run():
        # Stated requirements: MLflow would otherwise infer them by importing the model in a subprocess (seconds each).
        info = mlflow.pytorch.log_model(torch.nn.Conv2d(1, 1, 1), name="model", serialization_format="pickle",
                                        pip_requirements=["torch"])
        lone = first_ever(client, info.model_uri, "cellops-other", {"foreground_iou": 0.9},
                          tags.lineage_to_tags({"data_version": "untracked"}), promotion_metric="foreground_iou",
                          alias="champion", min_improvement=0.0)
    assert lone["registered"] and not lone["promoted"] and champion_version(client, "cellops-other", "champion") is None


def test_a_champion_scored_on_other_data_is_rescored_on_the_candidates_test_data(client):
    _register(client, 0.95, data_version="old.dir")  # a high score on easier (other) data
    seen = []
    decision = _register(client, 0.85, data_version="new.dir",
                         rescore=lambda champion: seen.append(champion.version) or {"foreground_iou": 0.80})
    assert [str(v) for v in seen] == ["1"]
    assert decision["promoted"] and decision["champion_recorded_score"] == 0.95
    assert decision["champion_rescored_score"] == 0.80 and decision["champion_score_before"] == 0.80


def test_a_champion_without_the_promotion_metric_is_rescored_not_ignored(client):
    _register(client, 0.0, metrics={"dice": 0.9, "foreground_iou": 0.9})
    # The promotion metric changes: the champion recorded no "recall", so it is measured, not skipped.
    with mlflow.start_run():
        # Stated requirements: MLflow would otherwise infer them by importing the model in a subprocess (seconds each).
        info = mlflow.pytorch.log_model(torch.nn.Conv2d(1, 1, 1), name="model", serialization_format="pickle",
                                        pip_requirements=["torch"])
        decision = register_and_maybe_promote(
            client, info.model_uri, "cellops-test", {"recall": 0.5}, tags.lineage_to_tags({"data_version": "x.dir"}),
            promotion_metric="recall", alias="champion", min_improvement=0.0, rescore=lambda c: {"recall": 0.7})
    assert not decision["promoted"] and decision["champion_score_before"] == 0.7


def test_incomparable_champion_without_a_way_to_rescore_is_an_error(client):
    _register(client, 0.9, data_version="old.dir")
    with pytest.raises(ValueError, match="no foreground_iou measured on data version new.dir"):
        _register(client, 0.5, data_version="new.dir")


def test_unknown_promotion_metric_is_refused(client):
    with pytest.raises(KeyError, match="'accuracy' is not among"):
        register_and_maybe_promote(client, "runs:/x/model", "m", {"dice": 1.0}, {}, promotion_metric="accuracy",
                                   alias="champion", min_improvement=0.0)


def test_versions_are_described_with_lineage_metrics_and_settings(client):
    _register(client, 0.8)
    _register(client, 0.7)
    records = describe_versions(client, "cellops-test")
    assert [r["model_version"] for r in records] == ["2", "1"]
    assert records[1]["aliases"] == ["champion"] and records[0]["aliases"] == []
    assert records[1]["metrics"]["foreground_iou"] == 0.8 and records[1]["data_version"] == "x.dir"
    assert records[1]["inference_settings"] == {"tile_size": 64}
    assert resolve_version(client, "cellops-test", None)["model_version"] == "1"
    assert resolve_version(client, "cellops-test", "2")["metrics"]["foreground_iou"] == 0.7
    with pytest.raises(LookupError, match="no version 9"):
        resolve_version(client, "cellops-test", "9")


def test_scores_recorded_on_edited_data_are_never_compared_as_equal(client):
    # Two runs on differently edited data both record "<md5>+modified": the same string, not the same data.
    # Neither can be promoted; against a clean champion, the recorded score is never taken as comparable.
    _register(client, 0.80, data_version="abc.dir")
    decision = _register(client, 0.85, data_version="abc.dir+modified", rescore=lambda c: {"foreground_iou": 0.80})
    assert decision["champion_rescored_score"] == 0.80 and not decision["promoted"] and decision["registered"]
    again = _register(client, 0.85, data_version="abc.dir+modified", rescore=lambda c: {"foreground_iou": 0.80})
    assert again["registered"] and not again["promoted"]


def test_equal_sensitivity_is_decided_by_specificity(client):
    def register(sensitivity, specificity):
        with mlflow.start_run():
            info = mlflow.pytorch.log_model(torch.nn.Conv2d(1, 1, 1), name="model", serialization_format="pickle",
                                            pip_requirements=["torch"])
            return register_and_maybe_promote(
                client, info.model_uri, "cellops-cls", {"sensitivity": sensitivity, "specificity": specificity},
                tags.lineage_to_tags({"data_version": "x.dir"}), promotion_metric="sensitivity", alias="champion",
                min_improvement=0.0, tie_breakers=["specificity"])

    assert register(0.95, 0.90)["promoted"]
    assert not register(0.95, 0.90)["promoted"]  # a full tie keeps the champion
    assert not register(0.94, 0.99)["promoted"]  # a better tie-breaker cannot make up for lower sensitivity
    decided = register(0.95, 0.93)
    assert decided["promoted"] and decided["tie_breakers"] == ["specificity"]
    assert str(client.get_model_version_by_alias("cellops-cls", "champion").version) == decided["version"]


def test_a_lower_is_better_promotion_metric_is_refused(client):
    with pytest.raises(ValueError, match="lower is better"):
        register_and_maybe_promote(client, "runs:/x/model", "m", {"loss": 0.1, "accuracy": 0.9}, {},
                                   promotion_metric="accuracy", tie_breakers=["loss"], alias="champion",
                                   min_improvement=0.0)


def test_a_champion_scored_on_another_test_set_of_the_same_data_version_is_rescored(client):
    def register(score, test_set, rescore=None):
        with mlflow.start_run():
            info = mlflow.pytorch.log_model(torch.nn.Conv2d(1, 1, 1), name="model", serialization_format="pickle",
                                            pip_requirements=["torch"])
            return register_and_maybe_promote(
                client, info.model_uri, "cellops-split", {"accuracy": score},
                tags.lineage_to_tags({"data_version": "x.dir", tags.TEST_SET: test_set}), promotion_metric="accuracy",
                alias="champion", min_improvement=0.0, rescore=rescore)

    register(0.99, "easy-split")
    decision = register(0.90, "other-split", rescore=lambda champion: {"accuracy": 0.85})
    assert decision["champion_rescored_score"] == 0.85 and decision["promoted"]
