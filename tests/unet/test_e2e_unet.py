"""End to end, as a user runs it: a fresh project copy with its own ZenML store, MLflow store, DVC and
BentoML home; data -> validate -> train -> evaluate -> register -> deploy -> a real `bentoml serve` on
127.0.0.1 answering real HTTP requests. Also: a broken dataset stops the training pipeline."""

from __future__ import annotations

import io
import json
import os
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
import torch
import yaml
from PIL import Image

from cellops.metrics import binary_segmentation_scores
from cellops.runtimes import cpu_info, load_runtime
from cellops.unet.ood import FEATURE_NAMES
from cellops.unet.predict import load_for_inference, segment
from cellops.unet.specs import UNetServing
from tracking import tags
from helpers import (assert_host_choice, assert_runtimes_recorded, built_bento, check_bento_environment, served_bento,
                     served_runtime)
from helpers import png_bytes
from helpers import run_command as _run
from hostile_corpus import probe
from serving.ood_checks import (checkerboard, header_verdict, json_verdict, ood_metrics, refused_score,
                                 request_log)

ROOT = Path(__file__).resolve().parents[2]
LOCK_FILE = ROOT / "requirements.lock"

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("unet_trained"), pytest.mark.minutes(8)]


@pytest.fixture(scope="module")
def trained(unet_trained):
    root, env, result = unet_trained
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    yield root, env, result
    mlflow.set_tracking_uri(None)


def test_training_pipeline_registers_a_champion_with_lineage(trained):
    root, _, _ = trained
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias("cellops-unet", "champion")
    dvc_md5 = yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]
    assert champion.tags["lineage.data_version"] == dvc_md5
    assert len(champion.tags["lineage.git_commit"]) == 40  # committed fixture tree: not dirty
    run = client.get_run(champion.run_id)
    assert run.data.tags["lineage.data_version"] == dvc_md5
    assert run.data.tags[tags.ZENML_RUN_ID] == champion.tags[tags.ZENML_RUN_ID]
    # The training data as an MLflow dataset input: the UI's Dataset column shows the DVC version.
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    patches = inputs["em-training-patches"]
    assert patches.dataset.digest == dvc_md5.removesuffix(".dir")
    assert {t.key: t.value for t in patches.tags}["dvc.data_version"] == dvc_md5
    assert run.data.tags[tags.PID] and run.data.tags[tags.RESUMED_FROM_EPOCH] == "None"
    # Per-epoch losses, final metrics, every config value, overlays and curves.
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 3
    assert {"test_foreground_iou", "test_dice", "test_mean_iou"} <= set(run.data.metrics)
    assert run.data.params["train_unet.training.epochs"] == "3"
    assert run.data.params["sample_augmented_patches.augmentation.rotate_degrees"] == "180.0"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"test_overlays", "training"} <= artifacts
    assert float(champion.tags["metric.foreground_iou"]) == pytest.approx(run.data.metrics["test_foreground_iou"], abs=1e-6)
    # Run hygiene: system metrics sampled during training; the model's signature, input example and pinned needs.
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)
    info = mlflow.models.get_model_info(champion.source)
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 1, 64, 64)
    assert info.signature.outputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 1, 64, 64)
    assert info.saved_input_example_info["type"] == "ndarray"
    logged = client.get_logged_model(champion.source.removeprefix("models:/"))
    requirements = mlflow.artifacts.download_artifacts(artifact_uri=f"{logged.artifact_location}/requirements.txt")
    assert "torch==2.14.1" in Path(requirements).read_text()
    # The faster CPU runtimes, each checked on the test volume, recorded beside the torch model.
    configured = yaml.safe_load((root / "tests/configs/unet_tiny.yaml").read_text())["steps"]["optimise_unet_runtime"]
    assert_runtimes_recorded(client, champion, configured["parameters"]["runtimes"])


