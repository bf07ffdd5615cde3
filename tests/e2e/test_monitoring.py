"""The monitoring pipeline end to end on a project of its own: a tiny U-Net registered in the project's MLflow store
with an out-of-distribution reference (``record_ood``), a hand-written request log in the services' format (the
model's requests, in distribution then shifted, beside another service's), ``zenml pipeline run
pipelines.monitoring.monitoring_pipeline`` -> the drift report as an HTML artifact with its numbers as run metadata;
a version without a reference stops the run naming it."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import mlflow
import numpy as np
import pytest
import yaml
from conftest import build_project
from helpers import run_command
from mlflow import MlflowClient

from cellops.ood import fit_reference
from cellops.unet.ood import FEATURE_NAMES
from cellops.unet.specs import UNetServing
from models.unet import UNet
from tracking import tags
from tracking.registry import record_ood, register_and_maybe_promote

pytestmark = [pytest.mark.e2e, pytest.mark.minutes(2)]
PIPELINE = ["zenml", "pipeline", "run", "pipelines.monitoring.monitoring_pipeline", "-c"]
NOISE = FEATURE_NAMES.index("log_noise")


def _register(client: MlflowClient, experiment: str, dice: float) -> str:
    settings = UNetServing(tile_size=32, tile_overlap=8, batch_size=4, threshold=0.5)
    with mlflow.start_run(experiment_id=experiment) as run:
        logged = mlflow.pytorch.log_model(UNet(base_channels=4, depth=2).eval(), name="model",
                                          serialization_format="pickle", pip_requirements=[])
        decision = register_and_maybe_promote(
            client, logged.model_uri, "cellops-unet", {"dice": dice},
            {**tags.lineage_to_tags({"data_version": "aaa.dir"}), **tags.inference_to_tags(settings.as_dict()),
             tags.MLFLOW_RUN_ID: run.info.run_id}, promotion_metric="dice", alias="champion", min_improvement=0.0)
    return decision["version"]


def _write_log(path, rows, model: str, start: datetime) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as log:
        for i, row in enumerate(rows):
            log.write(json.dumps({
                "time": (start + timedelta(minutes=i)).isoformat().replace("+00:00", "Z"), "service": path.parent.name,
                "registered_model": model, "model_version": "1", "endpoint": "segment", "ood_score": None,
                "ood_threshold": None, "in_distribution": None, "ood_reason": "",
                "features": dict(zip(FEATURE_NAMES, map(float, row)))}) + "\n")


@pytest.fixture(scope="module")
def monitored(tmp_path_factory):
    """The project, cellops-unet v1 (champion, with a reference) and v2 (without), and the services' logs."""
    root, env = build_project(tmp_path_factory)
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        client = MlflowClient(uri)
        experiment = client.create_experiment("monitoring-test", artifact_location=(root / "mlruns" / "monitoring")
                                              .as_uri())
        with_reference, without = _register(client, experiment, 0.6), _register(client, experiment, 0.5)
    finally:
        mlflow.set_tracking_uri(None)
    rng = np.random.default_rng(0)
    scale = np.linspace(0.5, 2.0, len(FEATURE_NAMES))
    reference = fit_reference("unet", rng.normal(size=(200, len(FEATURE_NAMES))) * scale,
                              rng.normal(size=(100, len(FEATURE_NAMES))) * scale, FEATURE_NAMES)
    record_ood(client, "cellops-unet", with_reference, reference)

    start = datetime(2026, 11, 30, 8, 0, tzinfo=timezone.utc)
    logs = root / "monitoring"
    served = rng.normal(size=(160, len(FEATURE_NAMES))) * scale
    served[80:, NOISE] += 10.0  # from the 81st request on, noisier images than any the model was trained on
    _write_log(logs / "cellops_unet" / "requests.jsonl", served, "cellops-unet", start)
    _write_log(logs / "cellops_classifier" / "requests.jsonl", rng.normal(size=(20, len(FEATURE_NAMES))),
               "cellops-classifier", start)
    return root, env, logs, (with_reference, without)


def _config(root, logs, model_uri: str, name: str) -> str:
    config = yaml.safe_load((root / "configs" / "monitoring.yaml").read_text())
    config["steps"]["load_request_logs"]["parameters"]["log_dir"] = str(logs)
    config["steps"]["report_drift"]["parameters"].update(model_uri=model_uri, window=40,
                                                         report_path=str(root / "reports" / "monitoring.html"))
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_the_pipeline_reports_the_drift_of_the_logged_requests(monitored):
    root, env, logs, _ = monitored
    run_command([*PIPELINE, _config(root, logs, "models:/cellops-unet@champion", "monitoring")], root, env)
    page = (root / "reports" / "monitoring.html").read_text()
    assert "Drift report: cellops-unet v1" in page and "DRIFT" in page and "log_noise" in page
    assert "160 of 180 logged requests were served by cellops-unet" in page

    code = ("import json; from zenml.client import Client; run = Client().get_pipeline('monitoring_pipeline').last_run; "
            "step = run.steps['report_drift']; artifact = step.outputs['drift_report'][0]; "
            "print(json.dumps({'status': str(run.status), 'metadata': run.run_metadata['drift'], "
            "'html': str(artifact.load())[:200], 'type': str(artifact.data_type), "
            "'visualizations': [str(v.type) for v in artifact.visualizations or []]}))")
    found = json.loads(run_command(["python", "-c", code], root, env).stdout.strip().splitlines()[-1])
    assert found["status"].endswith("completed") and "HTMLString" in found["type"]
    assert found["html"].startswith("<!DOCTYPE html>") and any("html" in v.lower() for v in found["visualizations"])
    drift = found["metadata"]
    assert drift["requests"] == 160 and drift["drifted"] == ["log_noise"] and drift["model"] == "cellops-unet v1"
    assert drift["drift"] == drift["ood_excess"] == 1.0 and drift["dataset_drift"] == 0.0  # 1 feature of 13
    assert 0.35 < drift["ood_rate"] < 0.7 and drift["last_window_ood_rate"] > 0.7


def test_a_model_version_without_a_reference_stops_the_run_naming_it(monitored):
    root, env, logs, (_, without) = monitored
    failed = run_command([*PIPELINE, _config(root, logs, f"models:/cellops-unet/{without}", "no_reference")], root,
                         env, check=False)
    assert failed.returncode != 0
    assert f"cellops-unet v{without} has no out-of-distribution reference" in failed.stdout + failed.stderr
