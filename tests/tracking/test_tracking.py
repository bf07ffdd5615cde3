"""Plain MLflow/ZenML helpers: tag names round-trip, a checkout never logs into another checkout's store."""

import pytest

from tracking import tags
from tracking.runs import check_store_belongs_to, local_store_path


def test_every_tag_kind_round_trips():
    lineage = {"data_version": "abc.dir", "git_commit": "0" * 40, "data_files": "61"}
    assert tags.lineage_from_tags(tags.lineage_to_tags(lineage)) == lineage
    metrics = {"foreground_iou": 0.8575004644108986, "dice": 1 / 3}
    assert tags.metrics_from_tags(tags.metrics_to_tags(metrics)) == metrics  # full precision
    settings = {"tile_size": 128, "tile_overlap": 0.25, "batch_size": 8, "threshold": 0.5}
    assert tags.inference_from_tags(tags.inference_to_tags(settings)) == settings
    record = tags.version_record("cellops-unet", 3, "run1", {**tags.lineage_to_tags(lineage), **tags.metrics_to_tags(
        metrics), **tags.inference_to_tags(settings), tags.ZENML_RUN_ID: "z1"}, ["champion"])
    assert record["model_version"] == "3" and record[tags.MLFLOW_RUN_ID] == "run1" and record[tags.ZENML_RUN_ID] == "z1"
    assert record["data_version"] == "abc.dir" and record["inference_settings"] == settings


def test_a_copied_checkout_refuses_the_original_store(tmp_path):
    original, copy = tmp_path / "original", tmp_path / "copy"
    check_store_belongs_to(f"sqlite:///{copy}/mlruns/mlflow.db", copy)
    check_store_belongs_to("http://127.0.0.1:5000", copy)  # a shared server is fine
    with pytest.raises(RuntimeError, match="run `make setup` here"):
        check_store_belongs_to(f"sqlite:///{original}/mlruns/mlflow.db", copy)
    assert local_store_path("postgresql://u@localhost/mlflow") is None