def test_model_control_plane_and_cellops_models_follow_the_champion(trained):
    root, env, _ = trained
    champion = mlflow.MlflowClient().get_model_version_by_alias("cellops-unet", "champion")
    # ZenML's production version of the model is the one that registered MLflow's champion.
    production = _run(["python", "-c", "from zenml.client import Client; from zenml.enums import ModelStages; "
                       "v = Client().get_model_version('cellops-unet', ModelStages.PRODUCTION); "
                       "print(v.run_metadata['mlflow_model_version'])"], root, env).stdout
    assert production.strip().splitlines()[-1] == str(champion.version)
    # (The text forms of `cellops models` and `cellops lineage` are tested on a store of their own: tests/tracking/test_cli.py
    # and tests/tracking/test_lineage.py.)
    record = json.loads(_run(["cellops", "lineage", "cellops-unet@champion", "--json"], root, env).stdout)
    assert record["model_version"] == str(champion.version) and record["aliases"] == ["champion"]
    assert record["mlflow_run_id"] == champion.run_id
    assert record["inference_settings"] == tags.inference_from_tags(champion.tags)
    missing = _run(["cellops", "lineage", "cellops-unet:999"], root, env, check=False)
    assert missing.returncode == 2 and "no version 999" in missing.stderr


def test_cellops_predict_unet_streams_a_volume_into_the_champions_mask(trained, tmp_path):
    root, env, _ = trained
    out = tmp_path / "out"
    shown = _run(["cellops", "predict", "unet", "data/em/testing.tif", "--out", str(out), "--slab", "3"], root, env)
    champion = mlflow.MlflowClient().get_model_version_by_alias("cellops-unet", "champion")
    assert f"cellops-unet v{champion.version}" in shown.stdout
    # The champion on the runtime this host chose for it (timed by the command, cached), which the command names.
    runtime, graphs = served_runtime(champion)
    assert f"unet: runtime: {runtime} (" in shown.stdout
    model = load_runtime(runtime, graphs, load_for_inference(
        mlflow.pytorch.load_model(f"models:/cellops-unet/{champion.version}", map_location="cpu")))
    volume = tifffile.imread(root / "data" / "em" / "testing.tif")
    expected = segment(model, volume, UNetServing.from_dict(tags.inference_from_tags(champion.tags)))
    assert np.array_equal(tifffile.imread(out / "testing_mask.tif") > 0, expected)  # slab by slab = the volume at once
    assert 0 < expected.mean() < 0.5  # and the champion segments something (an empty mask would pass the above)
    assert "percentile" in shown.stdout and "threshold" in shown.stdout  # which scaling and threshold ran
    refused = _run(["cellops", "predict", "unet", "data/em/testing.tif", "--out", str(tmp_path / "mask.tif")], root, env,
                   check=False)
    assert refused.returncode == 2 and "is the output folder" in refused.stderr


