"""End to end: the three classical pipelines on tiny data, in a fresh project copy (see conftest.project)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from helpers import run_command

from conftest import BIN, ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.minutes(3)]


@pytest.mark.parametrize(
    "module,pipeline,experiment,metric,minimum",
    [
        ("colonies", "colony_pipeline", "cellops-colonies", "detection_f1", 0.9),
        ("nuclei", "nuclei_pipeline", "cellops-nuclei", "nucleus_f1", 0.85),
        ("calcium", "calcium_pipeline", "cellops-calcium", "median_trace_correlation", 0.95),
    ],
)
def test_pipeline_runs_logs_and_scores(project, module, pipeline, experiment, metric, minimum):
    root, env = project
    run_command(["zenml", "pipeline", "run", f"pipelines.{module}.{pipeline}", "-c", f"configs/{module}.yaml"],
                root, env)
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.metrics[metric] >= minimum
    assert run.data.tags["lineage.data_version"].endswith(".dir")
    assert any(k.startswith("analysis.") for k in run.data.params)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "tables" in artifacts
    # Tables and figures are ZenML artifacts too (asked of the project's own ZenML store).
    listing = run_command(["python", "-c", "import json; from zenml.client import Client; "
                           f"run = Client().get_pipeline('{pipeline}').last_run; "
                           "print(json.dumps([n for s in run.steps.values() for n in s.outputs]))"], root, env)
    outputs = set(json.loads(listing.stdout.strip().splitlines()[-1]))
    expected = {"colonies": {"colony_table", "colony_overlay"}, "nuclei": {"nucleus_table", "shape_by_group_plot"},
                "calcium": {"cell_responses", "group_curves_plot"}}[module]
    assert expected <= outputs
    if module == "nuclei":
        stats = pd.read_csv(root / "outputs/nuclei/nuclei_statistics.csv")
        assert {"one-way ANOVA", "Welch t-test", "Kruskal-Wallis", "Mann-Whitney U"} <= set(stats["test"])
        assert set(stats.loc[stats["test"] == "one-way ANOVA", "level"]) == {"replicate"}
        assert (root / "outputs/nuclei/nuclei_by_group.png").is_file()
        assert (root / "outputs/nuclei/nuclei_superplot.png").is_file()
    if module == "calcium":
        curves = pd.read_csv(root / "outputs/calcium/calcium_group_curves.csv")
        assert set(curves["group"]) == {"Control", "Coating", "Film"}


def test_make_reports_reproduces_the_reports_without_an_activated_venv(project, tmp_path):
    """`make reports` as a user types it on a fresh clone: the venv's tools are not on PATH. It runs in its own
    copy of the project, so the shared fixture stays as the other tests expect it."""
    shared, env = project
    root = tmp_path / "clone"
    shutil.copytree(shared, root, symlinks=True)
    env = {**env, "PYTHONPATH": str(root)}
    for name in ("dvc.yaml", "Makefile", "requirements.lock", "pyproject.toml"):
        shutil.copy2(ROOT / name, root / name)  # copy2 keeps mtimes: make must not reinstall the venv
    (root / ".venv").symlink_to(ROOT / ".venv")
    bare = {**env, "PATH": os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if Path(p) != BIN)}
    assert shutil.which("cellops", path=bare["PATH"]) is None  # as in a new shell
    shown = run_command(["make", "-o", ".venv/.installed", "reports"], root, bare).stdout
    assert "reports/colonies/metrics.json" in shown and "detection_f1" in shown
    colonies = json.loads((root / "reports/colonies/metrics.json").read_text())
    calcium = json.loads((root / "reports/calcium/metrics.json").read_text())
    assert colonies["detection_f1"] >= 0.9 and calcium["median_trace_correlation"] >= 0.95
    status = run_command([str(BIN / "dvc"), "status", "colonies_report", "nuclei_report", "calcium_report"], root,
                         bare).stdout
    assert "up to date" in status
