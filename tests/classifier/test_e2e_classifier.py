"""End to end, as a user runs it, on a fresh project copy with tiny data: the classifier pipeline trains every
configured model (and the source backbone) in nested MLflow runs, compares and registers them and promotes the
best; `cellops predict classifier` labels files; the deployed bento answers real HTTP and refuses bad uploads;
a dataset with one picture under two classes stops the pipeline."""

from __future__ import annotations

import asyncio
import csv
import io
import shutil
import tempfile
import signal
import subprocess
import time
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
import tifffile
import yaml
from PIL import Image

from cellops.classifier.ood import FEATURE_NAMES
from cellops.classifier.specs import ClassifierServing
from cellops.classifier.runtime import runtime_classifier
from cellops.inference import prepare_for_inference
from cellops.classifier.train import predict_probabilities
from cellops.classifier.data import load_class_images
from helpers import run_command as _run
from helpers import (assert_host_choice, assert_runtimes_recorded, bad_uploads, built_bento, check_bento_environment,
                     png_bytes, served_bento, served_runtime)
from hostile_corpus import probe
from serving.ood_checks import (checkerboard, header_verdict, json_verdict, ood_metrics, refused_score,
                                request_log)
from tracking import tags

pytestmark = [pytest.mark.e2e, pytest.mark.minutes(6)]

LOCK_FILE = Path(__file__).resolve().parents[2] / "requirements.lock"

CONFIG = "tests/configs/classifier_tiny.yaml"
ROOT_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODELS = {"efficientcellnet", "efficientcellnet_transfer", "resnet18", "densenet121"}


@pytest.fixture(scope="module")
def trained(project):
    root, env = project
    _run(["zenml", "pipeline", "run", "pipelines.classifier.training_pipeline", "-c", CONFIG], root, env)
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    yield root, env
    mlflow.set_tracking_uri(None)


def _runs_by_name(client):
    experiment = client.get_experiment_by_name("cellops-classifier")
    return {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}