def test_deployed_service_segments_and_refuses_bad_uploads(trained):
    root, env, _ = trained
    result = _run(["zenml", "pipeline", "run", "pipelines.unet.deployment_pipeline", "-c", "configs/unet_deploy.yaml"],
                  root, env)
    assert "built bento cellops-unet:" in result.stdout + result.stderr
    # What `bentoml containerize` would install: the locked versions.
    check_bento_environment(built_bento(Path(env["BENTOML_HOME"]), "cellops-unet"), LOCK_FILE)
    champion = mlflow.MlflowClient().get_model_version_by_alias("cellops-unet", "champion")
    model = load_for_inference(mlflow.pytorch.load_model("models:/cellops-unet@champion", map_location="cpu"))
    runtime, graphs = served_runtime(champion)  # what this host chose: the service must run it
    model = load_runtime(runtime, graphs, model)
    # The service must apply the settings stored with the model: those of the run's config, every setting resolved,
    # with the probability threshold chosen on validation (one of the candidates, logged on the run).
    stored = tags.inference_from_tags(champion.tags)
    configured = yaml.safe_load((root / "tests/configs/unet_tiny.yaml").read_text())["parameters"]["inference"]
    chosen = mlflow.get_run(champion.run_id).data.metrics["chosen_threshold"]
    assert stored == {**UNetServing.from_dict(configured).as_dict(), "threshold": chosen}
    assert stored["normalization"]["mode"] == "percentile" and 0.05 <= chosen <= 0.95
    settings = UNetServing.from_dict(stored)
    test_image = tifffile.imread(root / "data/em/testing.tif")
    test_mask = tifffile.imread(root / "data/em/testing_groundtruth.tif")

    # The champion itself must segment: a champion that says "background" everywhere would agree with the service.
    with torch.inference_mode():
        whole = segment(model, test_image, settings)
    truth_fraction = float((test_mask > 0).mean())
    assert 0.25 * truth_fraction < float(whole.mean()) < 4.0 * truth_fraction
    assert binary_segmentation_scores(whole, test_mask > 0).foreground_iou > 0.3
    # The server's TMPDIR, where nothing may stay: short, since BentoML puts its services' Unix sockets there.
    temp = Path(tempfile.mkdtemp(prefix="srv-", dir="/tmp"))
    monitor = Path(tempfile.mkdtemp(prefix="mon-", dir="/tmp"))  # the request logs (CELLOPS_MONITOR_DIR)
    server_env = {**env, "CELLOPS_MAX_PIXELS": str(test_image.size), "CELLOPS_MAX_REQUEST_BYTES": "3000000",
                  "TMPDIR": str(temp), "CELLOPS_MONITOR_DIR": str(monitor)}
    server = served_bento("cellops-unet:latest", root, server_env)
    with server as base:
        def post(route: str, name: str, data: bytes) -> httpx.Response:
            return httpx.post(f"{base}/{route}", files={"image": (name, data, "application/octet-stream")}, timeout=120)

        # A 2-D PNG comes back as a PNG mask equal to the champion's own in-process prediction.
        png = io.BytesIO()
        Image.fromarray(test_image[4]).save(png, format="PNG")
        response = post("segment", "slice.png", png.getvalue())
        assert response.status_code == 200, response.text
        served = np.asarray(Image.open(io.BytesIO(response.content)))
        with torch.inference_mode():
            expected = segment(model, test_image[4], settings)
        assert served.shape == test_image[4].shape and set(np.unique(served)) <= {0, 255}
        # The same runtime in the same process kind: equal, up to a few pixels at the threshold where the service's
        # tile batches (merged across requests) take another kernel path than the test's.
        assert ((served > 0) == expected).mean() >= 0.999
        assert float(response.headers["x-foreground-fraction"]) == pytest.approx(expected.mean(), abs=1e-5)
        # Whether the slice is like the training images: its OOD verdict, from the probabilities it was segmented from.
        in_slice = header_verdict(response.headers)
        # Asked for, the same mask comes with its uncertainty (test-time augmentation), in [0, 1].
        uncertain = httpx.post(f"{base}/segment", files={"image": ("slice.png", png.getvalue(), "image/png")},
                               data={"uncertainty": "true"}, timeout=120)
        assert uncertain.status_code == 200, uncertain.text
        assert (np.asarray(Image.open(io.BytesIO(uncertain.content))) == served).mean() >= 0.999
        assert 0.0 <= float(uncertain.headers["x-uncertainty"]) <= 1.0 and "x-uncertainty" not in response.headers
        assert header_verdict(uncertain.headers)["ood_score"] == pytest.approx(in_slice["ood_score"], rel=1e-3)

        # A 3-D TIFF stack comes back as a TIFF stack; the mask overlaps the ground truth.
        stack = io.BytesIO()
        tifffile.imwrite(stack, test_image)
        response = post("segment", "stack.tif", stack.getvalue())
        assert response.status_code == 200, response.text
        mask = tifffile.imread(io.BytesIO(response.content))
        assert mask.shape == test_image.shape
        assert ((mask > 0) == whole).mean() >= 0.999  # the champion's own stack mask (tile batches may differ)
        assert response.headers["x-normalization"].startswith("percentile")
        in_stack = header_verdict(response.headers)

        stats = post("segment_stats", "stack.tif", stack.getvalue()).json()
        assert stats["foreground_fraction"] == pytest.approx((mask > 0).mean(), abs=1e-6)
        assert json_verdict(stats["ood"])["ood_score"] == pytest.approx(in_stack["ood_score"], rel=1e-3)

        meta = httpx.post(f"{base}/metadata", json={}, timeout=30).json()
        assert meta["model_version"] == str(champion.version)
        assert meta["mlflow_run_id"] == champion.run_id
        assert meta["zenml_run_id"] == champion.tags[tags.ZENML_RUN_ID]
        assert meta["data_version"] == champion.tags["lineage.data_version"]
        assert meta["inference_settings"] == stored and meta["metrics"] == tags.metrics_from_tags(champion.tags)
        # The runtime timed fastest here (the test timed it first, the service found it cached), not necessarily
        # the registering host's.
        assert meta["serving"]["runtime"] == runtime and meta["serving"]["host_timings"]["cached"]
        assert meta["serving"]["chosen_by_registry"] == meta["runtime"] == champion.tags["runtime"]
        assert_host_choice(meta["serving"])
        # What ran it, on which kernels: this CPU's ISA as oneDNN and OpenVINO see it.
        assert meta["serving"]["cpu"] and meta["serving"]["onednn"] in ("DEFAULT", "AVX2", "AVX512", "AVX512_BF16")
        assert set(meta["serving"]["isa"]) <= set(cpu_info()["isa_flags"]) and meta["serving"]["openvino_device"]
        # The OOD settings: the reference registered with the version, the default policy.
        assert meta["ood"]["reference"] and meta["ood"]["policy"] == "flag" and meta["ood"]["family"] == "unet"
        assert meta["ood"]["threshold"] == pytest.approx(in_slice["ood_threshold"], abs=1e-6)
        assert meta["ood"]["false_alarm_rate"] == 0.05 and not meta["ood"]["images_kept"]
        # The model card kept with the version, copied into the bento by the deployment (tracking.cards).
        card = httpx.get(f"{base}/card", timeout=30)
        assert card.status_code == 200 and card.headers["content-type"].startswith("text/html")
        assert f"Model card: cellops-unet version {champion.version}" in card.text
        as_md = httpx.get(f"{base}/card", params={"format": "md"}, timeout=30)
        assert as_md.headers["content-type"].startswith("text/markdown") and "synthetic images only" in as_md.text
        assert httpx.get(f"{base}/card", params={"format": "pdf"}, timeout=30).status_code == 400

        # Images unlike the training ones are answered and flagged (the flag policy); the flag means something: the
        # test slices (in distribution, up to the 5 % false alarms) are not all flagged, a checkerboard is.
        print(f"U-Net OOD scores (threshold {in_slice['ood_threshold']:.3f}): test slice {in_slice['ood_score']:.3f}, "
              f"test stack {in_stack['ood_score']:.3f}")
        assert in_slice["in_distribution"] or in_stack["in_distribution"]
        before = ood_metrics(base, "cellops-unet")
        shifted = [post("segment", f"board{seed}.png", png_bytes(checkerboard(128, 4 + seed % 3, seed=seed)))
                   for seed in range(10)]
        verdicts = [header_verdict(r.headers) for r in shifted]
        print("U-Net OOD scores of checkerboards:", [round(v["ood_score"], 2) for v in verdicts])
        assert all(r.status_code == 200 for r in shifted) and not any(v["in_distribution"] for v in verdicts)
        assert min(v["ood_score"] for v in verdicts) > max(in_slice["ood_score"], in_stack["ood_score"])
        # Too small to score (under 32 pixels a side): answered, the verdict unknown and why.
        small = post("segment_stats", "small.png", png_bytes(test_image[4][:20, :20]))
        assert small.status_code == 200 and "too small" in json_verdict(small.json()["ood"], scored=False)["ood_reason"]
        # The burst on /metrics: counted, the window's OOD rate and drift statistic up.
        after = ood_metrics(base, "cellops-unet")
        assert (after["out"] - before["out"], after["unscored"] - before["unscored"]) == (10, 1)
        assert after["window"] == after["scored"] == after["in"] + after["out"]  # under the 200 of the window
        assert after["rate"] == pytest.approx(after["out"] / after["scored"]) and after["rate"] > before["rate"]
        assert after["drift"] > before["drift"]
        # One log line per answered image, in order, never pixels: the burst's scores as answered.
        lines = request_log(monitor, "cellops-unet")
        assert len(lines) == after["in"] + after["out"] + after["unscored"]
        assert [line["endpoint"] for line in lines[-11:]] == ["segment"] * 10 + ["segment_stats"]
        assert [line["ood_score"] for line in lines[-11:-1]] == pytest.approx([v["ood_score"] for v in verdicts],
                                                                              abs=1e-5)
        assert lines[-1]["in_distribution"] is None and lines[-1]["model_version"] == str(champion.version)
        assert lines[-2]["registered_model"] == "cellops-unet"
        assert sorted(lines[-2]["features"]) == sorted(FEATURE_NAMES)

        # Bad uploads: a 4xx naming the problem, never a 500.
        rgb = io.BytesIO()
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(rgb, format="PNG")
        four_d = io.BytesIO()
        tifffile.imwrite(four_d, np.zeros((2, 2, 16, 16), np.uint8))
        int32 = io.BytesIO()
        tifffile.imwrite(int32, np.zeros((16, 16), np.int32))
        huge = io.BytesIO()
        tifffile.imwrite(huge, np.zeros((test_image.shape[0] + 1, *test_image.shape[1:]), np.uint8))
        for name, data, status, message in [
            ("notes.txt", b"not an image at all", 400, "not an image"),
            ("empty.png", b"", 400, "empty upload"),
            ("rgb.png", rgb.getvalue(), 400, "colour mode"),
            ("four_d.tif", four_d.getvalue(), 400, "wrong dimensionality"),
            ("int32.tif", int32.getvalue(), 400, "unsupported dtype int32"),
            ("huge.tif", huge.getvalue(), 413, "too large"),
        ]:
            response = post("segment", name, data)
            assert response.status_code == status, (name, response.status_code, response.text)
            assert message in response.text, (name, response.text)
        # The corpus of hostile requests: each refused naming the problem, the next valid answer unchanged.
        probe(base, "segment", "image", png.getvalue(), kind="grey model",
              over_byte_limit=3_000_001, temp_dir=temp)
        assert server.alive()  # bad input never took the server down

    # The refuse policy (set by the operator): an image out of distribution is answered 422 naming its score and the
    # threshold; an image in distribution gets the same answer as before.
    with served_bento("cellops-unet:latest", root, {**server_env, "CELLOPS_OOD_POLICY": "refuse"}) as base:
        board = httpx.post(f"{base}/segment", files={"image": ("board0.png", png_bytes(checkerboard(128, 4)))},
                           timeout=120)
        assert board.status_code == 422, board.text
        assert refused_score(board.json()["error"], in_slice["ood_threshold"]) == pytest.approx(
            verdicts[0]["ood_score"], abs=2e-3)
        again = httpx.post(f"{base}/segment", files={"image": ("slice.png", png.getvalue())}, timeout=120)
        if in_slice["in_distribution"]:
            assert again.status_code == 200, again.text
            assert (np.asarray(Image.open(io.BytesIO(again.content))) == served).mean() >= 0.999
        else:
            assert again.status_code == 422
        assert httpx.post(f"{base}/metadata", json={}, timeout=30).json()["ood"]["policy"] == "refuse"
    assert request_log(monitor, "cellops-unet")[-2]["in_distribution"] is False  # refused, and logged


