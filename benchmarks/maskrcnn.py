"""CPU inference speed of Mask R-CNN backbones in one run: the light ones (ResNet-18-FPN as in the demo config,
MobileNetV3-Large-FPN) against the lab's ResNet-50-FPN, on the same images and CPU threads.

    python benchmarks/maskrcnn.py [--config configs/maskrcnn.yaml] [--threads 2] [--repeats 3] [--images 4]
                                  [--smoke] [--out PATH]

Every architecture is timed with the same workload: the demo config's input scale, 100 detections per image
forced through the mask head (score threshold 0), so speed reflects the network, not how many objects a randomly
initialised model happens to report. Results go to stdout and outputs/benchmarks/maskrcnn.json (or --out), with
the summary rows (ResNet-18-FPN and MobileNetV3-FPN against ResNet-50-FPN, images/s).

``--smoke``: no data: one generated 256x256 colony image, scaled to 128 px, 10 detections forced through the mask
head, one repeat, one thread: checks that the script runs (a few seconds), not how fast the networks are.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
import yaml
from benchlib import row, write_result

from cellops.io import read_image_file
from cellops.maskrcnn.annotations import AnnotationError
from cellops.intensity import Normalization
from cellops.maskrcnn.data import model_image
from cellops.maskrcnn.specs import AnnotationSource
from cellops.synthetic.colonies import generate_colony_image
from cellops.config import from_mapping
from models.maskrcnn import MaskRCNNSettings, build_maskrcnn

#: Backbone -> its settings on top of the config's shared model settings (ResNet-50 as torchvision ships it).
ARCHITECTURES = {
    "resnet18_fpn (demo)": {},
    "mobilenet_v3_large_fpn": {"backbone": "mobilenet_v3_large", "anchor_sizes": [32, 64, 128]},
    "resnet50_fpn (paper heads)": {"backbone": "resnet50", "fpn_channels": 256, "representation_size": 1024,
                                   "mask_head_layers": 4},
}


@torch.no_grad()
def images_per_second(model: torch.nn.Module, images: list[torch.Tensor], repeats: int) -> float:
    """Best of ``repeats`` passes over ``images`` one at a time (after one warm-up pass)."""
    model.eval()
    model(images[:1])
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for image in images:
            model([image])
        best = min(best, time.perf_counter() - started)
    return len(images) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/maskrcnn.yaml")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None, help="the JSON (default outputs/benchmarks/maskrcnn.json)")
    parser.add_argument("--smoke", action="store_true",
                        help="one small generated image, one repeat, one thread: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:  # one thread: a smoke run is a check, often beside other work on the same cores
        args.threads, args.repeats, args.images = 1, 1, 1
    torch.set_num_threads(args.threads)
    config = yaml.safe_load(Path(args.config).read_text())
    shared = config["parameters"]["model"]
    detections = 100
    if args.smoke:
        shared, detections = {**shared, "min_size": 128, "max_size": 128}, 10
        images = [model_image(generate_colony_image((256, 256), seed=0, n_colonies=(1, 2)).image, Normalization())]
    else:
        source = AnnotationSource.from_dict(config["steps"]["load_instance_annotations"]["parameters"]["annotations"])
        try:
            coco = source.load()
        except (AnnotationError, OSError) as error:
            raise SystemExit(f"{error}: run `make data` first") from None
        files = [Path(source.images_dir) / img["file_name"] for img in coco["images"]]
        images = [model_image(read_image_file(p), Normalization()) for p in files[: args.images]]
    results = {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
               "image_size": list(images[0].shape[-2:]), "model_input": shared["min_size"], "architectures": {}}
    for name, overrides in ARCHITECTURES.items():
        settings = from_mapping(MaskRCNNSettings, {**shared, **overrides, "score_threshold": 0.0,
                                               "detections_per_image": detections})
        model = build_maskrcnn(settings, 2)
        speed = images_per_second(model, images, args.repeats)
        parameters = sum(p.numel() for p in model.parameters())
        results["architectures"][name] = {"images_per_second": round(speed, 3), "parameters": parameters}
        print(f"{name:28s} {speed:7.2f} images/s  {parameters / 1e6:6.1f} M parameters", flush=True)
    light = results["architectures"]["resnet18_fpn (demo)"]["images_per_second"]
    heavy = results["architectures"]["resnet50_fpn (paper heads)"]["images_per_second"]
    results["speedup_resnet18_vs_resnet50"] = round(light / heavy, 2)
    print(f"ResNet-18-FPN (demo) is {light / heavy:.1f}x faster than ResNet-50-FPN on {args.threads} threads")
    results["detections_per_image"] = detections
    note = (f"{len(images)} images, input {shared['min_size']} px, {detections} detections through the mask head, "
            f"{args.threads} threads")
    summary = [row("Mask R-CNN CPU inference", name, results["architectures"][name]["images_per_second"],
                   "resnet50_fpn (paper heads)", heavy, "images/s", note=note)
               for name in ("resnet18_fpn (demo)", "mobilenet_v3_large_fpn")]
    write_result("maskrcnn", results, summary, args.out, smoke=args.smoke)


if __name__ == "__main__":
    main()