def test_every_model_has_its_own_run_with_curves_scores_costs_and_cam_gallery(trained):
    root, _ = trained
    client = mlflow.MlflowClient()
    runs = _runs_by_name(client)
    parents = [r for r in runs.values() if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    config = yaml.safe_load((root / CONFIG).read_text())["parameters"]
    for name in MODELS:
        run = runs[f"train_{name}"]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        epochs = config["models"][name].get("training", {}).get("epochs", config["training"]["epochs"])
        for curve in ("train_loss", "train_accuracy", "train_sensitivity", "val_loss", "val_accuracy",
                      "val_sensitivity"):
            assert len(client.get_metric_history(run.info.run_id, curve)) == epochs, (name, curve)
        assert {"test_accuracy", "test_loss", "test_sensitivity", "test_specificity", "test_precision", "test_f1",
                "test_roc_auc", "parameters", "macs", "cpu_latency_ms"} <= set(run.data.metrics)
        gallery = {a.path for a in client.list_artifacts(run.info.run_id, "cam_gallery")}
        assert gallery == {"cam_gallery/correct.png", "cam_gallery/wrong.png"}
        assert run.data.tags["init"] == config["models"][name]["init"]
    # No local ImageNet weights here: the torchvision models say they started from random weights.
    assert runs["train_densenet121"].data.tags["init_used"] == "scratch"
    assert runs["train_densenet121"].data.tags["imagenet_weights"] == "none"
    assert runs["train_efficientcellnet_transfer"].data.tags["init_used"] == "source"
    comparison = {a.path for a in client.list_artifacts(parent.info.run_id, "comparison")}
    assert comparison == {f"comparison/{n}" for n in ("comparison.csv", "comparison.md", "comparison.png", "roc.png")}
    table = client.download_artifacts(parent.info.run_id, "comparison/comparison.csv")
    rows = list(csv.DictReader(open(table)))
    assert {r["model"] for r in rows} == MODELS
    custom = next(r for r in rows if r["model"] == "efficientcellnet")
    dense = next(r for r in rows if r["model"] == "densenet121")
    assert int(custom["parameters"]) < 1_000_000 < int(dense["parameters"]) and float(custom["macs"]) < float(dense["macs"])


def test_all_models_are_registered_and_the_best_by_sensitivity_then_specificity_is_champion(trained):
    client = mlflow.MlflowClient()
    versions = client.search_model_versions("name='cellops-classifier'")
    assert {v.tags["model_name"] for v in versions} == MODELS and len(versions) == 4
    champion = client.get_model_version_by_alias("cellops-classifier", "champion")

    def rank(v):
        metrics = tags.metrics_from_tags(v.tags)
        return metrics["sensitivity"], metrics["specificity"]

    assert rank(champion) == max(rank(v) for v in versions)
    assert champion.tags[tags.PROMOTION_METRIC] == "sensitivity"
    settings = tags.inference_from_tags(champion.tags)
    assert settings["classes"] == ["hipsc_ec", "non_ec"] and settings["positive_class"] == "hipsc_ec"
    # The run's best (the champion here: the first run) in the faster runtimes, checked on the test split; the
    # other versions stay torch-only.
    configured = yaml.safe_load((ROOT_CONFIGS / "classifier_tiny.yaml").read_text())["steps"]["optimise_classifier_runtime"]
    assert_runtimes_recorded(client, champion, configured["parameters"]["runtimes"])
    assert all("runtime" not in v.tags for v in versions if v.version != champion.version)
    # The source backbone is a registered artifact of its own.
    backbone = client.search_model_versions("name='cellops-classifier-backbone'")
    assert len(backbone) == 1 and "nuclei_film" in backbone[0].tags["source_classes"]


def test_cellops_predict_writes_labels_probabilities_and_cams_and_names_bad_files(trained, tmp_path):
    root, env = trained
    good = sorted((root / "data/endothelial/hipsc_ec").iterdir())[:2] + sorted((root / "data/endothelial/non_ec").iterdir())[:1]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    result = _run(["cellops", "predict", "classifier", *map(str, good), str(bad), "--out", str(out)], root, env,
                  check=False)
    assert result.returncode == 1 and "broken.png" in result.stderr
    rows = list(csv.DictReader(open(out / "batch_summary.csv")))
    assert [r["file"] for r in rows[:3]] == [str(p) for p in good] and rows[3]["file"] == str(bad) and rows[3]["problem"]
    for row in rows[:3]:
        assert row["label"] in ("hipsc_ec", "non_ec")
        assert float(row["p_hipsc_ec"]) + float(row["p_non_ec"]) == pytest.approx(1, abs=1e-6)
    assert [r["outputs"] for r in rows[:3]] == [f"{p.stem}_cam.png" for p in good]
    assert all((out / r["outputs"]).is_file() for r in rows[:3]) and len(list(out.glob("*_cam.png"))) == 3
    # Any registered version by URI; a missing one is named.
    other = _run(["cellops", "predict", "classifier", str(good[0]), "--out", str(tmp_path / "v2"), "--no-cams",
                  "--model", "models:/cellops-classifier/latest"], root, env)
    assert "cellops-classifier v4" in other.stdout and not list((tmp_path / "v2").glob("*_cam.png"))
    missing = _run(["cellops", "predict", "classifier", str(good[0]), "--out", str(tmp_path / "x"), "--model",
                    "models:/cellops-classifier/99"], root, env, check=False)
    assert missing.returncode == 2 and "no version 99" in missing.stdout + missing.stderr


def test_deployed_service_classifies_explains_and_refuses_bad_uploads(trained):
    root, env = trained
    result = _run(["zenml", "pipeline", "run", "pipelines.classifier.deployment_pipeline", "-c",
                   "configs/classifier_deploy.yaml"], root, env)
    assert "built bento cellops-classifier:" in result.stdout + result.stderr
    # What `bentoml containerize` would install: the locked versions.
    check_bento_environment(built_bento(Path(env["BENTOML_HOME"]), "cellops-classifier"), LOCK_FILE)
    champion = mlflow.MlflowClient().get_model_version_by_alias("cellops-classifier", "champion")
    settings = ClassifierServing.from_dict(tags.inference_from_tags(champion.tags))
    model = mlflow.pytorch.load_model("models:/cellops-classifier@champion", map_location="cpu").eval()
    runtime, graphs = served_runtime(champion)  # what this host chose: the service must run it
    model = runtime_classifier(runtime, graphs, prepare_for_inference(model))
    files = sorted((root / "data/endothelial/hipsc_ec").iterdir())[:3] + sorted((root / "data/endothelial/non_ec").iterdir())[:3]
    images, _ = load_class_images(files, channels=settings.channels, size=settings.size,
                                  normalization=settings.normalization)
    expected = predict_probabilities(model, images, 8)
    assert settings.decision_threshold is not None and settings.normalization.mode == "percentile"

    # The server's TMPDIR, where nothing may stay: short, since BentoML puts its services' Unix sockets there.
    temp = Path(tempfile.mkdtemp(prefix="srv-", dir="/tmp"))
    monitor = Path(tempfile.mkdtemp(prefix="mon-", dir="/tmp"))  # the request logs (CELLOPS_MONITOR_DIR)
    server_env = {**env, "CELLOPS_MAX_PIXELS": "20000", "CELLOPS_MAX_REQUEST_BYTES": "3000000", "TMPDIR": str(temp),
                  "CELLOPS_MONITOR_DIR": str(monitor)}
    with served_bento("cellops-classifier:latest", root, server_env) as base:
        def post(route, name, data, field="image"):
            return httpx.post(f"{base}/{route}", files=[(field, (name, data, "application/octet-stream"))], timeout=60)

        one = post("classify", files[0].name, files[0].read_bytes())
        assert one.status_code == 200, one.text
        answer = one.json()
        assert answer["probabilities"]["hipsc_ec"] == pytest.approx(expected[0, 0], abs=1e-4)
        # The label at the operating point chosen on validation, stored with the version.
        assert answer["label"] == settings.classes[int(settings.predicted_classes(expected[:1])[0])]
        assert answer["decision_threshold"] == settings.decision_threshold
        assert answer["model_version"] == str(champion.version)
        # Whether the picture is like the training images: its OOD verdict, from the input and the probabilities.
        in_one = json_verdict(answer["ood"])

        batch = httpx.post(f"{base}/classify_batch", timeout=60,
                           files=[("images", (p.name, p.read_bytes(), "image/png")) for p in files])
        assert batch.status_code == 200, batch.text
        served = np.array([[a["probabilities"][c] for c in settings.classes] for a in batch.json()])
        assert np.allclose(served, expected, atol=1e-4)
        in_batch = [json_verdict(a["ood"]) for a in batch.json()]  # a verdict per image
        assert in_batch[0]["ood_score"] == pytest.approx(in_one["ood_score"], rel=1e-3)

        # Concurrent single requests (adaptive batching may merge them) get each its own answer.
        async def concurrent():
            async with httpx.AsyncClient(timeout=60) as client:
                return await asyncio.gather(*[client.post(f"{base}/classify", files={"image": (p.name, p.read_bytes())})
                                              for p in files])
        answers = [r.json()["probabilities"]["hipsc_ec"] for r in asyncio.run(concurrent())]
        assert np.allclose(answers, expected[:, 0], atol=1e-4)

        # RGB and 16-bit versions of the same picture are accepted.
        grey = np.asarray(Image.open(files[0]))
        assert post("classify", "rgb.png", png_bytes(np.stack([grey] * 3, axis=-1))).status_code == 200
        sixteen = io.BytesIO()
        tifffile.imwrite(sixteen, grey.astype(np.uint16) * 257)
        sixteen_answer = post("classify", "16bit.tif", sixteen.getvalue()).json()
        assert sixteen_answer["probabilities"]["hipsc_ec"] == pytest.approx(answer["probabilities"]["hipsc_ec"], abs=1e-3)

        cam = post("explain", files[0].name, files[0].read_bytes())
        assert cam.status_code == 200 and cam.headers["content-type"] == "image/png"
        overlay = np.asarray(Image.open(io.BytesIO(cam.content)))
        assert overlay.shape == (settings.size, settings.size, 3) and cam.headers["x-label"] == answer["label"]
        assert header_verdict(cam.headers)["ood_score"] == pytest.approx(in_one["ood_score"], rel=1e-3)

        meta = httpx.post(f"{base}/metadata", json={}, timeout=30).json()
        assert meta["model_version"] == str(champion.version) and meta["mlflow_run_id"] == champion.run_id
        assert meta["inference_settings"] == settings.as_dict()
        # The runtime timed fastest here (the test timed it first, the service found it cached), not necessarily
        # the registering host's.
        assert meta["serving"]["runtime"] == runtime and meta["serving"]["host_timings"]["cached"]
        assert meta["serving"]["chosen_by_registry"] == meta["runtime"] == champion.tags["runtime"]
        assert_host_choice(meta["serving"])
        assert meta["ood"]["reference"] and meta["ood"]["policy"] == "flag" and meta["ood"]["family"] == "classifier"
        assert meta["ood"]["threshold"] == pytest.approx(in_one["ood_threshold"], abs=1e-6)
        card = httpx.get(f"{base}/card", headers={"accept": "text/markdown"}, timeout=30)  # the version's model card
        assert card.headers["content-type"].startswith("text/markdown")
        assert card.text.startswith(f"# Model card: cellops-classifier version {champion.version}")

        # Pictures unlike the training ones are answered and flagged (the flag policy); the flag means something: the
        # test pictures (in distribution, up to the 5 % false alarms) are mostly not flagged, checkerboards are.
        print(f"classifier OOD scores (threshold {in_one['ood_threshold']:.3f}): pictures",
              [round(v["ood_score"], 2) for v in in_batch])
        assert sum(v["in_distribution"] for v in in_batch) >= len(in_batch) // 2  # tiny data: few calibration images
        before = ood_metrics(base, "cellops-classifier")
        boards = [png_bytes(checkerboard(128, 4 + seed % 3, seed=seed)) for seed in range(10)]
        mixed_in = httpx.post(f"{base}/classify_batch", timeout=60, files=[
            ("images", (files[0].name, files[0].read_bytes())), ("images", ("board.png", boards[0]))]).json()
        assert json_verdict(mixed_in[0]["ood"])["ood_score"] == pytest.approx(in_one["ood_score"], rel=1e-3)
        assert json_verdict(mixed_in[1]["ood"])["in_distribution"] is False

        async def burst():
            async with httpx.AsyncClient(timeout=60) as client:
                return await asyncio.gather(*[client.post(f"{base}/classify", files={"image": (f"b{i}.png", board)})
                                              for i, board in enumerate(boards)])
        shifted = [json_verdict(r.json()["ood"]) for r in asyncio.run(burst())]
        print("classifier OOD scores of checkerboards:", [round(v["ood_score"], 2) for v in shifted])
        assert not any(v["in_distribution"] for v in shifted)
        assert min(v["ood_score"] for v in shifted) > max(v["ood_score"] for v in in_batch)
        after = ood_metrics(base, "cellops-classifier")
        counted = (after["out"] - before["out"], after["in"] - before["in"])
        assert counted == ((11, 1) if mixed_in[0]["ood"]["in_distribution"] else (12, 0))
        assert after["window"] == after["scored"] == after["in"] + after["out"]  # under the 200 of the window
        assert after["rate"] == pytest.approx(after["out"] / after["scored"]) and after["rate"] > before["rate"]
        assert after["drift"] > before["drift"]
        lines = request_log(monitor, "cellops-classifier")  # one line per picture answered, never pixels
        assert len(lines) == after["in"] + after["out"] + after["unscored"]
        assert [line["endpoint"] for line in lines[-12:]] == ["classify_batch"] * 2 + ["classify"] * 10
        assert sorted(line["ood_score"] for line in lines[-10:]) == pytest.approx(
            sorted(v["ood_score"] for v in shifted), abs=1e-5)
        assert lines[-1]["model_version"] == str(champion.version)
        assert sorted(lines[-1]["features"]) == sorted(FEATURE_NAMES)

        for name, data, status, message in bad_uploads(200):
            response = post("classify", name, data)
            assert response.status_code == status, (name, response.status_code, response.text)
            assert message in response.text, (name, response.text)
        mixed = httpx.post(f"{base}/classify_batch", timeout=60, files=[
            ("images", (files[0].name, files[0].read_bytes())), ("images", ("bad.png", b"garbage"))])
        assert mixed.status_code == 400 and "images[1]" in mixed.text and "bad.png" in mixed.text
        assert post("explain", "notes.txt", b"nope").status_code == 400
        probe(base, "classify", "image", files[0].read_bytes(), kind="picture model",
              over_byte_limit=3_000_001, temp_dir=temp)

    # The refuse policy (set by the operator): a picture out of distribution is answered 422 naming its score and the
    # threshold (in a batch, naming the picture); a picture in distribution gets the same answer as before.
    with served_bento("cellops-classifier:latest", root, {**server_env, "CELLOPS_OOD_POLICY": "refuse"}) as base:
        refused = httpx.post(f"{base}/classify", files={"image": ("board.png", boards[0])}, timeout=60)
        assert refused.status_code == 422, refused.text
        assert refused_score(refused.json()["error"], in_one["ood_threshold"]) == pytest.approx(
            mixed_in[1]["ood"]["ood_score"], abs=2e-3)
        in_batch_refused = httpx.post(f"{base}/classify_batch", timeout=60, files=[
            ("images", (files[0].name, files[0].read_bytes())), ("images", ("board.png", boards[0]))])
        assert in_batch_refused.status_code == 422
        named = in_batch_refused.json()["error"]  # BentoML's temporary copy of an upload ends with its name
        assert named.startswith("images[1] (") and "board.png): the image is out of distribution" in named
        again = httpx.post(f"{base}/classify", files={"image": (files[0].name, files[0].read_bytes())}, timeout=60)
        if in_one["in_distribution"]:
            assert again.status_code == 200, again.text
            assert again.json()["label"] == answer["label"] and again.json()["probabilities"] == pytest.approx(
                answer["probabilities"], abs=1e-4)
        else:
            assert again.status_code == 422


def test_the_same_picture_under_two_classes_stops_the_pipeline_naming_it(trained):
    root, env = trained
    broken = root / "data_broken" / "endothelial"
    shutil.copytree(root / "data" / "endothelial", broken)
    source = sorted((broken / "hipsc_ec").iterdir())[0]
    shutil.copy(source, broken / "non_ec" / "copy_0.png")  # a labelling mistake: one picture, two classes
    config = yaml.safe_load((root / CONFIG).read_text())
    config["steps"]["index_class_folders"]["parameters"]["data_dir"] = str(broken)
    (root / "broken_classifier.yaml").write_text(yaml.safe_dump(config))
    before = len(mlflow.MlflowClient().search_model_versions("name='cellops-classifier'"))
    result = _run(["zenml", "pipeline", "run", "pipelines.classifier.training_pipeline", "-c", "broken_classifier.yaml"],
                  root, env, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "dataset validation failed" in output
    assert "duplicate_conflicting_label" in output and "copy_0.png" in output
    assert len(mlflow.MlflowClient().search_model_versions("name='cellops-classifier'")) == before


def test_sigterm_closes_the_run_killed_and_the_rerun_resumes_to_the_same_model(trained):
    """SIGTERM mid-training (what `kill`, a scheduler or a container runtime sends): the run ends KILLED with the
    signal named, nothing is registered from it; the same command again resumes after the checkpointed epoch and
    reaches the scores of the uninterrupted run (the module's first run, same data and seeds)."""
    root, env = trained
    config = yaml.safe_load((root / CONFIG).read_text())
    config["parameters"]["models"] = {"efficientcellnet": config["parameters"]["models"]["efficientcellnet"]}
    (root / "one_model.yaml").write_text(yaml.safe_dump(config))
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(config["settings"]["experiment_tracker.mlflow"]["experiment_name"])

    def model_runs():
        return client.search_runs([experiment.experiment_id], f"tags.{tags.MODEL_NAME} = 'efficientcellnet'",
                                  order_by=["attributes.start_time DESC"])

    uninterrupted = model_runs()[-1]
    versions_before = {v.run_id for v in client.search_model_versions("name='cellops-classifier'")}
    checkpoints = root / config["parameters"]["checkpoint_dir"]
    command = ["zenml", "pipeline", "run", "pipelines.classifier.training_pipeline", "-c", "one_model.yaml"]
    with open(root / "terminated.log", "w") as log:
        attempt = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        deadline = time.monotonic() + 300
        while not any(checkpoints.glob("*/last.pt")):
            assert attempt.poll() is None, (root / "terminated.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint in 300 s"
            time.sleep(0.05)
        attempt.send_signal(signal.SIGTERM)
        assert attempt.wait(timeout=120) != 0
    terminated = model_runs()[0]
    assert terminated.info.status == "KILLED" and terminated.data.tags[tags.CLOSED_BECAUSE] == "interrupted by SIGTERM"
    assert terminated.info.run_id not in {v.run_id for v in client.search_model_versions("name='cellops-classifier'")}

    _run(command, root, env)
    resumed = model_runs()[0]
    assert int(resumed.data.tags[tags.RESUMED_FROM_EPOCH]) >= 0
    for name in ("test_accuracy", "test_sensitivity", "test_specificity", "test_loss"):
        assert resumed.data.metrics[name] == pytest.approx(uninterrupted.data.metrics[name], abs=1e-6), name
    assert not any(checkpoints.glob("*/last.pt"))
    new_versions = {v.run_id for v in client.search_model_versions("name='cellops-classifier'")} - versions_before
    assert terminated.info.run_id not in new_versions


def test_champion_exports_to_bioimageio_passes_its_test_and_imports_back_through_the_gate(trained, tmp_path):
    """`cellops export bioimageio` of the champion (bioimageio.core's test passes), `cellops import bioimageio` of
    the package: a new version scored on the test split and judged by the gate (in a copy of the registry)."""
    from cellops import bioimageio

    root, env = trained
    shutil.copy(root / "mlruns" / "mlflow.db", tmp_path / "mlflow.db")
    env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias("cellops-classifier", "champion")
    _run(["cellops", "export", "bioimageio", "cellops-classifier", "--out", str(tmp_path), "--config", CONFIG], root, env)
    package = tmp_path / f"cellops-classifier-v{champion.version}.bioimageio.zip"
    result = bioimageio.check_package(package)
    assert result["status"] == "passed", result["errors"]
    out = _run(["cellops", "import", "bioimageio", str(package), "--config", CONFIG], root, env).stdout
    new = max(client.search_model_versions("name='cellops-classifier'"), key=lambda v: int(v.version))
    assert f"cellops-classifier v{new.version}: does not beat the champion" in out
    for metric in ("sensitivity", "specificity", "accuracy"):
        assert float(new.tags[f"metric.{metric}"]) == pytest.approx(float(champion.tags[f"metric.{metric}"]), abs=1e-6)
    assert new.tags["bioimageio.source"] == f"cellops-classifier:{champion.version}"
    assert client.get_model_version_by_alias("cellops-classifier", "champion").version == champion.version
