"""Comparing a re-run's metrics with a registered version's (pure), and what lineage a version needs to be
reproduced, and the commands the model card prints (from its record alone)."""

from __future__ import annotations

import math

import pytest
import yaml

from cellops.reproduction import DIFFERS, REPRODUCED, Tolerances, compare_metrics
from tracking.reproduce import load_tolerances, missing_for_reproduction, reproduce_commands

CLEAN = {"registered_model": "cellops-unet", "model_version": "4", "git_commit": "a" * 40,
         "data_version": "0123456789abcdef0123456789abcdef.dir", "pipeline": "pipelines.unet.training_pipeline",
         "run_config": "reproduce/run_config.yaml", "mlflow_run_id": "r1", "zenml_run_id": "z1"}


def test_every_metric_within_its_tolerance_reproduces():
    tolerances = Tolerances(1e-6, {"loss": 1e-3})
    result = compare_metrics("m:1", {"iou": 0.5, "loss": 0.2}, {"iou": 0.5 + 1e-7, "loss": 0.2009}, tolerances)
    assert result.verdict == REPRODUCED
    assert [(c.metric, c.tolerance) for c in result.comparisons] == [("iou", 1e-6), ("loss", 1e-3)]
    assert result.as_dict()["metrics"][1]["difference"] == pytest.approx(0.0009)


def test_a_metric_off_or_missing_differs():
    result = compare_metrics("m:1", {"iou": 0.5, "dice": 0.6, "auc": math.nan}, {"iou": 0.51, "auc": math.nan},
                             Tolerances(0.001, {}))
    by_name = {c.metric: c for c in result.comparisons}
    assert result.verdict == DIFFERS
    assert not by_name["iou"].within and by_name["iou"].difference == pytest.approx(0.01)
    assert by_name["dice"].reproduced is None and not by_name["dice"].within
    assert by_name["auc"].within  # NaN on both sides
    assert "| dice | 0.6 | not measured |" in result.table() and "m:1: differs (1 of 3" in result.table()
    with pytest.raises(ValueError, match="no registered metrics"):
        compare_metrics("m:1", {}, {}, Tolerances(0.0, {}))


def test_tolerances_come_from_the_config_with_command_line_overrides(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "reproduce.yaml").write_text(yaml.safe_dump(
        {"tolerance": {"default": 1e-4, "metrics": {"loss": 1e-3}}}))
    tolerances = load_tolerances(tmp_path, ["dice=0.01", "default=0"])
    assert (tolerances.of("loss"), tolerances.of("dice"), tolerances.of("iou")) == (1e-3, 0.01, 0.0)
    with pytest.raises(ValueError, match="expected METRIC=ABSOLUTE"):
        load_tolerances(tmp_path, ["dice"])
    with pytest.raises(ValueError, match="tolerance dice: must be a finite number >= 0"):
        Tolerances(0.0, {"dice": -1.0})


def test_the_project_config_has_honest_tolerances():
    from pathlib import Path

    tolerances = load_tolerances(Path(__file__).resolve().parents[1], [])
    assert 0 <= tolerances.default <= 1e-3


def test_a_clean_version_is_reproducible_and_gets_the_commands():
    assert missing_for_reproduction(CLEAN) == []
    commands = reproduce_commands(CLEAN)
    assert commands[0] == "cellops reproduce cellops-unet:4"
    assert any(c.startswith(f"git worktree add --detach /tmp/reproduce-cellops-unet-v4 {'a' * 40}") for c in commands)
    assert any("dvc checkout" in c for c in commands)
    assert commands[-1] == "zenml pipeline run pipelines.unet.training_pipeline -c run_config.yaml"


@pytest.mark.parametrize("change, named", [
    ({"git_commit": "abc-dirty"}, "git commit abc-dirty: trained on uncommitted changes"),
    ({"git_commit": "unknown"}, "no git commit recorded"),
    ({"git_commit": None}, "no git commit recorded"),
    ({"data_version": "0123.dir+modified"}, "data version 0123.dir+modified"),
    ({"data_version": "untracked"}, "data version untracked"),
    ({"data_version": None}, "no data version recorded"),
    ({"pipeline": None, "run_config": None, "zenml_run_id": None}, "no training configuration recorded"),
])
def test_missing_lineage_is_named_and_only_the_command_is_given(change, named):
    record = {**CLEAN, **change}
    missing = missing_for_reproduction(record)
    assert len(missing) == 1 and missing[0].startswith(named), missing
    assert reproduce_commands(record) == ["cellops reproduce cellops-unet:4"]


def test_an_older_version_is_rebuilt_from_its_zenml_run():
    record = {**CLEAN, "pipeline": None, "run_config": None}
    assert missing_for_reproduction(record) == []
    assert "ZenML run z1" in reproduce_commands(record)[-1]


def test_the_run_config_is_rebuilt_from_a_zenml_snapshot():
    from types import SimpleNamespace

    from tracking.reproduce import run_config_from_zenml

    def dumps(value):
        return SimpleNamespace(model_dump=lambda **_: value)

    tracker = {"experiment_tracker.mlflow": dumps({"experiment_name": "cellops-unet"})}
    steps = {"train": SimpleNamespace(config=SimpleNamespace(experiment_tracker="mlflow_tracker", settings=tracker,
                                                             parameters={"seed": 0, "sizes": (1, 2)})),
             "load": SimpleNamespace(config=SimpleNamespace(experiment_tracker=None, settings={}, parameters={}))}
    configuration = SimpleNamespace(name="training_pipeline", enable_cache=False, tags=["unet", "unet"],
                                    settings=tracker, model=dumps({"name": "cellops-unet"}),
                                    parameters={"inference": {"tile_size": 64}})
    run = SimpleNamespace(id="z1", snapshot=SimpleNamespace(
        pipeline_spec=SimpleNamespace(source=SimpleNamespace(module="pipelines.unet", attribute="training_pipeline")),
        pipeline_configuration=configuration, step_configurations=steps))
    pipeline, config = run_config_from_zenml(run)
    assert pipeline == "pipelines.unet.training_pipeline"
    assert config["tags"] == ["unet"] and config["enable_cache"] is False
    assert config["parameters"] == {"inference": {"tile_size": 64}} and config["model"] == {"name": "cellops-unet"}
    # Settings a step inherits are written once, at the pipeline; a step without anything of its own is left out.
    assert config["steps"] == {"train": {"experiment_tracker": "mlflow_tracker",
                                         "parameters": {"seed": 0, "sizes": [1, 2]}}}
    with pytest.raises(LookupError, match="ZenML run z1 has no snapshot"):
        run_config_from_zenml(SimpleNamespace(id="z1", snapshot=None))
