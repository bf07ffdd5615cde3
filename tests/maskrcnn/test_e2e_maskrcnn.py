"""End to end, as a user runs it, on a fresh project copy with tiny data: the Mask R-CNN pipeline pretrains on the
nuclei label images, trains both configured models in nested MLflow runs, compares and registers them and
promotes the best; `cellops predict maskrcnn` writes label images, tables and overlays (tiling a large image);
the deployed bento answers real HTTP and refuses bad uploads; broken annotations stop the pipeline."""

from __future__ import annotations

import csv
import io
from pathlib import Path
import json
import tempfile

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
from PIL import Image

from helpers import run_command as _run
from helpers import (assert_host_choice, assert_runtimes_recorded, bad_uploads, built_bento, check_bento_environment,
                     png_bytes, served_bento, served_runtime)
from hostile_corpus import probe
from serving.ood_checks import (checkerboard, header_verdict, json_verdict, ood_metrics, refused_score,
                                request_log)
from cellops.maskrcnn.ood import FEATURE_NAMES
from cellops.maskrcnn.predict import predict_image
from cellops.maskrcnn.specs import MaskRCNNServing
from cellops.maskrcnn.runtime import with_runtime
from tracking import tags

pytestmark = [pytest.mark.e2e, pytest.mark.minutes(6)]

LOCK_FILE = Path(__file__).resolve().parents[2] / "requirements.lock"

CONFIG = "tests/configs/maskrcnn_tiny.yaml"
ROOT_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODELS = {"resnet18_scratch", "resnet18_nuclei"}


@pytest.fixture(scope="module")
def trained(project):
    root, env = project
    _run(["zenml", "pipeline", "run", "pipelines.maskrcnn.training_pipeline", "-c", CONFIG], root, env)
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    yield root, env
    mlflow.set_tracking_uri(None)


def test_each_model_has_its_own_run_with_losses_scores_and_test_overlays(trained):
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("cellops-maskrcnn")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    parent = next(r for r in runs.values() if "mlflow.parentRunId" not in r.data.tags)
    for name in MODELS:
        run = runs[f"train_{name}"]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert {"test_mask_ap", "test_mask_ap50", "test_mask_ap75", "test_box_ap", "test_f1_50", "parameters",
                "train_seconds", "cpu_seconds_per_image", "test_f1_50_ci_low", "test_f1_50_ci_high",
                "chosen_score_threshold"} <= set(run.data.metrics)
        metrics = run.data.metrics
        assert metrics["test_f1_50_ci_low"] <= metrics["test_f1_50"] <= metrics["test_f1_50_ci_high"]
        epochs = yaml.safe_load((ROOT_CONFIGS / "maskrcnn_tiny.yaml").read_text())["parameters"]["training"]["epochs"]
        assert len(client.get_metric_history(run.info.run_id, "loss_mask")) == epochs
        overlays = {a.path for a in client.list_artifacts(run.info.run_id, "test_overlays")}
        assert len(overlays) == 2 and all(p.endswith(".png") for p in overlays)
        assert run.data.params["model.detections_per_image"] == "300"
    assert runs["train_resnet18_nuclei"].data.tags["init_used"] == "source"
    assert runs["train_resnet18_scratch"].data.tags["init_used"] == "scratch"
    source = runs["pretrain_on_source"]
    assert source.data.tags["role"] == "source_model" and int(source.data.params["source.images"]) == 6
    table = client.download_artifacts(parent.info.run_id, "comparison/comparison.csv")
    assert {r["model"] for r in csv.DictReader(open(table))} == MODELS


def test_both_models_are_registered_and_the_champion_is_the_best_on_the_same_test_set(trained):
    client = mlflow.MlflowClient()
    versions = client.search_model_versions("name='cellops-maskrcnn'")
    assert {v.tags["model_name"] for v in versions} == MODELS
    champion = client.get_model_version_by_alias("cellops-maskrcnn", "champion")

    def rank(v):
        metrics = tags.metrics_from_tags(v.tags)
        return metrics["mask_ap50"], metrics["mask_ap"], metrics["f1_50"]

    assert rank(champion) == max(rank(v) for v in versions)
    assert len({v.tags[f"{tags.LINEAGE_PREFIX}{tags.TEST_SET}"] for v in versions}) == 1
    settings = tags.inference_from_tags(champion.tags)
    assert settings["categories"] == {"1": "colony"} and settings["max_detections"] == 300
    # The run's best (the champion: the first run) with its backbone in the faster runtimes, checked on the test set.
    configured = yaml.safe_load((ROOT_CONFIGS / "maskrcnn_tiny.yaml").read_text())["steps"]["optimise_maskrcnn_runtime"]
    assert_runtimes_recorded(client, champion, configured["parameters"]["runtimes"])


