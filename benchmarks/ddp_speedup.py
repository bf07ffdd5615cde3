"""U-Net training on one process against DDP on N processes (gloo, CPU), same global batch, same patches.

    python benchmarks/ddp_speedup.py [--config configs/unet.yaml] [--patches 512] [--epochs 2] [--processes 2]
                                     [--smoke] [--out PATH]

Patches are sampled from the built-in EM volume as the pipeline samples them (``make data`` first). One process
uses all the CPU threads; each of N processes uses threads / N. Wall time of training (validation included, on
rank 0) and the final validation scores of both are reported; the figures and the summary row (DDP against one
process, wall time) go to outputs/benchmarks/ddp_speedup.json (or --out).

``--smoke``: no data: 8 patches of 32 px sampled from a small generated EM volume (6x64x64), one epoch, a tiny
U-Net (4 base channels, depth 2), tiles of 32, one thread per process, rank 0 on a free port: checks that the
script runs (one training in this process, one under torchrun), not how fast DDP is.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import tempfile
import time
from pathlib import Path

import torch
import yaml
from benchlib import row, write_result

from cellops.distributed import DistributedSettings
from cellops.synthetic.em import generate_em_volume
from cellops.unet.data import load_lucchi, split_slices, training_patches
from cellops.unet.distributed_train import fit_distributed
from cellops.unet.specs import UNetServing
from cellops.unet.train import build_model, fit
from cellops.unet.specs import Architecture, UNetTraining


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/unet.yaml"))
    parser.add_argument("--patches", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="the JSON (default outputs/benchmarks/ddp_speedup.json)")
    parser.add_argument("--smoke", action="store_true",
                        help="a few patches of generated data, one epoch, a tiny U-Net: checks that the script runs")
    args = parser.parse_args()
    config = yaml.safe_load(args.config.read_text())
    steps = config["steps"]
    architecture = config["parameters"]["architecture"]
    inference = config["parameters"]["inference"]
    threads = os.cpu_count() or 1
    sampling = {k: v for k, v in steps["sample_augmented_patches"]["parameters"].items()
                if k not in ("n_patches", "corrections_share")}  # no corrections in the benchmark's data
    if args.smoke:  # one thread per process: a smoke run is a check, often beside other work on the same cores
        args.patches, args.epochs, threads = 8, 1, 1
        architecture = {**architecture, "base_channels": 4, "depth": 2}
        inference = {**inference, "tile_size": 32, "tile_overlap": 8}
        sampling["patch_size"] = 32
        volume = generate_em_volume((6, 64, 64), seed=0)
        train_image, train_mask = volume.image, volume.mask
    else:
        data = load_lucchi(steps["load_em_dataset"]["parameters"]["data_dir"])
        train_image, train_mask = data.train_image, data.train_mask
    training = {**steps["train_unet"]["parameters"]["training"], "epochs": args.epochs}
    split = split_slices(len(train_image), **steps["split_em_volume"]["parameters"])
    images, masks, _ = training_patches(train_image[split.train], train_mask[split.train],
                                        n_patches=args.patches, **sampling,
                                        normalization=UNetServing.from_dict(inference).normalization)
    val = (train_image[split.val], train_mask[split.val])

    torch.set_num_threads(threads)
    model = build_model(Architecture.from_dict(architecture), seed=training["seed"])
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        one = fit(model, (torch.from_numpy(images), torch.from_numpy(masks)), val,
                  UNetTraining.from_dict({**training, "threads": threads}), UNetServing.from_dict(inference),
                  Path(tmp) / "one", resume=False)
        one_seconds = time.perf_counter() - start
        settings = DistributedSettings(nproc_per_node=args.processes, backend="gloo",
                                       **({"master_port": free_port()} if args.smoke else {}))
        start = time.perf_counter()
        many, _ = fit_distributed(
            build_model(Architecture.from_dict(architecture), seed=training["seed"]), (images, masks), val,
            architecture=architecture, training={**training, "threads": max(1, threads // args.processes)},
            inference=inference, checkpoint_dir=Path(tmp) / "ddp", resume=False, settings=settings,
            work_dir=Path(tmp) / "work")
        many_seconds = time.perf_counter() - start
    result = {
        "cpu": platform.processor() or platform.machine(), "cpu_threads": threads, "processes": args.processes,
        "patches": list(images.shape), "epochs": args.epochs, "global_batch": training["batch_size"],
        "one_process_seconds": round(one_seconds, 2), "ddp_seconds": round(many_seconds, 2),
        "speedup": round(one_seconds / many_seconds, 3),
        "one_process_val_foreground_iou": round(one.val_foreground_iou[-1], 4),
        "ddp_val_foreground_iou": round(many.val_foreground_iou[-1], 4), "torch": torch.__version__,
    }
    summary = [row("U-Net training wall time, same global batch and patches", f"DDP, {args.processes} processes",
                   result["ddp_seconds"], "one process", result["one_process_seconds"], "s", higher_is_better=False,
                   note=f"{len(images)} patches, {args.epochs} epochs, {threads} threads; val foreground IoU "
                        f"{result['ddp_val_foreground_iou']} vs {result['one_process_val_foreground_iou']}")]
    print(json.dumps(result, indent=2))
    write_result("ddp_speedup", result, summary, args.out, smoke=args.smoke)


if __name__ == "__main__":
    main()
