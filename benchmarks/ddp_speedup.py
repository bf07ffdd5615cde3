"""U-Net training on one process against DDP on N processes (gloo, CPU), same global batch, same patches.

    python benchmarks/ddp_speedup.py [--config configs/unet.yaml] [--patches 512] [--epochs 2] [--processes 2]

Patches are sampled from the built-in EM volume as the pipeline samples them (``make data`` first). One process
uses all the CPU threads; each of N processes uses threads / N. Wall time of training (validation included, on
rank 0) and the final validation scores of both are reported; the figures go to outputs/benchmarks/ddp_speedup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import yaml

from cellops.distributed import DistributedSettings
from cellops.unet.data import load_lucchi, split_slices, training_patches
from cellops.unet.distributed_train import fit_distributed
from cellops.unet.predict import InferenceSettings
from cellops.unet.train import Architecture, TrainingConfig, build_model, fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/unet.yaml"))
    parser.add_argument("--patches", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks/ddp_speedup.json"))
    args = parser.parse_args()
    config = yaml.safe_load(args.config.read_text())
    steps = config["steps"]
    architecture = config["parameters"]["architecture"]
    inference = config["parameters"]["inference"]
    threads = os.cpu_count() or 1
    training = {**steps["train_unet"]["parameters"]["training"], "epochs": args.epochs}
    sampling = {k: v for k, v in steps["sample_augmented_patches"]["parameters"].items() if k != "n_patches"}
    data = load_lucchi(steps["load_em_dataset"]["parameters"]["data_dir"])
    split = split_slices(len(data.train_image), **steps["split_em_volume"]["parameters"])
    images, masks, _ = training_patches(data.train_image[split.train], data.train_mask[split.train],
                                        n_patches=args.patches, **sampling)
    val = (data.train_image[split.val], data.train_mask[split.val])

    torch.set_num_threads(threads)
    model = build_model(Architecture.from_dict(architecture), seed=training["seed"])
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        one = fit(model, (torch.from_numpy(images), torch.from_numpy(masks)), val,
                  TrainingConfig.from_dict({**training, "threads": threads}), InferenceSettings.from_dict(inference),
                  Path(tmp) / "one", resume=False)
        one_seconds = time.perf_counter() - start
        settings = DistributedSettings(nproc_per_node=args.processes, backend="gloo")
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