def test_cellops_predict_maskrcnn_writes_labels_tables_overlays_tiles_and_names_bad_files(trained, tmp_path):
    root, env = trained
    image = root / "data/colonies/images/colony_000.png"
    picture = np.asarray(Image.open(image))
    large = tmp_path / "large.tif"
    tifffile.imwrite(large, np.tile(picture, (2, 2)))  # 768 px: above the 512-px tile size, so tiled
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    result = _run(["cellops", "predict", "maskrcnn", str(image), str(large), str(bad), "--out", str(out)], root, env,
                  check=False)
    assert result.returncode == 1 and "broken.png" in result.stderr, result.stdout + result.stderr
    summary = list(csv.DictReader(open(out / "batch_summary.csv")))
    assert [r["file"] for r in summary] == [str(image), str(large), str(bad)] and summary[2]["problem"]
    # A training-like image and its 2x2 tiling: colonies found in both (a model that finds none would pass the rest).
    assert int(summary[0]["instances"]) > 0 and int(summary[1]["instances"]) >= int(summary[0]["instances"])
    assert "percentile" in result.stdout and "score threshold" in result.stdout
    for row, shape in zip(summary[:2], [picture.shape, (2 * picture.shape[0], 2 * picture.shape[1])]):
        stem = row["outputs"].split(";")[0].removesuffix("_labels.tif")
        labels = tifffile.imread(out / f"{stem}_labels.tif")
        assert labels.dtype == np.uint16 and labels.shape == shape
        table = pd.read_csv(out / f"{stem}_instances.csv")
        assert len(table) == int(row["instances"]) and set(np.unique(labels)) - {0} <= set(table["label"])
        assert list(table.columns)[:4] == ["label", "category", "score", "area"]
        assert np.asarray(Image.open(out / f"{stem}_overlay.png")).shape == (*shape, 3)