def test_broken_dataset_stops_the_pipeline_naming_the_expectation(trained):
    root, env, _ = trained
    broken = root / "data_broken" / "em"
    shutil.copytree(root / "data" / "em", broken)
    mask = tifffile.imread(broken / "training_groundtruth.tif")
    mask[0, :4, :4] = 7
    tifffile.imwrite(broken / "training_groundtruth.tif", mask)
    config = yaml.safe_load((root / "tests/configs/unet_tiny.yaml").read_text())
    config["steps"]["load_em_dataset"]["parameters"]["data_dir"] = str(broken)
    (root / "broken.yaml").write_text(yaml.safe_dump(config))
    versions_before = len(mlflow.MlflowClient().search_model_versions("name='cellops-unet'"))
    result = _run(["zenml", "pipeline", "run", "pipelines.unet.training_pipeline", "-c", "broken.yaml"], root, env,
                  check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "dataset validation failed" in output and "mask_is_binary" in output
    assert len(mlflow.MlflowClient().search_model_versions("name='cellops-unet'")) == versions_before


def test_data_edited_after_dvc_add_stops_training_naming_the_file(trained):
    root, env, _ = trained
    stack = root / "data" / "em" / "training.tif"
    original, before = stack.read_bytes(), stack.stat()
    edited = bytearray(original)
    edited[-1] ^= 0xFF  # one pixel, the modification time put back: `dvc status` cannot see it
    stack.write_bytes(bytes(edited))
    os.utime(stack, (before.st_atime, before.st_mtime))
    versions_before = len(mlflow.MlflowClient().search_model_versions("name='cellops-unet'"))
    try:
        result = _run(["zenml", "pipeline", "run", "pipelines.unet.training_pipeline", "-c",
                       "tests/configs/unet_tiny.yaml"], root, env, check=False)
    finally:
        stack.write_bytes(original)
        os.utime(stack, (before.st_atime, before.st_mtime))
    output = result.stdout + result.stderr
    recorded = yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]
    assert result.returncode != 0 and "1 file(s) differ" in output and "training.tif" in output
    assert f"not data version {recorded}" in output and "dvc checkout" in output
    assert len(mlflow.MlflowClient().search_model_versions("name='cellops-unet'")) == versions_before


