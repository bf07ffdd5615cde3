"""Classifier explanations and runtimes, in one run on the same test images:

1. CAM: cellops' batched class-activation maps (one forward pass, no gradients) against pytorch-grad-cam's
   ``GradCAM`` (the ``grad-cam`` package; forward and backward hooks on the last feature layer), on the same models
   (the champion and the efficient custom DCNN and DenseNet121 the same pipeline run registered) and the same
   batches. For a network
   that ends in global average pooling and one linear layer, Grad-CAM's channel weights are the linear weights
   divided by the map's area, so both explain the same class with the same map up to scale; they differ only in the
   order of post-processing (grad-cam: ReLU and min-max at feature resolution, then resize; cellops: resize, then
   min-max). Before any figure is reported, both are computed at the feature maps' resolution with grad-cam's
   scaling and must agree within 1e-4 everywhere, the same class explained for every image.
2. Runtimes: the champion's trunk in every runtime of :mod:`cellops.runtimes`, timed over classifying and
   explaining the test split, its accuracy next to torch fp32's (target: >= 1.8x with an accuracy change
   <= 0.5 point).

    python benchmarks/classifier_runtimes.py [--model models:/cellops-classifier@champion] [--batch 32] [--repeats 3]
        [--runtime-repeats 10]
    python benchmarks/classifier_runtimes.py --smoke --out /tmp/x.json   (random networks, random images)

Needs the demo's classifier run and data (``make demo``); writes outputs/benchmarks/classifier_runtimes.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml
from benchlib import host_choice, print_summary, row, runtime_rows, write_result

from cellops.classifier.metrics import classification_scores
from cellops.classifier.predict import explain
from cellops.classifier.runtime import export_classifier, runtime_classifier
from cellops.runtimes import RUNTIMES, check_runtime, choose_runtime, interleaved_best
from models.cam import class_activation_maps

CAM_TOLERANCE = 1e-4  # largest difference between the two explanations at feature resolution, same scaling
ACCURACY_TOLERANCE = 0.005  # half a point


def gradcam_maps(model: torch.nn.Module, images: torch.Tensor, batch: int,
                 size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """pytorch-grad-cam's Grad-CAM of each image's predicted class, ``batch`` images per call (resized to ``size``,
    by default the images')."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    class SizedGradCAM(GradCAM):
        def get_target_width_height(self, input_tensor):
            return (size[1], size[0]) if size else super().get_target_width_height(input_tensor)

    maps, chosen = [], []
    with SizedGradCAM(model=model, target_layers=[model.features]) as cam:
        for i in range(0, len(images), batch):
            x = images[i:i + batch]
            with torch.no_grad():
                classes = model(x).argmax(dim=1).tolist()
            maps.append(cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes]))
            chosen += classes
    return np.concatenate(maps), np.asarray(chosen)