def test_deployed_service_segments_draws_and_refuses_bad_uploads(trained):
    root, env = trained
    result = _run(["zenml", "pipeline", "run", "pipelines.maskrcnn.deployment_pipeline", "-c",
                   "configs/maskrcnn_deploy.yaml"], root, env)
    assert "built bento cellops-maskrcnn:" in result.stdout + result.stderr
    # What `bentoml containerize` would install: the locked versions.
    check_bento_environment(built_bento(Path(env["BENTOML_HOME"]), "cellops-maskrcnn"), LOCK_FILE)
    champion = mlflow.MlflowClient().get_model_version_by_alias("cellops-maskrcnn", "champion")
    image = root / "data/colonies/images/colony_001.png"
    # The champion in process, in the runtime the registry chose, with its stored settings: what the service must say.
    stored = tags.inference_from_tags(champion.tags)
    settings = MaskRCNNServing.from_dict({k: v for k, v in stored.items()
                                             if k not in ("max_detections", "categories")})
    runtime, graphs = served_runtime(champion)
    model = with_runtime(mlflow.pytorch.load_model("models:/cellops-maskrcnn@champion", map_location="cpu").eval(),
                         runtime, graphs)
    expected = predict_image(model, np.asarray(Image.open(image)), settings)
    assert expected, "the champion finds no colony in a training-like image: nothing below is tested"
    # The server's TMPDIR, where nothing may stay: short, since BentoML puts its services' Unix sockets there.
    temp = Path(tempfile.mkdtemp(prefix="srv-", dir="/tmp"))
    # 600000: the 384x384 colony picture as RGBA (4 values a pixel) fits; bad_uploads(800) does not.
    monitor = Path(tempfile.mkdtemp(prefix="mon-", dir="/tmp"))  # the request logs (CELLOPS_MONITOR_DIR)
    server_env = {**env, "CELLOPS_MAX_PIXELS": "600000", "CELLOPS_MAX_REQUEST_BYTES": "3000000", "TMPDIR": str(temp),
                  "CELLOPS_MONITOR_DIR": str(monitor)}
    with served_bento("cellops-maskrcnn:latest", root, server_env) as base:
        def post(route, name, data):
            return httpx.post(f"{base}/{route}", files=[("image", (name, data, "application/octet-stream"))], timeout=120)

        answer = post("segment", image.name, image.read_bytes())
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["height"], body["width"]) == (384, 384) and body["count"] == len(body["instances"])
        assert body["model_version"] == str(champion.version)
        # Whether the picture is like the training images: its OOD verdict, from the network's picture and detections.
        in_colony = json_verdict(body["ood"])
        # The champion's own answer: the same instances with the same boxes and scores (same runtime and settings;
        # the server's thread count may take another kernel path, so boxes are matched, not compared byte for byte).
        assert body["count"] > 0 and abs(body["count"] - len(expected)) <= max(1, len(expected) // 10)
        matched = [_best_box_match(i["box"], [e.box for e in expected]) for i in body["instances"]]
        assert sum(iou >= 0.9 for iou, _ in matched) >= 0.9 * body["count"], matched
        assert all(abs(i["score"] - expected[j].score) < 0.02 for i, (iou, j) in zip(body["instances"], matched)
                   if iou >= 0.9)
        assert body["score_threshold"] == settings.score_threshold and body["normalization"].startswith("percentile")
        for instance in body["instances"]:
            assert set(instance) == {"label", "category", "score", "area", "box", "centroid", "mask"}
            assert instance["mask"]["size"] == [384, 384] and isinstance(instance["mask"]["counts"], str)
        plane = io.BytesIO()  # a one-plane TIFF stack (1, H, W) is one picture
        tifffile.imwrite(plane, np.asarray(Image.open(image))[None])
        as_plane = post("segment", "plane.tif", plane.getvalue()).json()
        assert as_plane["count"] == body["count"]
        assert json_verdict(as_plane["ood"])["ood_score"] == pytest.approx(in_colony["ood_score"], rel=1e-3)
        drawn = post("overlay", image.name, image.read_bytes())
        assert drawn.status_code == 200 and drawn.headers["content-type"] == "image/png"
        assert header_verdict(drawn.headers)["ood_score"] == pytest.approx(in_colony["ood_score"], rel=1e-3)
        assert int(drawn.headers["x-instances"]) == body["count"]
        assert np.asarray(Image.open(io.BytesIO(drawn.content))).shape == (384, 384, 3)
        meta = httpx.post(f"{base}/metadata", json={}, timeout=30).json()
        assert meta["model_version"] == str(champion.version) and meta["inference_settings"]["categories"] == {"1": "colony"}
        assert meta["serving"]["chosen_by_registry"] == champion.tags["runtime"] == meta["runtime"]
        assert meta["serving"]["runtime"] == runtime and meta["serving"]["host_timings"]["cached"]
        assert_host_choice(meta["serving"])
        assert meta["ood"]["reference"] and meta["ood"]["policy"] == "flag" and meta["ood"]["family"] == "maskrcnn"
        assert meta["ood"]["threshold"] == pytest.approx(in_colony["ood_threshold"], abs=1e-6)
        card = httpx.get(f"{base}/card", headers={"accept": "text/markdown"}, timeout=30)  # the version's model card
        assert card.headers["content-type"].startswith("text/markdown")
        assert card.text.startswith(f"# Model card: cellops-maskrcnn version {champion.version}")

        # Pictures unlike the training ones are answered and flagged (the flag policy); the flag means something: the
        # colony pictures (in distribution, up to the 5 % false alarms) are mostly not flagged, checkerboards are.
        colonies = [json_verdict(post("segment", p.name, p.read_bytes()).json()["ood"])
                    for p in sorted((root / "data/colonies/images").glob("*.png"))[1:4]]
        print(f"Mask R-CNN OOD scores (threshold {in_colony['ood_threshold']:.3f}): colonies",
              [round(v["ood_score"], 2) for v in [in_colony, *colonies]])
        assert sum(v["in_distribution"] for v in [in_colony, *colonies]) >= 3
        before = ood_metrics(base, "cellops-maskrcnn")
        boards = [png_bytes(checkerboard(256, 4 + seed % 3, seed=seed)) for seed in range(6)]
        shifted = [json_verdict(post("segment", f"board{i}.png", board).json()["ood"])
                   for i, board in enumerate(boards)]
        print("Mask R-CNN OOD scores of checkerboards:", [round(v["ood_score"], 2) for v in shifted])
        assert not any(v["in_distribution"] for v in shifted)
        assert min(v["ood_score"] for v in shifted) > max(v["ood_score"] for v in [in_colony, *colonies])
        # Too small to score (under 32 pixels a side): answered, the verdict unknown and why.
        small = post("segment", "small.png", png_bytes(np.asarray(Image.open(image))[:20, :20]))
        assert small.status_code == 200 and "too small" in json_verdict(small.json()["ood"], scored=False)["ood_reason"]
        after = ood_metrics(base, "cellops-maskrcnn")
        assert (after["out"] - before["out"], after["unscored"] - before["unscored"]) == (6, 1)
        assert after["window"] == after["scored"] == after["in"] + after["out"]  # under the 200 of the window
        assert after["rate"] == pytest.approx(after["out"] / after["scored"]) and after["rate"] > before["rate"]
        assert after["drift"] > before["drift"]
        lines = request_log(monitor, "cellops-maskrcnn")  # one line per picture answered, never pixels
        assert len(lines) == after["in"] + after["out"] + after["unscored"]
        assert [line["ood_score"] for line in lines[-7:-1]] == pytest.approx([v["ood_score"] for v in shifted],
                                                                             abs=1e-5)
        assert lines[-1]["in_distribution"] is None and lines[-2]["model_version"] == str(champion.version)
        assert [line["endpoint"] for line in lines[-7:]] == ["segment"] * 7
        assert sorted(lines[-2]["features"]) == sorted(FEATURE_NAMES)
        for name, data, status, message in bad_uploads(800) + [
            ("strip.png", png_bytes(np.zeros((1, 600), np.uint8)), 400, "too small"),
        ]:
            response = post("segment", name, data)
            assert response.status_code == status, (name, response.status_code, response.text)
            assert message in response.text, (name, response.text)
        assert post("overlay", "notes.txt", b"nope").status_code == 400
        probe(base, "segment", "image", image.read_bytes(), kind="picture model",
              over_byte_limit=3_000_001, temp_dir=temp)

    # The refuse policy (set by the operator): a picture out of distribution is answered 422 naming its score and the
    # threshold; a picture in distribution gets the same answer as before.
    with served_bento("cellops-maskrcnn:latest", root, {**server_env, "CELLOPS_OOD_POLICY": "refuse"}) as base:
        refused = post("overlay", "board0.png", boards[0])
        assert refused.status_code == 422, refused.text
        assert refused_score(refused.json()["error"], in_colony["ood_threshold"]) == pytest.approx(
            shifted[0]["ood_score"], abs=2e-3)
        again = post("segment", image.name, image.read_bytes())
        if in_colony["in_distribution"]:
            assert again.status_code == 200 and again.json()["count"] == body["count"]
        else:
            assert again.status_code == 422


def _best_box_match(box: list[int], boxes: list[tuple[int, int, int, int]]) -> tuple[float, int]:
    """The highest IoU of ``box`` (x0, y0, x1, y1) with any of ``boxes``, and that box's index."""
    def iou(a, b):
        width = max(0, min(a[2], b[2]) - max(a[0], b[0]))
        height = max(0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = width * height
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    scores = [iou(box, other) for other in boxes]
    return (max(scores), int(np.argmax(scores))) if scores else (0.0, -1)


def test_broken_annotations_stop_the_pipeline_naming_image_and_annotation(trained):
    root, env = trained
    coco = json.loads((root / "data/colonies/annotations.json").read_text())
    coco["annotations"][0]["category_id"] = 9
    coco["annotations"][1]["segmentation"] = [[1, 2, 3, 4]]
    (root / "broken.json").write_text(json.dumps(coco))
    config = yaml.safe_load((root / CONFIG).read_text())
    config["steps"]["load_instance_annotations"]["parameters"]["annotations"]["path"] = "broken.json"
    (root / "broken_maskrcnn.yaml").write_text(yaml.safe_dump(config))
    before = len(mlflow.MlflowClient().search_model_versions("name='cellops-maskrcnn'"))
    result = _run(["zenml", "pipeline", "run", "pipelines.maskrcnn.training_pipeline", "-c", "broken_maskrcnn.yaml"],
                  root, env, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "dataset validation failed" in output
    assert "has category 9" in output and "at least 3 (x, y) points" in output
    assert f"annotation {coco['annotations'][0]['id']}" in output
    assert len(mlflow.MlflowClient().search_model_versions("name='cellops-maskrcnn'")) == before
