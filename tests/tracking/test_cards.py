"""Model cards on the session's tiny U-Net training (tests/configs/unet_tiny.yaml): the training pipeline keeps the
card with the version it registered and shows it in ZenML as an HTML artifact; `cellops card` prints or writes the
card of any version, also one registered before cards existed; unknown models and versions exit 2 naming what
exists. Every ZenML-reading call runs as a subprocess with the project's own ZenML state."""

from __future__ import annotations

import json
import sys

import mlflow
import pytest
from helpers import run_command

from tracking import tags
from tracking.cards import CARD_TAG, card_artifacts, load_card

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("unet_trained"), pytest.mark.minutes(2)]

#: A registered model outside the cellops-* names (`cellops models` in the other tests lists those only).
LEGACY = "legacy-unet"


@pytest.fixture(scope="module")
def trained(unet_trained):
    root, env, result = unet_trained
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)  # a version's source (models:/m-...) resolves against the default store
    yield root, {**env, "MLFLOW_TRACKING_URI": uri}, mlflow.MlflowClient(uri)
    mlflow.set_tracking_uri(None)


def cellops(root, env, *args, check=True):
    return run_command(["cellops", *args], root, env, check=check)


def test_the_training_pipeline_keeps_the_card_with_the_version_and_shows_it_in_zenml(trained):
    root, env, client = trained
    champion = client.get_model_version_by_alias("cellops-unet", "champion")
    assert champion.tags[CARD_TAG] == f"{card_artifacts('cellops-unet', champion.version)}/model_card.md"
    card = load_card(client, "cellops-unet", champion.version)
    md = card.markdown
    assert md.startswith(f"# Model card: cellops-unet version {champion.version}\n")
    # Everything the steps before it recorded: runtime checks, OOD reference, robustness sweep, CIs, reproduce.
    assert f"| DVC data version | {champion.tags['lineage.data_version']} |" in md
    assert "synthetic (the built-in generator's images)" in md
    assert "Trained and tested on synthetic images only" in md
    low, high = (float(champion.tags[f"metric.foreground_iou_ci_{end}"]) for end in ("low", "high"))
    assert f"| [{low:.4g}, {high:.4g}] |" in md.split("## Robustness")[0]
    assert "## Out-of-distribution reference\n\n|" in md and "## Runtime checks\n\nEach runtime's test metric" in md
    assert f"cellops reproduce cellops-unet:{champion.version}" in md
    assert "From the ZenML model cellops-unet" in md and "FIB-SEM" in md
    assert "<script" not in card.html and card.html.startswith("<!DOCTYPE html>")
    shown = run_command([sys.executable, "-c", (
        "import json; from zenml.client import Client; "
        "run = Client().get_pipeline(name_id_or_prefix='training_pipeline').runs[0]; "
        "step = run.steps['record_model_card']; artifact = step.outputs['model_card'][0]; "
        "print(json.dumps({'type': type(artifact.load()).__name__, 'html': artifact.load()[:200], "
        "'metadata': step.run_metadata.get('model_card')}, default=str))")], root, env).stdout
    found = json.loads(shown.strip().splitlines()[-1])
    assert found["type"] == "HTMLString" and found["html"].startswith("<!DOCTYPE html>")
    assert found["metadata"]["recorded"] and found["metadata"]["versions"][0]["artifacts"] == \
        f"runs:/{champion.run_id}/{card_artifacts('cellops-unet', champion.version)}"


def test_cellops_card_prints_writes_and_names_what_exists(trained, tmp_path):
    root, env, client = trained
    version = client.get_model_version_by_alias("cellops-unet", "champion").version
    printed = cellops(root, env, "card", "cellops-unet@champion").stdout
    assert printed.startswith(f"# Model card: cellops-unet version {version}")
    written = cellops(root, env, "card", "cellops-unet", "--out", str(tmp_path / "card")).stdout.split()
    assert sorted(written) == sorted(str(tmp_path / "card" / f) for f in ("model_card.md", "model_card.html"))
    unknown = cellops(root, env, "card", "cellops-unet:99", check=False)
    assert unknown.returncode == 2 and "cellops-unet has no version 99; its versions: " in unknown.stderr
    absent = cellops(root, env, "card", "no-such-model", check=False)
    assert absent.returncode == 2 and "no registered model 'no-such-model'" in absent.stderr \
        and "cellops-unet" in absent.stderr


def test_a_version_registered_before_cards_gets_one_from_its_config(trained):
    root, env, client = trained
    champion = client.get_model_version_by_alias("cellops-unet", "champion")
    client.create_registered_model(LEGACY)
    legacy = client.create_model_version(LEGACY, champion.source, champion.run_id,
                                         tags={**tags.inference_to_tags({"family": "unet"}),
                                               "metric.foreground_iou": "0.5"})
    assert load_card(client, LEGACY, legacy.version) is None
    md = cellops(root, env, "card", f"{LEGACY}:{legacy.version}").stdout
    assert "From configs/unet.yaml (its model: block; the ZenML model legacy-unet is not in this store)." in md
    assert "## Robustness\n\nNot measured for this version." in md
    assert "No out-of-distribution reference" in md and "It cannot be reproduced; missing:" in md
    assert "no interval recorded" in md
    run_command([sys.executable, "-c", "from mlflow import MlflowClient; from tracking.cards import record_card; "
                 f"record_card(MlflowClient(), {LEGACY!r}, {legacy.version!r})"], root, env)
    kept = load_card(client, LEGACY, legacy.version)
    assert kept is not None and kept.markdown.startswith(f"# Model card: {LEGACY} version {legacy.version}")
    # The two versions share a run: each keeps its own card there.
    assert load_card(client, "cellops-unet", champion.version).markdown.startswith(
        f"# Model card: cellops-unet version {champion.version}")
