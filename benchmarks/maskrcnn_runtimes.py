"""Mask R-CNN on the CPU, in one run on the champion's test images:

1. Runtimes: the backbone, feature pyramid and RPN convolutions in every runtime of :mod:`cellops.runtimes` (the
   box and mask heads in torch, with the vectorised RoIAlign of :mod:`cellops.maskrcnn.heads`), timed over
   predicting the test images as served, mask AP50 and F1 next to torch fp32's (target: >= 1.8x with an AP50
   change <= 0.01).
2. COCO evaluation: pycocotools against faster-coco-eval on the torch model's test predictions (every detection,
   as AP is defined): mask and box AP, AP50, AP75 must agree to 1e-6 before their times are compared; cellops
   uses the faster one (``cellops.maskrcnn.evaluation.DEFAULT_COCO_BACKEND``).

    python benchmarks/maskrcnn_runtimes.py [--model models:/cellops-maskrcnn@champion] [--repeats 3]
    python benchmarks/maskrcnn_runtimes.py --smoke --out /tmp/x.json   (random network, two generated images)

Needs the demo's champion and data (``make demo``); writes outputs/benchmarks/maskrcnn_runtimes.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import yaml
from benchlib import print_summary, row, runtime_rows, write_result

from cellops.maskrcnn.train import evaluate
from cellops.maskrcnn.evaluation import COCO_BACKENDS, coco_ap
from cellops.maskrcnn.specs import MaskRCNNServing
from cellops.maskrcnn.runtime import export_maskrcnn, with_runtime
from cellops.runtimes import RUNTIMES, check_runtime, choose_runtime, interleaved_best

AP50_TOLERANCE = 0.01
COCO_TOLERANCE = 1e-6


def load_inputs(args) -> dict:
    """The network, its prediction settings, test samples with their COCO ground truth, calibration images."""
    if args.smoke:
        return _smoke_inputs()
    from cellops.maskrcnn.data import ImageSplitSettings, load_instance_samples, split_images, subset_coco
    from cellops.maskrcnn.specs import AnnotationSource
    from tracking import tags
    from tracking.cli import default_tracking_uri
    from tracking.registry import load_registered, resolve_registered

    uri = args.tracking_uri or default_tracking_uri()
    try:
        name, record = resolve_registered(uri, args.model)
    except LookupError as error:
        raise SystemExit(f"{error}: train Mask R-CNN first (make train-maskrcnn, or make demo)") from None
    stored = record[tags.INFERENCE_SETTINGS]
    inference = stored if isinstance(stored, dict) else __import__("json").loads(stored)
    config = yaml.safe_load(Path(args.config).read_text())["steps"]["load_instance_annotations"]["parameters"]
    source = AnnotationSource.from_dict(config["annotations"])
    coco = source.load()
    index = split_images(coco, source.images_dir, ImageSplitSettings.from_dict(config["split"]))
    test_ids = [i for i, s in zip(index["image_ids"], index["splits"]) if s == "test"]
    settings = MaskRCNNServing.from_dict(inference)
    return {"model": load_registered(uri, name, record), "source": f"{name} v{record['model_version']}",
            "settings": settings,
            "test": load_instance_samples(coco, index, "test", settings.normalization),
            "truth": subset_coco(coco, test_ids),
            "calibration": [image for image, _ in load_instance_samples(coco, index, "train",
                                                                        settings.normalization)[:8]]}


def _smoke_inputs() -> dict:
    """A random small network and two generated 256-px colony images (for --smoke)."""
    from cellops.maskrcnn.annotations import load_annotations
    from cellops.maskrcnn.data import ImageSplitSettings, load_instance_samples, split_images
    from cellops.synthetic.colonies import write_colony_dataset
    from cellops.config import from_mapping
    from models.maskrcnn import MaskRCNNSettings, build_maskrcnn

    folder = Path(tempfile.mkdtemp(prefix="maskrcnn-smoke-"))
    write_colony_dataset(folder, n_images=2, shape=(256, 256), seed=7)  # the tests' smallest
    coco = load_annotations("coco", folder / "annotations.json", folder / "images")
    index = split_images(coco, folder / "images", ImageSplitSettings(val_fraction=0.0, test_fraction=0.0, seed=0))
    samples = load_instance_samples(coco, index, "train", MaskRCNNServing().normalization)
    settings = from_mapping(MaskRCNNSettings, {"backbone": "resnet18", "fpn_channels": 16, "representation_size": 32,
                                        "mask_head_layers": 1, "min_size": 128, "max_size": 128,
                                        "anchor_sizes": [16, 32, 64, 128, 256], "score_threshold": 0.0,
                                        "detections_per_image": 20})
    return {"model": build_maskrcnn(settings, 2).eval(), "source": "random (smoke)", "settings": MaskRCNNServing(
                score_threshold=0.0, tile_size=128, tile_overlap=32, max_detections=20),
            "test": samples, "truth": coco, "calibration": [image for image, _ in samples]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models:/cellops-maskrcnn@champion")
    parser.add_argument("--config", default="configs/maskrcnn.yaml", help="the pipeline config (its data split)")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds (best counts)")
    parser.add_argument("--coco-repeats", type=int, default=5)
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    parser.add_argument("--smoke", action="store_true", help="random network, generated images: checks the script runs")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.smoke:
        args.repeats, args.coco_repeats = 1, 1
        # One runtime of each kind (both graphs are exported and probed anyway): the smoke run checks the script.
        args.runtimes = ["torch", "onnxruntime", "openvino-int8"]
    inputs = load_inputs(args)
    model, settings, test, truth = inputs["model"].eval(), inputs["settings"], inputs["test"], inputs["truth"]
    folder = Path(tempfile.mkdtemp(prefix="maskrcnn-runtimes-"))
    names = export_maskrcnn(model, inputs["calibration"], folder)

    # -- 1. every runtime on the test images, as served (tiles, thresholds), AP over every detection.
    ap50, f1, detections, runs = {}, {}, {}, {}
    for runtime in args.runtimes:
        module = with_runtime(model, runtime, folder, names)
        scores, detections[runtime] = evaluate(module, test, truth, settings)  # warm-up
        ap50[runtime], f1[runtime] = scores.mask_ap50, scores.f1_50
        runs[runtime] = lambda m=module: evaluate(m, test, truth, settings)
    seconds = interleaved_best(runs, args.repeats)
    checks = {r: check_runtime(r, seconds[r], seconds["torch"], ap50[r], ap50["torch"], AP50_TOLERANCE)
              for r in args.runtimes}
    summary = runtime_rows(checks, len(test), "images/s", "predict + score test images, {runtime} vs torch fp32",
                           lambda check: f"mask AP50 change {check.change:+.4f}, "
                                         f"F1 change {f1[check.runtime] - f1['torch']:+.4f}")

    # -- 2. COCO evaluation of the torch predictions: the same numbers first, then the time.
    def coco_run(backend: str):
        return lambda: [coco_ap(truth, [{k: v for k, v in d.items() if k != drop} for d in detections["torch"]], kind,
                                settings.max_detections, backend) for kind, drop in (("segm", "bbox"),
                                                                                      ("bbox", "segmentation"))]

    coco_runs = {backend: coco_run(backend) for backend in COCO_BACKENDS}
    coco = {backend: {"ap": run()} for backend, run in coco_runs.items()}
    for backend, elapsed in interleaved_best(coco_runs, args.coco_repeats).items():
        coco[backend]["seconds"] = elapsed
    difference = float(np.abs(np.asarray(coco["pycocotools"]["ap"]) - np.asarray(coco["faster-coco-eval"]["ap"])).max())
    if difference > COCO_TOLERANCE:
        raise SystemExit(f"pycocotools and faster-coco-eval differ by {difference:.2e} (> {COCO_TOLERANCE}): "
                         "keep pycocotools")
    summary.append(row("COCO mask + box AP of the test predictions", "faster-coco-eval",
                       coco["faster-coco-eval"]["seconds"], "pycocotools", coco["pycocotools"]["seconds"], "s",
                       higher_is_better=False, note=f"APs equal within {difference:.1e}, "
                                                    f"{len(detections['torch'])} detections"))
    result = {"model": inputs["source"], "test_images": len(test), "seconds": {k: round(v, 4) for k, v in seconds.items()},
              "mask_ap50": ap50, "f1_50": f1, "checks": {k: c.as_dict() for k, c in checks.items()},
              "fastest_passing_runtime": choose_runtime(list(checks.values())),
              "coco": coco, "coco_max_difference": difference}
    print_summary(summary)
    write_result("maskrcnn_runtimes", result, summary, args.out, smoke=args.smoke)


if __name__ == "__main__":
    main()
