"""A pipeline run's metrics and curves as files that DVC tracks (`dvc metrics diff`, `dvc plots`, `dvc exp`).

MLflow holds every run; DVC compares files between git revisions and experiments. The training stages of
``dvc.yaml`` run a pipeline, then :func:`export_latest_run` writes the run's final metrics (``metrics.json``,
numbers only, so DVC can diff them) and its per-epoch curves (``curves.csv``) beside a ``run.json`` naming the run.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from mlflow import MlflowClient

PARENT_TAG = "mlflow.parentRunId"


def _finished_metrics(run) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in sorted(run.data.metrics.items()) if not k.startswith("system/")}


def _curves(client: MlflowClient, run, prefix: str) -> dict[str, dict[int, float]]:
    """Per-step values of every metric logged at more than one step (the training curves)."""
    curves = {}
    for key in sorted(run.data.metrics):
        if key.startswith("system/"):
            continue
        history = client.get_metric_history(run.info.run_id, key)
        if len({m.step for m in history}) > 1:
            curves[f"{prefix}{key}"] = {m.step: round(float(m.value), 6) for m in history}
    return curves


def export_latest_run(tracking_uri: str, experiment: str, out_dir: str | Path) -> dict:
    """Write the latest finished top-level run of ``experiment`` (and its nested runs, one per model where a
    pipeline trains several) to ``out_dir``: ``metrics.json`` ({metric: value}, nested runs' under their run
    name), ``curves.csv`` (step and one column per curve, nested ones prefixed ``<run name>/``) and ``run.json``
    (run ids, status, data version). Returns what ``metrics.json`` holds.

    Raises LookupError naming the experiment when it has no finished run.
    """
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise LookupError(f"no MLflow experiment {experiment!r} in {tracking_uri} (there are {names})")
    runs = client.search_runs([found.experiment_id], filter_string="attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=200)
    top = next((r for r in runs if PARENT_TAG not in r.data.tags), None)
    if top is None:
        raise LookupError(f"experiment {experiment!r} has no finished run: run its training pipeline first")
    children = sorted((r for r in runs if r.data.tags.get(PARENT_TAG) == top.info.run_id),
                      key=lambda r: r.info.run_name or r.info.run_id)
    metrics: dict = _finished_metrics(top)
    curves = _curves(client, top, "")
    for child in children:
        name = child.info.run_name or child.info.run_id
        if child.data.metrics:
            metrics[name] = _finished_metrics(child)
            curves.update(_curves(client, child, f"{name}/"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    steps = sorted({step for curve in curves.values() for step in curve})
    with open(out / "curves.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", *curves])
        for step in steps:
            writer.writerow([step, *(curve.get(step, "") for curve in curves.values())])
    (out / "run.json").write_text(json.dumps({
        "experiment": experiment, "run_id": top.info.run_id, "run_name": top.info.run_name,
        "nested_runs": {c.info.run_name: c.info.run_id for c in children},
        "data_version": top.data.tags.get("lineage.data_version"), "git_commit": top.data.tags.get("lineage.git_commit"),
    }, indent=2, sort_keys=True) + "\n")
    return metrics
