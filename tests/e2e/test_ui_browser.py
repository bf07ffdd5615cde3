"""The MLflow UI and the ZenML dashboard, in a real browser (Debian's headless Chromium, driven by Playwright), over
the end-to-end project's own stores after a U-Net training run: what a user sees after `make ui` and
`make dashboard`. Screenshots are kept under the project's outputs/screenshots/."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from browser import background_server, browser_page, requires_chromium
from helpers import free_port, run_command

pytestmark = [pytest.mark.e2e, requires_chromium, pytest.mark.xdist_group("unet_trained"), pytest.mark.minutes(4)]

ROOT = Path(__file__).resolve().parents[2]


def _shot(page, root: Path, name: str) -> Path:
    path = root / "outputs" / "screenshots" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000, f"{path} is nearly empty"
    return path


def _close_assistant(page) -> None:
    """MLflow 3.17 opens an assistant panel beside every page: close it so the screenshots show the runs."""
    close = page.get_by_role("button", name="Close")
    if close.count():
        close.first.click()


def test_mlflow_ui_shows_each_experiments_runs_metrics_data_version_and_the_champion(unet_trained):
    root, env, _ = unet_trained
    makefile = (ROOT / "Makefile").read_text()
    assert "mlflow ui --backend-store-uri $(MLFLOW_URI) --host $(HOST) --port $(UI_PORT)" in makefile
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiments = {}
    for experiment in client.search_experiments():
        runs = [r for r in client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
                if "mlflow.parentRunId" not in r.data.tags]
        if runs:
            experiments[experiment.name] = (experiment.experiment_id, runs)
    assert "cellops-unet" in experiments
    champion = client.get_model_version_by_alias("cellops-unet", "champion")
    run = client.get_run(champion.run_id)
    md5 = run.data.tags["lineage.data_version"]
    port = free_port()
    command = ["mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]  # make ui
    with background_server(command, root, env, f"http://127.0.0.1:{port}/health", ready_timeout=180) as health, \
            browser_page() as page:
        base = health.removesuffix("/health")
        # Each experiment's training runs (linked straight to the runs view: MLflow 3.17 opens a GenAI overview).
        for name, (experiment_id, runs) in experiments.items():
            page.goto(f"{base}/#/experiments/{experiment_id}/runs")
            for shown in runs[:3]:
                page.get_by_text(shown.info.run_name).first.wait_for()
            _close_assistant(page)
            _shot(page, root, f"mlflow-{name}-runs")
        # The champion's run: its metrics, training data version (dataset and lineage tag) and registered model.
        page.goto(f"{base}/#/experiments/{experiments['cellops-unet'][0]}/runs/{run.info.run_id}")
        page.get_by_text("test_foreground_iou", exact=True).first.wait_for()
        page.get_by_text(f"em-training-patches ({md5.removesuffix('.dir')})").first.wait_for()
        page.get_by_text("lineage.data_version").first.wait_for()
        body = page.inner_text("body")
        assert md5 in body and f"{run.data.metrics['test_foreground_iou']:.6f}"[:7] in body
        assert "system/cpu_utilization_percentage" in body
        _close_assistant(page)
        _shot(page, root, "mlflow-unet-champion-run")
        # The registry: the model's versions, the champion alias on the promoted one.
        page.goto(f"{base}/#/models/cellops-unet")
        page.get_by_text("@ champion").first.wait_for()
        page.get_by_text(f"Version {champion.version}").first.wait_for()
        _close_assistant(page)
        _shot(page, root, "mlflow-registry-cellops-unet")
    mlflow.set_tracking_uri(None)


def _past_onboarding(page) -> None:
    """A new local ZenML server asks its first visitor for a name, a role and a Slack invitation first."""
    # The first page is either the survey (a new server) or the home page that greets a known user.
    page.locator("input[name=fullName]").or_(page.get_by_text("Welcome back")).first.wait_for()
    for _ in range(6):
        if "/survey" not in page.url:
            return
        name = page.locator("input[name=fullName]")
        if name.count():
            name.fill("cellops test")
            page.locator("input[name=email]").fill("test@example.invalid")
            news = page.get_by_role("checkbox")
            if news.count() and news.first.is_checked():
                news.first.click()
        choices = page.locator("label:has(input[type=radio])")
        if choices.count():
            choices.first.click()
        for label in ("Continue", "Skip this step", "Go to Dashboard"):
            button = page.get_by_role("button", name=label).or_(page.get_by_role("link", name=label))
            if button.count() and button.first.is_enabled():
                button.first.click()
                break
        page.wait_for_timeout(1500)
    raise AssertionError(f"still on the onboarding survey: {page.url}")


def test_zenml_dashboard_shows_the_last_training_runs_dag_and_its_overlay(unet_trained):
    root, env, _ = unet_trained
    makefile = (ROOT / "Makefile").read_text()
    assert "zenml login --local --ip-address $(HOST) --port $(DASHBOARD_PORT)" in makefile
    code = ("from zenml.client import Client; r = Client().list_pipeline_runs(sort_by='desc:created', size=20).items; "
            "r = [x for x in r if x.name.startswith('unet') and str(x.status) == 'completed'][0]; print(r.id, r.name)")
    run_id, run_name = run_command(["python", "-c", code], root, env).stdout.split()[-2:]
    port = free_port()
    dashboard_env = {**env, "ZENML_AUTO_OPEN_DASHBOARD": "false"}
    run_command(["zenml", "login", "--local", "--ip-address", "127.0.0.1", "--port", str(port)], root, dashboard_env)
    try:
        with browser_page() as page:
            page.goto(f"http://127.0.0.1:{port}/")
            _past_onboarding(page)
            page.goto(f"http://127.0.0.1:{port}/projects/default/runs/{run_id}")
            page.get_by_text(run_name).first.wait_for()
            for step in ("record_lineage", "validate_segmentation_data", "train_unet", "evaluate_unet",
                         "register_unet"):
                page.get_by_text(step, exact=True).first.wait_for()
            _shot(page, root, "zenml-unet-training-dag")
            page.get_by_text("test_overlay", exact=True).first.click()
            page.get_by_role("tab", name="Visualization").first.click()
            # The dashboard asks before it renders an artifact's visualization ("Load Preview").
            image = page.locator("img[src^='data:image'], img[src^='blob:']").first
            preview = page.get_by_role("button", name="Load Preview")
            preview.or_(image).first.wait_for()
            if preview.count():
                preview.first.click()
            image.wait_for()
            assert image.evaluate("img => img.naturalWidth") > 32
            _shot(page, root, "zenml-unet-test-overlay")
    finally:
        # Back to the local store, as the other tests (and `make dashboard-stop`) expect.
        run_command(["zenml", "logout", "--local"], root, env)