def test_a_killed_training_resumes_and_its_run_is_closed(trained):
    """kill -9 mid-training, then the same command: it resumes after the checkpointed epoch and ends where an
    uninterrupted run ends (the champion's scores: it is the champion again, so not registered twice); the killed
    run is closed KILLED, its ZenML run failed, nothing was registered from it, no checkpoint is left."""
    root, env, _ = trained
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias("cellops-unet", "champion")
    versions_before = len(client.search_model_versions("name='cellops-unet'"))
    checkpoints = root / "outputs" / "checkpoints" / "unet"
    command = ["zenml", "pipeline", "run", "pipelines.unet.training_pipeline", "-c", "tests/configs/unet_tiny.yaml"]
    with open(root / "killed.log", "w") as log:
        attempt = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        deadline = time.monotonic() + 300
        while not any(checkpoints.glob("*/last.pt")):  # the first epoch is done
            assert attempt.poll() is None, (root / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint in 300 s"
            time.sleep(0.05)
        os.killpg(attempt.pid, signal.SIGKILL)
        attempt.wait()
    experiment = client.get_experiment_by_name("cellops-unet")
    killed = client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'RUNNING'")
    assert len(killed) == 1 and killed[0].data.tags[tags.PID] == str(attempt.pid)

    _run(command, root, env)
    killed = client.get_run(killed[0].info.run_id)
    assert killed.info.status == "KILLED" and "process was gone" in killed.data.tags[tags.CLOSED_BECAUSE]
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
    resumed = runs[0]
    assert int(resumed.data.tags[tags.RESUMED_FROM_EPOCH]) >= 0
    # The resumed run has the whole curve, and ends with the uninterrupted run's test scores.
    assert len(client.get_metric_history(resumed.info.run_id, "train_loss")) == 3
    for name, value in tags.metrics_from_tags(champion.tags).items():
        assert resumed.data.metrics[f"test_{name}"] == pytest.approx(value, abs=1e-6), name
    # Same data, seeds and settings: the champion again, which is not registered a second time.
    assert resumed.data.tags["registered"] == "False" and "duplicate" in resumed.data.tags["registration_reason"]
    assert resumed.data.tags["promoted_to_champion"] == "False"
    versions = client.search_model_versions("name='cellops-unet'")
    assert len(versions) == versions_before and killed.info.run_id not in {v.run_id for v in versions}
    assert client.get_model_version_by_alias("cellops-unet", "champion").version == champion.version
    assert not any(checkpoints.glob("*/last.pt"))
    zenml_status = _run(["python", "-c", "from zenml.client import Client; "
                         f"print(Client().get_pipeline_run('{killed.data.tags[tags.ZENML_RUN_ID]}').status)"],
                        root, env).stdout
    assert "failed" in zenml_status.lower()


def test_dvc_exp_run_with_a_data_rev_trains_on_that_older_data_version(trained):
    """A new data version is committed. `dvc exp run -S <config>:...data_rev=<the first version's tag>
    unet_training` runs the training stage of dvc.yaml with that setting: the pipeline trains on the first version,
    brought back through dvc.api (the working tree keeps the new one). The MLflow run records the revision and
    that version's md5. Its scores are the champion's, which was trained on that version with the same seeds. The
    stage's metrics file holds them for `dvc exp show` and `dvc metrics diff`."""
    root, env, _ = trained
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias("cellops-unet", "champion")
    first_md5 = yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]
    _run(["git", "tag", "-f", "data-v1"], root, env)
    testing = root / "data" / "em" / "testing.tif"
    original = testing.read_bytes()
    try:
        shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
        # The stage trains with configs/unet.yaml: here the tiny one.
        shutil.copy(root / "tests/configs/unet_tiny.yaml", root / "configs/unet.yaml")
        tifffile.imwrite(testing, np.ascontiguousarray(tifffile.imread(testing)[:, ::-1]))  # a new data version
        _run(["dvc", "add", "-q", "data"], root, env)
        _run(["git", "add", "-A"], root, env)
        _run(["git", "commit", "-qm", "data v2, training stage"], root, env)
        assert yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"] != first_md5
        _run(["dvc", "exp", "run", "-n", "on-v1", "-S",
              "configs/unet.yaml:steps.record_lineage.parameters.data_rev=data-v1", "unet_training"], root, env)
        shown = json.loads(_run(["dvc", "exp", "show", "--json"], root, env).stdout)
        exported = json.loads((root / "reports/unet/metrics.json").read_text())
    finally:
        _run(["git", "reset", "-q", "--hard", "data-v1"], root, env)
        testing.write_bytes(original)
        _run(["dvc", "add", "-q", "data"], root, env)
        for leftover in ("dvc.yaml", "dvc.lock", "reports"):
            path = root / leftover
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    experiment = client.get_experiment_by_name("cellops-unet")
    run = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert run.data.tags["lineage.data_rev"] == "data-v1" and run.data.tags["lineage.data_version"] == first_md5
    patches = {d.dataset.name: d for d in run.inputs.dataset_inputs}["em-training-patches"]
    assert {t.key: t.value for t in patches.tags}["dvc.rev"] == "data-v1"
    # (MLflow keeps one dataset record per name and digest: the source is the first run's; the tags are this run's.)
    assert patches.dataset.digest == first_md5.removesuffix(".dir")
    for name, value in tags.metrics_from_tags(champion.tags).items():
        assert run.data.metrics[f"test_{name}"] == pytest.approx(value, abs=1e-6), name
        assert exported[f"test_{name}"] == pytest.approx(value, abs=1e-5), name
    assert (root / "outputs" / "data-revisions" / first_md5.removesuffix(".dir") / "data" / "em" / "testing.tif").is_file()
    assert yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"] == first_md5  # the fixture is as it was
    # `dvc exp show` lists the experiment with its setting and its metrics.
    experiments = [e for commit in shown for e in (commit.get("experiments") or [])]
    on_v1 = next(e for e in experiments if e.get("name") == "on-v1")["revs"][0]["data"]
    assert on_v1["params"]["configs/unet.yaml"]["data"]["steps"]["record_lineage"]["parameters"]["data_rev"] == "data-v1"
    assert on_v1["metrics"]["reports/unet/metrics.json"]["data"]["test_foreground_iou"] == exported["test_foreground_iou"]
