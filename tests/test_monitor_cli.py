"""Out-of-distribution verdicts on the command line, with a real tiny registered U-Net (a real MLflow store in a
temporary folder): `cellops predict` carries each file's verdict in its summary, the refuse policy fails only the
files out of distribution (and a rerun under it predicts again what flag kept), a version registered without a
reference says so; `cellops monitor` turns a request log into a drift report, and refuses missing or empty logs
and a model without a reference. The Mask R-CNN and classifier batch predictors carry the verdict too, and write
nothing for a file they refuse."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import mlflow
import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from mlflow import MlflowClient
from scipy import ndimage

from cellops.batch import SUMMARY
from cellops.io import encode_image
from cellops.ood import OutOfDistribution, fit_reference
from cellops.unet.ood import FEATURE_NAMES, reference_rows
from cellops.unet.predict import load_for_inference
from cellops.unet.specs import UNetServing
from models.unet import UNet
from tracking import tags
from tracking.batch import batch_key
from tracking.cli import main
from tracking.registry import record_ood, register_and_maybe_promote

SETTINGS = UNetServing(tile_size=32, tile_overlap=8, batch_size=4, threshold=0.5)


def _noise(seed: int, shape=(8, 48, 48)) -> np.ndarray:
    """The 'training images' of the tiny model: uniform 8-bit noise."""
    return np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)


def _smooth(shape=(5, 40, 48)) -> np.ndarray:
    """Unlike them: a smooth ramp with faint noise (a blurred field at another magnification)."""
    ramp = np.linspace(20, 220, shape[1])[None, :, None] * np.ones(shape)
    return (ramp + np.random.default_rng(3).normal(0, 2, shape)).clip(0, 255).astype(np.uint8)


def _register(client: MlflowClient, experiment: str, model, dice: float) -> str:
    with mlflow.start_run(experiment_id=experiment) as run:
        logged = mlflow.pytorch.log_model(model, name="model", serialization_format="pickle", pip_requirements=[])
        decision = register_and_maybe_promote(
            client, logged.model_uri, "cellops-unet", {"dice": dice},
            {**tags.lineage_to_tags({"data_version": "aaa.dir", "git_commit": "c0ffee"}),
             **tags.inference_to_tags(SETTINGS.as_dict()), tags.MLFLOW_RUN_ID: run.info.run_id},
            promotion_metric="dice", alias="champion", min_improvement=1.0)  # the first version stays champion
    return decision["version"]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """``cellops-unet`` v1 (champion) with an OOD reference fitted on noise, and v2 (the same model) without one."""
    folder = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment = mlflow.create_experiment("predict", artifact_location=(folder / "artifacts").as_uri())
    model = UNet(base_channels=4, depth=2).eval()
    first, second = _register(client, experiment, model, 0.5), _register(client, experiment, model, 0.4)
    prepared = load_for_inference(model)
    reference = fit_reference("unet", reference_rows(prepared, _noise(1), SETTINGS, count=40, sizes=(40, 48)),
                              reference_rows(prepared, _noise(2), SETTINGS, count=30, sizes=(40, 48), seed=1),
                              FEATURE_NAMES)
    record_ood(client, "cellops-unet", first, reference)
    mlflow.set_tracking_uri(None)
    return uri, reference, (first, second)


@pytest.fixture
def volumes(tmp_path):
    inside, odd = tmp_path / "in" / "noise.tif", tmp_path / "in" / "smooth.tif"
    inside.parent.mkdir()
    tifffile.imwrite(inside, _noise(5, (5, 40, 48)))
    tifffile.imwrite(odd, _smooth())
    return inside, odd


def _summary(folder) -> pd.DataFrame:
    return pd.read_csv(folder / SUMMARY, dtype=str, keep_default_na=False).set_index("input")


def test_predict_carries_each_files_verdict_and_refuse_fails_only_the_odd_one(registry, volumes, tmp_path, capsys):
    uri, reference, _ = registry
    inside, odd = volumes
    out = tmp_path / "out"
    assert main(["predict", "unet", str(inside), str(odd), "--out", str(out), "--slab", "2",
                 "--tracking-uri", uri]) == 0
    assert "out of distribution: 1 flagged, 0 refused, 1 in distribution, 0 not scored" in capsys.readouterr().out
    summary = _summary(out)
    assert list(summary["status"]) == ["done", "done"]
    assert list(summary["in_distribution"]) == ["True", "False"]
    assert {float(t) for t in summary["ood_threshold"]} == {round(reference.threshold, 6)}
    score_in, score_odd = (float(summary.loc[name, "ood_score"]) for name in ("noise.tif", "smooth.tif"))
    assert score_in <= reference.threshold < score_odd
    assert "mean features of 5 evenly spaced slices" in summary.loc["smooth.tif", "ood_reason"]
    assert (out / "smooth_mask.tif").is_file()  # flag: predicted all the same

    # refuse: the odd volume fails naming its score and the threshold, the other is predicted; same folder, new key
    assert main(["predict", "unet", str(inside), str(odd), "--out", str(out), "--slab", "2", "--ood-policy", "refuse",
                 "--tracking-uri", uri]) == 1
    captured = capsys.readouterr()
    assert "1 refused" in captured.out and "the image is out of distribution: its OOD score" in captured.err
    summary = _summary(out)
    assert dict(summary["status"]) == {"noise.tif": "done", "smooth.tif": "failed"}
    assert f"above the threshold {reference.threshold:.3f}" in summary.loc["smooth.tif", "problem"]
    fresh = tmp_path / "refused"
    assert main(["predict", "unet", str(odd), "--out", str(fresh), "--ood-policy", "refuse",
                 "--tracking-uri", uri]) == 2
    assert not list(fresh.glob("smooth_*"))  # nothing of a refused volume is left behind
    capsys.readouterr()
    assert main(["predict", "unet", str(inside), "--out", str(out), "--ood-policy", "refuse",
                 "--tracking-uri", uri]) == 0
    assert list(_summary(out)["status"]) == ["skipped"]  # a rerun under the same policy keeps what is done


def test_the_refuse_policy_is_part_of_the_batch_key():
    record = {"registered_model": "cellops-unet", "model_version": "1", "family": "unet"}
    assert batch_key(record) == batch_key(record, policy="flag") == "cellops-unet/1"
    assert batch_key(record, policy="refuse") == "cellops-unet/1+refuse"
    with pytest.raises(ValueError, match="unknown out-of-distribution policy 'ignore'"):
        batch_key(record, policy="ignore")


def test_a_version_without_a_reference_is_predicted_unscored_and_says_why(registry, volumes, tmp_path, capsys):
    uri, _, (_, without) = registry
    inside, odd = volumes
    out = tmp_path / "out"
    assert main(["predict", "unet", str(inside), str(odd), "--out", str(out), "--model",
                 f"models:/cellops-unet/{without}", "--ood-policy", "refuse", "--tracking-uri", uri]) == 0
    assert "out of distribution: not scored (this model version has no out-of-distribution reference" \
        in capsys.readouterr().out
    summary = _summary(out)
    assert list(summary["in_distribution"]) == ["", ""] and list(summary["ood_score"]) == ["", ""]
    assert all("has no out-of-distribution reference" in reason for reason in summary["ood_reason"])


def _log(path, rows, version: str = "1") -> None:
    start = datetime(2026, 11, 30, 8, 0, tzinfo=timezone.utc)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as log:
        for i, row in enumerate(rows):
            log.write(json.dumps({"time": (start + timedelta(minutes=i)).isoformat(), "service": "cellops_unet",
                                  "registered_model": "cellops-unet", "model_version": version,
                                  "endpoint": "segment", "ood_score": None, "ood_threshold": None,
                                  "in_distribution": None, "ood_reason": "",
                                  "features": dict(zip(FEATURE_NAMES, map(float, row)))}) + "\n")


def test_monitor_writes_the_drift_report_of_a_request_log(registry, tmp_path, capsys):
    uri, reference, _ = registry
    kept = reference.reference_features
    shifted = kept.copy()
    shifted[:, FEATURE_NAMES.index("log_noise")] -= 3.0  # sharper, cleaner images than the training ones
    log = tmp_path / "monitoring" / "cellops_unet" / "requests.jsonl"
    _log(log, np.vstack([kept, shifted]))
    report = tmp_path / "report.html"
    assert main(["monitor", str(tmp_path / "monitoring"), "--model", "models:/cellops-unet@champion", "--out",
                 str(report), "--window", "10", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "cellops-unet v1: 60 requests (60 scored)" in out and "log_noise" in out and f"report: {report}" in out
    page = report.read_text()
    assert "Per-feature drift" in page and "cellops-unet v1" in page and page.count("data:image/png;base64,") == 3


def test_monitor_refuses_missing_or_empty_logs_and_a_model_without_a_reference(registry, tmp_path, capsys):
    uri, reference, (_, without) = registry
    report = tmp_path / "report.html"
    command = ["monitor", "--out", str(report), "--tracking-uri", uri, "--model"]
    assert main([*command, "cellops-unet/1", str(tmp_path / "missing.jsonl")]) == 2
    assert "cellops monitor: " in (err := capsys.readouterr().err) and "missing.jsonl: no such request log" in err
    (tmp_path / "empty.jsonl").write_text("")
    assert main([*command, "cellops-unet/1", str(tmp_path / "empty.jsonl")]) == 2
    assert "no logged request in" in capsys.readouterr().err
    _log(tmp_path / "requests.jsonl", reference.reference_features[:5], version=without)
    assert main([*command, f"models:/cellops-unet/{without}", str(tmp_path / "requests.jsonl")]) == 2
    assert f"cellops-unet v{without} has no out-of-distribution reference" in capsys.readouterr().err
    assert main([*command, "cellops-nothing/1", str(tmp_path / "requests.jsonl")]) == 2
    assert "cellops-nothing" in capsys.readouterr().err
    assert not report.exists()


class _BrightBlobs(torch.nn.Module):
    """Stands in for a torchvision Mask R-CNN: every bright connected blob is an instance, scored 0.9."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))  # so that the model has a device

    def forward(self, images: list[torch.Tensor]) -> list[dict]:
        picture = images[0][0].numpy()
        labels, n = ndimage.label(picture > 0.8)
        masks = np.array([labels == i for i in range(1, n + 1)], np.float32).reshape(-1, 1, *picture.shape)
        return [{"masks": torch.from_numpy(masks), "labels": torch.ones(n, dtype=torch.int64),
                 "scores": torch.full((n,), 0.9)}]


