"""BioImage Model Zoo packages of the session's tiny trained U-Net (tests/configs/unet_tiny.yaml), through the CLI:
`cellops export bioimageio` writes a package that bioimageio.core's test passes, `cellops import bioimageio`
registers it back as a new version scored on the test set and judged by the promotion gate; bad packages and a
Mask R-CNN version exit 2 saying why. The registry is a copy of the session's, so its versions stay as they were."""

from __future__ import annotations

import shutil
import zipfile

import mlflow
import pytest
import yaml
from helpers import run_command

from cellops import bioimageio
from tracking import tags as names
from tracking.cli import main

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("unet_trained"), pytest.mark.minutes(1.5)]

CONFIG = "tests/configs/unet_tiny.yaml"


@pytest.fixture(scope="module")
def registry(unet_trained, tmp_path_factory):
    root, env, _ = unet_trained
    copy = tmp_path_factory.mktemp("registry")
    shutil.copy(root / "mlruns" / "mlflow.db", copy / "mlflow.db")
    uri = f"sqlite:///{copy / 'mlflow.db'}"
    yield root, {**env, "MLFLOW_TRACKING_URI": uri}, mlflow.MlflowClient(uri), copy


def cellops(root, env, *args, check=True):
    return run_command(["cellops", *args], root, env, check=check)


@pytest.fixture(scope="module")
def exported(registry):
    root, env, client, folder = registry
    cellops(root, env, "export", "bioimageio", "cellops-unet@champion", "--out", str(folder / "out"), "--config", CONFIG)
    champion = client.get_model_version_by_alias("cellops-unet", "champion")
    return folder / "out" / f"cellops-unet-v{champion.version}.bioimageio.zip", champion


def test_exported_champion_passes_bioimageio_core_test_with_card_lineage_and_served_settings(exported):
    path, champion = exported
    result = bioimageio.check_package(path)
    assert result["status"] == "passed", result["errors"]
    with zipfile.ZipFile(path) as archive:
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
        lineage = yaml.safe_load(archive.read("lineage.json"))
        card = archive.read("README.md").decode()
        files = set(archive.namelist())
    assert {"model_card.html", "cover.png", "unet.py", "weights.onnx", "weights.torchscript.pt"} <= files
    assert card.startswith(f"# Model card: cellops-unet version {champion.version}")
    assert lineage["git_commit"] == champion.tags["lineage.git_commit"]
    assert lineage["data_version"] == champion.tags["lineage.data_version"]
    assert lineage["model_version"] == str(champion.version)
    served = yaml.safe_load(champion.tags[names.INFERENCE_SETTINGS])
    binarize = [p for p in rdf["outputs"][0]["postprocessing"] if p["id"] == "binarize"]
    assert binarize[0]["kwargs"]["threshold"] == pytest.approx(served["threshold"])
    x_axis = rdf["inputs"][0]["axes"][-1]
    assert (x_axis["unit"], x_axis["scale"]) == ("micrometer", pytest.approx(0.008))  # params.yaml em.voxel_nm 8


def test_imported_package_is_scored_on_the_test_set_and_meets_the_promotion_gate(registry, exported):
    root, env, client, _ = registry
    path, champion = exported
    before = {v.version for v in client.search_model_versions("name='cellops-unet'")}
    out = cellops(root, env, "import", "bioimageio", str(path), "--config", CONFIG).stdout
    versions = {v.version: v for v in client.search_model_versions("name='cellops-unet'")}
    (new,) = set(versions) - before
    tags = versions[new].tags
    # The same network, served alike, on the same test set: the champion's scores again, not better: not promoted.
    assert float(tags["metric.foreground_iou"]) == pytest.approx(float(champion.tags["metric.foreground_iou"]),
                                                                 abs=1e-6)
    assert client.get_model_version_by_alias("cellops-unet", "champion").version == champion.version
    assert f"cellops-unet v{new}: does not beat the champion" in out
    assert tags[names.MODEL_NAME] == f"bioimageio:cellops-unet v{champion.version}"
    assert tags["bioimageio.source"] == f"cellops-unet:{champion.version}"
    assert tags["bioimageio.sha256"] == bioimageio.sha256(path)
    assert tags["lineage.git_commit"] and tags["lineage.data_version"] == champion.tags["lineage.data_version"]
    assert yaml.safe_load(tags[names.INFERENCE_SETTINGS])["threshold"] == pytest.approx(
        yaml.safe_load(champion.tags[names.INFERENCE_SETTINGS])["threshold"])


def test_bad_packages_and_a_mask_rcnn_version_exit_2_saying_why(registry, exported, tmp_path, monkeypatch, capsys):
    root, env, client, _ = registry
    path, _ = exported
    monkeypatch.chdir(root)  # in-process (the CLI's start-up is the slow part): the project's data and configs
    uri = env["MLFLOW_TRACKING_URI"]

    def refused(*args) -> str:
        assert main([*args, "--tracking-uri", uri]) == 2
        return capsys.readouterr().err

    broken = tmp_path / "broken"
    with zipfile.ZipFile(path) as archive:
        archive.extractall(broken)
    rdf = yaml.safe_load((broken / "rdf.yaml").read_text())
    rdf["inputs"][0]["axes"][2]["size"] = "lots"
    (broken / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    message = refused("import", "bioimageio", str(broken), "--config", CONFIG)
    assert "fails bioimage.io validation" in message
    assert "inputs.0.axes.2.space.size.constrained-int: Input should be a valid integer" in message
    assert "no such package" in refused("import", "bioimageio", str(tmp_path / "none.zip"))
    wide = tmp_path / "wide.yaml"
    config = yaml.safe_load((root / CONFIG).read_text())
    config["parameters"]["architecture"]["in_channels"] = 3
    wide.write_text(yaml.safe_dump(config))
    assert "input channels: the package takes 1, the unet data has 3" in refused("import", "bioimageio", str(path),
                                                                                  "--config", str(wide))
    assert "has no version 99" in refused("export", "bioimageio", "cellops-unet:99", "--out", str(tmp_path))
    _register_maskrcnn(uri, tmp_path)
    assert "non-maximum suppression" in refused("export", "bioimageio", "cellops-maskrcnn:1", "--out", str(tmp_path))


def _register_maskrcnn(uri: str, folder) -> None:
    """A version of cellops-maskrcnn carrying a Mask R-CNN serving record (its weights are never read)."""
    import torch

    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.create_experiment("maskrcnn-stub", artifact_location=(folder / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            info = mlflow.pytorch.log_model(torch.nn.Identity(), name="model", serialization_format="pickle")
        version = mlflow.register_model(info.model_uri, "cellops-maskrcnn").version
        for key, value in names.inference_to_tags({"family": "maskrcnn"}).items():
            mlflow.MlflowClient(uri).set_model_version_tag("cellops-maskrcnn", version, key, value)
    finally:
        mlflow.set_tracking_uri(None)
