"""CPU inference of the efficient custom classifier against DenseNet121, both trained by the classifier pipeline,
in one run: test accuracy on the same split and images per second on the same CPU threads, each version on the
runtime chosen for this CPU (`cellops.host_runtime`; CELLOPS_RUNTIME overrides), as `cellops predict` runs it.

    python benchmarks/classifier.py [--config configs/classifier.yaml] [--threads 2] [--repeats 5]
                                    [--smoke] [--out PATH]

Reads both from the newest pipeline run that registered both (``cellops-classifier``, tag ``model_name``) in this checkout's
MLflow store, so run ``make train-classifier`` (or ``make demo``) first. Targets (issue 8): the custom network at
least 3x faster than DenseNet121, its accuracy at most 1 point lower. The report and the summary rows (custom
against DenseNet121 in images/s at batch 1 and 32, the accuracies in the note) are printed and written to
outputs/benchmarks/classifier.json (or --out).

``--smoke``: no MLflow store and no data: both networks as the config describes them, built with random weights
by the project's builder (``models.classifier.build_classifier``), timed on 4 random images, once, on one thread;
no accuracy. It checks that the script runs (a few seconds), not how fast the trained networks are.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import yaml
from benchlib import row, write_result

from models.classifier import build_classifier
from tracking import tags

if TYPE_CHECKING:
    from mlflow import MlflowClient

SMOKE_IMAGES = 4


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
    from cellops.classifier.data import SplitSettings, index_class_folder

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


def timings(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> dict:
    """Parameters and images/s at batch 1 (the first 64 images) and batch 32 (all of them)."""
    return {"parameters": int(sum(p.numel() for p in model.parameters())),
            "images_per_second_batch1": images_per_second(model, x[:64], 1, repeats),
            "images_per_second_batch32": images_per_second(model, x, 32, repeats)}


def registered_results(args: argparse.Namespace, config: dict) -> tuple[dict, int]:
    """Both trained networks from the MLflow store, scored on the pipeline's test split and timed."""
    # Here, not at the top: --smoke needs neither MLflow nor the data and scoring code (seconds of imports).
    import mlflow
    from mlflow import MlflowClient

    from cellops.classifier.metrics import classification_scores
    from cellops.classifier.specs import ClassifierServing
    from cellops.classifier.train import predict_probabilities
    from cellops.classifier.data import load_class_images
    from tracking.batch import resolve_batch_model, version_on_host
    from tracking.registry import load_registered
    from tracking.runs import project_tracking_uri

    registered = config["steps"]["register_classifiers"]["parameters"]["registered_model_name"]
    mlflow.set_tracking_uri(args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                            or project_tracking_uri(Path.cwd()))
    client = MlflowClient()
    files, labels = test_split(config)
    results = {}
    versions = versions_of_one_run(client, registered, [args.custom, args.reference])
    for role, model_name in (("custom", args.custom), ("reference", args.reference)):
        version = versions[model_name]
        settings = ClassifierServing.from_dict(tags.inference_from_tags(version.tags))
        images, failures = load_class_images(files, channels=settings.channels, size=settings.size,
                                             normalization=settings.normalization)
        assert not failures, failures
        # Each version on the runtime chosen for this CPU (CELLOPS_RUNTIME overrides), as `cellops predict` runs it.
        record = resolve_batch_model(mlflow.get_tracking_uri(), f"models:/{registered}/{version.version}")
        model, choice = version_on_host(mlflow.get_tracking_uri(), record)
        print(choice.summary())
        scores = classification_scores(predict_probabilities(model, images, 64), labels, settings.positive)
        parameters = sum(p.numel() for p in load_registered(mlflow.get_tracking_uri(), registered, record).parameters())
        results[role] = {
            "model_name": model_name, "model_version": version.version,
            "runtime": choice.runtime, "runtime_precision": choice.precision, "runtime_reason": choice.reason,
            "test_accuracy": scores.accuracy, "test_sensitivity": scores.sensitivity,
            **timings(model, torch.from_numpy(images), args.repeats), "parameters": int(parameters),
        }
    return results, len(files)


def untrained_results(args: argparse.Namespace, config: dict) -> tuple[dict, int]:
    """--smoke: both networks as the config's ``models`` describe them, random weights, timed on random images."""
    parameters = config["parameters"]
    size, channels = parameters["input"]["size"], parameters["input"]["channels"]
    x = torch.from_numpy(np.random.default_rng(0).random((SMOKE_IMAGES, channels, size, size), dtype=np.float32))
    results = {}
    for role, model_name in (("custom", args.custom), ("reference", args.reference)):
        spec = parameters["models"][model_name]
        model = build_classifier(spec["architecture"], num_classes=2, in_channels=channels,
                                 options=spec.get("options"), seed=0).eval()
        results[role] = {"model_name": model_name, "model_version": None, "weights": "random (smoke)",
                         "test_accuracy": None, "test_sensitivity": None, **timings(model, x, args.repeats)}
    return results, 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/classifier.yaml"))
    parser.add_argument("--custom", default="efficientcellnet", help="model_name of the custom network")
    parser.add_argument("--reference", default="densenet121", help="model_name it is compared with")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tracking-uri", default=None,
                        help="the MLflow store (default: $MLFLOW_TRACKING_URI, else this checkout's)")
    parser.add_argument("--out", type=Path, default=None, help="the JSON (default outputs/benchmarks/classifier.json)")
    parser.add_argument("--smoke", action="store_true",
                        help="random-weight networks on 4 random images, once, one thread, no accuracy: checks that "
                             "the script runs")
    args = parser.parse_args()
    if args.smoke:  # one thread: a smoke run is a check, often beside other work on the same cores
        args.repeats, args.threads = 1, 1
    torch.set_num_threads(args.threads)
    config = yaml.safe_load(args.config.read_text())
    results, test_images = (untrained_results if args.smoke else registered_results)(args, config)
    custom, reference = results["custom"], results["reference"]
    speedup = {k: custom[k] / reference[k] for k in ("images_per_second_batch1", "images_per_second_batch32")}
    if args.smoke:
        accuracy_gap, accuracy_note = None, "accuracy not measured (smoke: random weights, random images)"
    else:
        accuracy_gap = reference["test_accuracy"] - custom["test_accuracy"]
        accuracy_note = (f"test accuracy {custom['test_accuracy']:.3f} vs {reference['test_accuracy']:.3f}: "
                         f"{100 * accuracy_gap:.1f} points lower (target at most 1)")
    report = {
        "cpu": platform.processor() or platform.machine(), "threads": args.threads, "test_images": test_images,
        **results, "speedup": speedup,
        "accuracy_points_below_reference": None if accuracy_gap is None else 100 * accuracy_gap,
        "targets_met": {"speedup_at_least_3x": min(speedup.values()) >= 3.0,
                        "accuracy_at_most_1_point_lower": None if accuracy_gap is None else accuracy_gap <= 0.01},
    }
    if args.smoke:
        report["smoke_images"] = SMOKE_IMAGES
    summary = [row(f"classifier CPU inference, batch {batch}", custom["model_name"],
                   custom[f"images_per_second_batch{batch}"], reference["model_name"],
                   reference[f"images_per_second_batch{batch}"], "images/s", target=3.0,
                   note=f"{args.threads} threads; {accuracy_note}; runtimes chosen on this CPU: "
                        f"{custom.get('runtime', 'torch')} vs {reference.get('runtime', 'torch')}")
               for batch in (1, 32)]
    print(json.dumps(report, indent=2))
    write_result("classifier", report, summary, args.out, smoke=args.smoke)


if __name__ == "__main__":
    main()