def _blobs(seed: int, side: int = 64) -> np.ndarray:
    """Colonies as the stand-in was 'trained' on: bright squares on a noisy background."""
    rng = np.random.default_rng(seed)
    image = rng.integers(10, 60, (side, side)).astype(np.uint8)
    for y, x in rng.integers(0, side - 10, (3, 2)):
        image[y:y + 8, x:x + 8] = 240
    return image


def test_maskrcnn_files_carry_their_verdict_and_a_refused_one_writes_nothing(tmp_path):
    from cellops.maskrcnn.ood import FEATURE_NAMES as NAMES, reference_rows as rows
    from cellops.maskrcnn.files import segment_image_to_files
    from cellops.maskrcnn.specs import MaskRCNNServing

    settings = MaskRCNNServing(score_threshold=0.5, tile_size=64, tile_overlap=16, normalization={"mode": "dtype"})
    model = _BrightBlobs()
    reference = fit_reference("maskrcnn", rows(model, [_blobs(s) for s in range(40)], settings, count=40, sizes=(64,)),
                              rows(model, [_blobs(s) for s in range(40, 70)], settings, count=30, sizes=(64,)), NAMES)
    inside, odd = tmp_path / "colonies.png", tmp_path / "ramp.png"
    inside.write_bytes(encode_image(_blobs(99), "png"))
    odd.write_bytes(encode_image(np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1)), "png"))
    answer = segment_image_to_files(model, inside, tmp_path, "colonies", settings, reference=reference)
    assert answer["in_distribution"] is True and answer["ood_score"] <= answer["ood_threshold"]
    flagged = segment_image_to_files(model, odd, tmp_path, "ramp", settings, reference=reference)
    assert flagged["in_distribution"] is False and (tmp_path / "ramp_labels.tif").is_file()
    with pytest.raises(OutOfDistribution, match="above the threshold"):
        segment_image_to_files(model, odd, tmp_path / "refused", "ramp", settings, reference=reference,
                               policy="refuse")
    assert not (tmp_path / "refused").exists() or not list((tmp_path / "refused").iterdir())
    unscored = segment_image_to_files(model, inside, tmp_path, "none", settings)
    assert unscored["in_distribution"] is None and "no out-of-distribution reference" in unscored["ood_reason"]