def cellops_maps(model: torch.nn.Module, images: torch.Tensor, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """cellops' CAM of each image's predicted class, ``batch`` images per forward pass."""
    maps, chosen = [], []
    for i in range(0, len(images), batch):
        m, logits = class_activation_maps(model, images[i:i + batch])
        maps.append(m.numpy())
        chosen.append(logits.argmax(dim=1).numpy())
    return np.concatenate(maps), np.concatenate(chosen)


def map_differences(ours: np.ndarray, theirs: np.ndarray) -> dict[str, float]:
    """Largest and mean absolute difference between two stacks of maps.

    >>> map_differences(np.array([[0.0, 1.0], [0.5, 0.5]]), np.array([[0.0, 0.6], [0.5, 0.5]]))
    {'max_abs_difference': 0.4, 'mean_abs_difference': 0.1}
    """
    difference = np.abs(ours - theirs)
    return {"max_abs_difference": float(difference.max()), "mean_abs_difference": float(difference.mean())}


def same_explanations(model: torch.nn.Module, images: torch.Tensor, batch: int) -> tuple[dict[str, float], bool]:
    """Largest and mean difference (:func:`map_differences`) between cellops' CAM and pytorch-grad-cam's Grad-CAM,
    both at the feature maps' resolution (no resizing) and with grad-cam's scaling (ReLU, per-image min-max), and
    whether both explained the same classes. For a GAP + linear head the two are the same map up to scale."""
    with torch.no_grad():
        size = tuple(model.feature_maps(images[:1]).shape[-2:])
    def unit(maps: np.ndarray) -> np.ndarray:  # min-max without grad-cam's 1e-7, which skews maps of small range
        maps = maps - maps.min(axis=(1, 2), keepdims=True)
        return maps / np.maximum(maps.max(axis=(1, 2), keepdims=True), np.finfo(np.float32).tiny)

    theirs, their_classes = gradcam_maps(model, images, batch, size)
    ours, our_classes = [], []
    for i in range(0, len(images), batch):
        raw, logits = class_activation_maps(model, images[i:i + batch], normalise=False, size=size)
        ours.append(raw.clamp_min(0).numpy())
        our_classes.append(logits.argmax(dim=1).numpy())
    same_classes = np.array_equal(np.concatenate(our_classes), their_classes)
    return map_differences(unit(np.concatenate(ours)), unit(theirs)), same_classes


def load_inputs(args) -> dict:
    """Models to explain ({role: (name, model)}), the champion's settings, test and calibration images."""
    from models.classifier import build_classifier

    if args.smoke:
        rng = np.random.default_rng(0)
        images = rng.random((8, 1, 48, 48), dtype=np.float32)
        labels = rng.integers(0, 2, 8)
        models = {"champion": ("efficientcellnet (random, smoke)",
                               build_classifier("efficientcellnet", num_classes=2, in_channels=1).eval())}
        return {"models": models, "test": images, "labels": labels, "calibration": images, "positive": 1}
    import mlflow
    from mlflow import MlflowClient

    from cellops.classifier.data import SplitSettings, index_class_folder
    from cellops.classifier.specs import ClassifierServing
    from cellops.classifier.data import load_class_images
    from tracking import tags
    from tracking.cli import default_tracking_uri
    from tracking.registry import load_registered, resolve_registered

    uri = args.tracking_uri or default_tracking_uri()
    try:
        name, record = resolve_registered(uri, args.model)
    except LookupError as error:
        raise SystemExit(f"{error}: train the classifiers first (make train-classifier, or make demo)") from None
    client = MlflowClient(uri)
    champion = client.get_model_version(name, record["model_version"])
    settings = ClassifierServing.from_dict(tags.inference_from_tags(champion.tags))
    models = {"champion": (f"{champion.tags.get(tags.MODEL_NAME)} ({name} v{champion.version})",
                           load_registered(uri, name, record))}
    run = champion.tags.get(tags.ZENML_RUN_ID)
    for v in client.search_model_versions(f"name='{name}'"):
        model_name = v.tags.get(tags.MODEL_NAME)
        if v.tags.get(tags.ZENML_RUN_ID) == run and model_name in args.also and v.version != champion.version:
            mlflow.set_tracking_uri(uri)
            models[model_name] = (f"{model_name} ({name} v{v.version})",
                                   mlflow.pytorch.load_model(f"models:/{name}/{v.version}", map_location="cpu").eval())
    config = yaml.safe_load(Path(args.config).read_text())["steps"]["index_class_folders"]["parameters"]
    index = index_class_folder(config["data_dir"], SplitSettings.from_dict(config["split"]))
    splits, labels = np.asarray(index["splits"]), np.asarray(index["labels"])

    def images(split: str) -> np.ndarray:
        files = [Path(index["files"][i]) for i in np.flatnonzero(splits == split)]
        loaded, failures = load_class_images(files, channels=settings.channels, size=settings.size,
                                             normalization=settings.normalization)
        if failures:
            raise SystemExit(f"unreadable images in the {split} split: {failures}")
        return loaded

    return {"models": models, "test": images("test"), "labels": labels[splits == "test"],
            "calibration": images("train")[:256], "positive": settings.positive}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models:/cellops-classifier@champion")
    parser.add_argument("--also", nargs="+", default=["efficientcellnet", "densenet121"],
                        help="model_names of the champion's run explained beside it (the custom DCNN, DenseNet121)")
    parser.add_argument("--config", default="configs/classifier.yaml", help="the pipeline config (its data split)")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runtime-repeats", type=int, default=10,
                        help="interleaved passes over the test split per runtime (a pass takes 30-90 ms: the best of "
                             "3 still caught a shared CPU's noise)")
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    parser.add_argument("--smoke", action="store_true", help="random network and images: checks the script runs")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.smoke:
        args.repeats, args.runtime_repeats, args.batch = 1, 1, 4
        # One runtime of each kind (both graphs are exported and probed anyway): the smoke run checks the script.
        args.runtimes = ["torch", "onnxruntime", "openvino-int8"]
    inputs = load_inputs(args)
    test = torch.from_numpy(np.ascontiguousarray(inputs["test"], dtype=np.float32))
    summary, result = [], {"test_images": len(test), "batch": args.batch, "cam": {}}

    # -- 1. CAM against Grad-CAM, on each model and the same batches.
    for role, (name, model) in inputs["models"].items():
        model.eval()
        differences, same_classes = same_explanations(model, test, args.batch)
        difference = differences["max_abs_difference"]
        if not difference <= CAM_TOLERANCE or not same_classes:
            raise SystemExit(f"{name}: CAM and Grad-CAM differ by up to {difference:.2e} (tolerance {CAM_TOLERANCE}) "
                             f"or explain other classes (same classes: {same_classes}): the comparison is void")
        ours = cellops_maps(model, test, args.batch)[0]
        times = interleaved_best({"gradcam": lambda m=model: gradcam_maps(m, test, args.batch),
                                  "cam": lambda m=model: cellops_maps(m, test, args.batch)}, args.repeats)
        t_theirs, t_ours = times["gradcam"], times["cam"]
        result["cam"][role] = {"model": name, "gradcam_seconds": round(t_theirs, 4), "cam_seconds": round(t_ours, 4),
                               **differences, "shape": list(ours.shape)}
        summary.append(row(f"CAM of {name}, batch {args.batch}", "cellops CAM", len(test) / t_ours,
                           "pytorch-grad-cam GradCAM", len(test) / t_theirs, "images/s", target=3.0,
                           note=f"maps equal within {difference:.1e} at feature resolution"))

    # -- 2. The champion in every runtime: classify and explain the test split.
    name, model = inputs["models"]["champion"]
    folder = Path(tempfile.mkdtemp(prefix="classifier-runtimes-"))
    fast = export_classifier(model, inputs["calibration"], folder, args.batch)
    images = np.ascontiguousarray(inputs["test"], dtype=np.float32)
    accuracy, batches, runs, failed = {}, {}, {}, {}
    candidates = [args.batch] if args.smoke else sorted({16, 32, 64, 128, args.batch})
    for runtime in args.runtimes:
        module = runtime_classifier(runtime, folder, fast)
        try:
            probabilities, _ = explain(module, images, args.batch)  # also the warm-up
        except RuntimeError as error:  # e.g. OpenVINO bf16 with oneDNN capped below AVX-512 (no bf16 kernels)
            failed[runtime] = " ".join(str(error).split())[-300:]
            print(f"{runtime} does not run here: {failed[runtime]}")
            continue
        accuracy[runtime] = classification_scores(probabilities, np.asarray(inputs["labels"]),
                                                  inputs["positive"]).accuracy
        # On the whole split (a batch larger than half of it changes how the last batch falls), each size warmed up
        # (OpenVINO compiles one graph per input shape), interleaved: a noisy pick cost torch fp32 40 % once.
        for b in candidates:
            explain(module, images, b)
        tried = interleaved_best({b: lambda m=module, b=b: explain(m, images, b) for b in candidates},
                                 max(1, args.runtime_repeats // 2))
        batches[runtime] = min(tried, key=tried.get)  # the batch size that is fastest for this runtime
        runs[runtime] = lambda m=module, b=batches[runtime]: explain(m, images, b)
    seconds = interleaved_best(runs, args.runtime_repeats)
    checks = {r: check_runtime(r, seconds[r], seconds["torch"], accuracy[r], accuracy["torch"], ACCURACY_TOLERANCE)
              for r in args.runtimes if r not in failed}
    summary += runtime_rows(checks, len(images), "images/s", "classify + CAM, {runtime} vs torch fp32",
                            lambda check: f"accuracy change {100 * check.change:+.2f} points")
    result.update({"champion": name, "batch_sizes": batches, "seconds": {k: round(v, 4) for k, v in seconds.items()},
                   "accuracy": accuracy, "checks": {k: c.as_dict() for k, c in checks.items()},
                   "fastest_passing_runtime": choose_runtime(list(checks.values())), "failed_runtimes": failed})
    print_summary(summary)
    if not args.smoke:  # what `cellops predict` and the service run the champion on here
        result["host_choice"] = host_choice(args.tracking_uri, args.model)
    write_result("classifier_runtimes", result, summary, args.out, smoke=args.smoke)


if __name__ == "__main__":
    main()
