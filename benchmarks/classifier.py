"""CPU inference of the efficient custom classifier against DenseNet121, both trained by the classifier pipeline,
in one run: test accuracy on the same split and images per second on the same CPU threads.

    python benchmarks/classifier.py [--config configs/classifier.yaml] [--threads 2] [--repeats 5]

Reads both from the newest pipeline run that registered both (``cellops-classifier``, tag ``model_name``) in this checkout's
MLflow store, so run ``make train-classifier`` (or ``make demo``) first. Targets (issue 8): the custom network at
least 3x faster than DenseNet121, its accuracy at most 1 point lower.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import mlflow
import numpy as np
import torch
import yaml
from mlflow import MlflowClient

from cellops.classifier.data import SplitSettings, index_class_folder
from cellops.classifier.metrics import classification_scores
from cellops.classifier.predict import ClassifierSettings
from cellops.classifier.train import predict_probabilities
from cellops.io import load_class_images
from tracking import tags
from tracking.runs import project_tracking_uri


def versions_of_one_run(client: MlflowClient, registered: str, model_names: list[str]) -> dict:
    """The versions named ``model_names`` registered by the newest pipeline run that trained all of them (same
    split, same data, same budget)."""
    by_run: dict[str, dict] = {}
    for v in client.search_model_versions(f"name='{registered}'"):
        by_run.setdefault(v.tags.get(tags.ZENML_RUN_ID), {})[v.tags.get(tags.MODEL_NAME)] = v
    complete = [found for found in by_run.values() if all(name in found for name in model_names)]
    if not complete:
        raise SystemExit(f"no run registered {model_names} in {registered}: run the classifier pipeline first")
    return max(complete, key=lambda found: max(int(v.version) for v in found.values()))


def test_split(config: dict) -> tuple[list[Path], np.ndarray]:
    """The pipeline's test split, rebuilt from its config by the pipeline's own indexing."""
    steps = config["steps"]["index_class_folders"]["parameters"]
    index = index_class_folder(steps["data_dir"], SplitSettings.from_dict(steps["split"]))
    chosen = np.flatnonzero(np.asarray(index["splits"]) == "test")
    return [Path(index["files"][i]) for i in chosen], np.asarray(index["labels"])[chosen]


def images_per_second(model: torch.nn.Module, images: torch.Tensor, batch_size: int, repeats: int) -> float:
    """Best of ``repeats`` passes over all ``images``, ``batch_size`` at a time."""
    best = float("inf")
    with torch.inference_mode():
        model(images[:batch_size])  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            for i in range(0, len(images), batch_size):
                model(images[i:i + batch_size])
            best = min(best, time.perf_counter() - start)
    return len(images) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/classifier.yaml"))
    parser.add_argument("--custom", default="efficientcellnet", help="model_name of the custom network")
    parser.add_argument("--reference", default="densenet121", help="model_name it is compared with")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI") or project_tracking_uri(Path.cwd()))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = yaml.safe_load(args.config.read_text())
    registered = config["steps"]["register_classifiers"]["parameters"]["registered_model_name"]
    mlflow.set_tracking_uri(args.tracking_uri)
    client = MlflowClient()
    files, labels = test_split(config)
    results = {}
    versions = versions_of_one_run(client, registered, [args.custom, args.reference])
    for role, model_name in (("custom", args.custom), ("reference", args.reference)):
        version = versions[model_name]
        settings = ClassifierSettings.from_dict(tags.inference_from_tags(version.tags))
        images, failures = load_class_images(files, channels=settings.channels, size=settings.size)
        assert not failures, failures
        model = mlflow.pytorch.load_model(f"models:/{registered}/{version.version}", map_location="cpu").eval()
        scores = classification_scores(predict_probabilities(model, images, 64), labels, settings.positive)
        x = torch.from_numpy(images)
        results[role] = {
            "model_name": model_name, "model_version": version.version,
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "test_accuracy": scores.accuracy, "test_sensitivity": scores.sensitivity,
            "images_per_second_batch1": images_per_second(model, x[:64], 1, args.repeats),
            "images_per_second_batch32": images_per_second(model, x, 32, args.repeats),
        }
    custom, reference = results["custom"], results["reference"]
    speedup = {k: custom[k] / reference[k] for k in ("images_per_second_batch1", "images_per_second_batch32")}
    accuracy_gap = reference["test_accuracy"] - custom["test_accuracy"]
    report = {
        "cpu": platform.processor() or platform.machine(), "threads": args.threads, "test_images": len(files),
        **results, "speedup": speedup, "accuracy_points_below_reference": 100 * accuracy_gap,
        "targets_met": {"speedup_at_least_3x": min(speedup.values()) >= 3.0,
                        "accuracy_at_most_1_point_lower": accuracy_gap <= 0.01},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