def test_classified_files_carry_their_verdict_and_a_refused_one_draws_no_cam(tmp_path):
    from cellops.classifier.data import to_model_input
    from cellops.classifier.ood import FEATURE_NAMES as NAMES, reference_rows as rows
    from cellops.classifier.predict import classify_image_to_files
    from cellops.classifier.specs import ClassifierServing
    from models.classifier import build_classifier

    torch.manual_seed(0)
    net = build_classifier("efficientcellnet", num_classes=2, in_channels=1, options={"widths": [8, 16]}).eval()
    settings = ClassifierServing(classes=("ec", "other"), positive_class="ec", channels=1, size=32, batch_size=8)
    inputs = np.array([to_model_input(_blobs(s, 48), channels=1, size=32, normalization=settings.normalization)
                       for s in range(70)])
    reference = fit_reference("classifier", rows(net, inputs[:40], settings), rows(net, inputs[40:], settings), NAMES)
    inside, odd = tmp_path / "cell.png", tmp_path / "ramp.png"
    inside.write_bytes(encode_image(_blobs(99, 48), "png"))
    odd.write_bytes(encode_image(np.tile(np.linspace(0, 255, 48).astype(np.uint8), (48, 1)), "png"))
    answer = classify_image_to_files(net, inside, tmp_path, "cell", settings, cams=True, reference=reference)
    assert answer["in_distribution"] is True and answer["outputs"] == ["cell_cam.png"]
    assert answer["ood_threshold"] == round(reference.threshold, 6)
    assert classify_image_to_files(net, odd, tmp_path, "ramp", settings, reference=reference)["in_distribution"] \
        is False
    with pytest.raises(OutOfDistribution, match="above the threshold"):
        classify_image_to_files(net, odd, tmp_path, "refused", settings, cams=True, reference=reference,
                                policy="refuse")
    assert not (tmp_path / "refused_cam.png").exists()
    assert classify_image_to_files(net, inside, tmp_path, "x", settings)["in_distribution"] is None
