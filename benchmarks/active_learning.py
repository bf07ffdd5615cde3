"""Asking first for the images that teach most: corrections chosen by the model's uncertainty against corrections
chosen at random, on synthetic data whose exact ground truth plays the annotator (issue 28).

    python benchmarks/active_learning.py [--family unet|maskrcnn|both] [--seeds N] [--rounds R] [--k K]
                                         [--smoke] [--out PATH] [--figures DIR] [--csv DIR]

Both families start from a small labelled set, train a model on it, then run ``--rounds`` rounds: the model
scores every image of an unlabelled pool, ``--k`` of them are "corrected" (their exact ground truth added to the
labelled set) and the model is fine-tuned from the previous round's weights on the labelled set and every
correction so far (the loop's default: fine-tune the champion on the corrections mixed with the existing training
data). One order picks the k most uncertain images (:func:`cellops.unet.predict.segment_with_uncertainty`,
:func:`cellops.maskrcnn.predict.predict_with_uncertainty`: flip test-time-augmentation agreement), the other k at
random; both get the same training budget per round, the same initial model and the same fixed test set.

**The pool** imitates what a lab's queue holds: half of it routine images like those already labelled (a third of
those near-duplicates: neighbouring EM slices of the labelled volumes, or the labelled colony fields again with
another noise draw), half images of conditions the labelled set does not show, drawn with the synthetic
generators' own knobs (EM: noisy, uneven illumination, crowded or sparse mitochondria, 5-nm voxels, low contrast;
colonies: touching, irregular, differentiated rims, cluttered, small colonies, noisy). **The test set** holds every
condition (routine included) in equal shares, from seeds no pool image uses: the model must handle what the lab
will image, not only what it imaged first. Nothing in the selection sees a label: uncertainty is the model's own.

**Fraction reached**: the fewest corrections with which the uncertainty order's mean test metric reaches the random
order's final mean metric (after all ``rounds * k`` corrections), divided by ``rounds * k``; the issue's target is
at most 0.6. Small models trained for a few steps a round give noisy curves (a round can lose what the last one
gained), so the result also gives the fraction to reach the random order's best mean at any round, and each
order's mean metric over the whole curve (area under it, per correction). U-Net: foreground IoU over the test
slices (each 96x96 slice segmented on its own, as images are served). Mask R-CNN: mask AP50 on the test fields
(``cellops.maskrcnn.evaluation.evaluate``).

Results: outputs/benchmarks/active_learning.json (or --out; ``--family`` alone: ``active_learning-<family>.json``),
the curves as CSV under benchmarks/results/ and a figure per family, docs/img/active-learning-<family>.png. Seeds
can run side by side (``--seed-from S --seeds 1 --out S.json``) and be pooled afterwards (``--combine S0.json ...``).
``--smoke``: tiny pools, one round of one correction, a few steps, no figure: checks that the script runs.
Sizes are for 2 shared cores: one torch thread, run it under ``nice``.
"""

from __future__ import annotations

import argparse
import csv
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from benchlib import row, write_result
from tqdm.auto import tqdm

from cellops.coco import labels_to_coco
from cellops.intensity import Normalization
from cellops.maskrcnn.data import (InstanceAugmentation, InstanceDataset, build_instance_augmentation, model_image,
                                   tidy_target)
from cellops.maskrcnn.evaluation import evaluate as evaluate_instances
from cellops.maskrcnn.predict import predict_with_uncertainty
from cellops.maskrcnn.specs import MaskRCNNServing, MaskRCNNTraining
from cellops.maskrcnn.train import fit as fit_maskrcnn
from cellops.metrics import binary_segmentation_scores
from cellops.synthetic.colonies import generate_colony_image
from cellops.synthetic.em import generate_em_volume
from cellops.unet.data import augment_patches, build_augmentation, sample_patches
from cellops.unet.predict import IMAGE_SCORE, load_for_inference, segment, segment_with_uncertainty
from cellops.unet.specs import Architecture, UNetServing
from cellops.unet import train as unet_train_module
from cellops.unet.train import DiceBCELoss, build_model, train_one_epoch
from models.maskrcnn import MaskRCNNSettings, build_maskrcnn

ROOT = Path(__file__).resolve().parents[1]
# The U-Net's training loop draws a progress bar per epoch; one line per round is printed here instead.
unet_train_module.tqdm = functools.partial(tqdm, disable=True)
TARGET_FRACTION = 0.6
NORMALIZATION = Normalization(mode="percentile", low=1.0, high=99.8)


@dataclass
class Item:
    """One image of a set: the image, its exact ground truth (binary mask or instance labels), its condition."""

    image: np.ndarray
    truth: np.ndarray
    condition: str
    name: str


# ---------------------------------------------------------------------------------------------------------- curves

def corrections_to_reach(counts: list[int], curve: list[float], level: float) -> int | None:
    """The fewest corrections in ``counts`` at which ``curve`` reaches ``level`` (None: never); e.g. 8 for counts
    0, 4, 8, 12, curve 0.5, 0.6, 0.7, 0.72 and level 0.7 (tests/test_benchmark_smoke.py checks it)."""
    for count, value in zip(counts, curve):
        if value >= level - 1e-12:
            return count
    return None


def fraction_reached(counts: list[int], random_curve: list[float], uncertain_curve: list[float]) -> float | None:
    """Corrections the uncertainty order needs to reach the random order's final metric, as a fraction of the
    random order's corrections (None: not reached)."""
    needed = corrections_to_reach(counts, uncertain_curve, random_curve[-1])
    return None if needed is None else needed / counts[-1]


def run_orders(pool: list[Item], initial_model, train: Callable, score: Callable, uncertainty: Callable,
               *, rounds: int, k: int, seed: int, log: Callable[[str], None]) -> dict:
    """Both orders from the same initial model: ``train(model, picked_items, round_seed) -> model`` fine-tunes,
    ``score(model) -> float`` is the test metric, ``uncertainty(model, item) -> float`` the image's uncertainty."""
    import copy

    result: dict = {"seed": seed}
    start_score = score(initial_model)
    log(f"  seed {seed} initial model ({len(pool)} in the pool): metric {start_score:.4f}")
    for order in ("random", "uncertainty"):
        model = copy.deepcopy(initial_model)
        rng = np.random.default_rng(seed)
        remaining = list(range(len(pool)))
        picked: list[int] = []
        curve, picked_conditions, timing = [start_score], [], {"select_s": 0.0, "train_s": 0.0}
        for r in range(rounds):
            started = time.perf_counter()
            if order == "random":
                chosen = [remaining[i] for i in rng.choice(len(remaining), size=k, replace=False)]
            else:
                values = [uncertainty(model, pool[i]) for i in remaining]
                chosen = [remaining[i] for i in np.argsort(values, kind="stable")[::-1][:k]]
            timing["select_s"] += time.perf_counter() - started
            remaining = [i for i in remaining if i not in chosen]
            picked += chosen
            picked_conditions.append([pool[i].condition for i in chosen])
            started = time.perf_counter()
            model = train(model, [pool[i] for i in picked], seed * 100 + r + 1)
            timing["train_s"] += time.perf_counter() - started
            curve.append(score(model))
            log(f"  seed {seed} {order:11s} round {r + 1}: {len(picked):3d} corrections, metric {curve[-1]:.4f}, "
                f"picked {', '.join(picked_conditions[-1])}")
        result[order] = {"curve": curve, "picked": picked_conditions,
                         "timing": {key: round(value, 1) for key, value in timing.items()}}
    return result


def summarise(name: str, metric: str, counts: list[int], runs: list[dict]) -> dict:
    """Mean curves over seeds and the fraction reached (on the mean curves and per seed)."""
    orders = ("random", "uncertainty")
    mean = {order: np.mean([run[order]["curve"] for run in runs], axis=0).tolist() for order in orders}
    std = {order: np.std([run[order]["curve"] for run in runs], axis=0).tolist() for order in orders}
    per_seed = [fraction_reached(counts, run["random"]["curve"], run["uncertainty"]["curve"]) for run in runs]
    fraction = fraction_reached(counts, mean["random"], mean["uncertainty"])
    # Stricter: the best mean the random order reached at any round (its final one may be a dip of training noise).
    best_needed = corrections_to_reach(counts, mean["uncertainty"], max(mean["random"]))
    return {"family": name, "metric": metric, "corrections": counts, "mean": mean, "std": std,
            "fraction_reached": fraction, "fraction_reached_per_seed": per_seed,
            "corrections_needed": corrections_to_reach(counts, mean["uncertainty"], mean["random"][-1]),
            "random_best": max(mean["random"]), "corrections_needed_for_random_best": best_needed,
            "fraction_reached_random_best": None if best_needed is None else best_needed / counts[-1],
            "area_under_curve": {order: float(np.trapezoid(mean[order], counts) / counts[-1]) for order in mean},
            "target_fraction": TARGET_FRACTION, "met": fraction is not None and fraction <= TARGET_FRACTION,
            "runs": runs}


def write_csv(path: Path, summary: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["corrections", "random_mean", "random_std", "uncertainty_mean", "uncertainty_std"])
        for i, count in enumerate(summary["corrections"]):
            writer.writerow([count, f"{summary['mean']['random'][i]:.4f}", f"{summary['std']['random'][i]:.4f}",
                             f"{summary['mean']['uncertainty'][i]:.4f}", f"{summary['std']['uncertainty'][i]:.4f}"])
    print(f"-> {path}")


def plot(path: Path, summary: dict, title: str, ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.array(summary["corrections"])
    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=120)
    for order, colour in (("random", "tab:grey"), ("uncertainty", "tab:blue")):
        mean, std = np.array(summary["mean"][order]), np.array(summary["std"][order])
        ax.plot(counts, mean, "o-", color=colour, label=f"{order} order")
        if len(summary["runs"]) > 1:
            ax.fill_between(counts, mean - std, mean + std, color=colour, alpha=0.15)
    final = summary["mean"]["random"][-1]
    ax.axhline(final, color="tab:grey", ls=":", lw=1)
    if "random_best" in summary and summary["random_best"] > final:
        ax.axhline(summary["random_best"], color="tab:grey", ls="--", lw=0.8, alpha=0.6, label="random order's best")
    if summary["corrections_needed"] is not None:
        ax.axvline(summary["corrections_needed"], color="tab:blue", ls=":", lw=1)
    fraction = summary["fraction_reached"]
    reached = "not reached" if fraction is None else f"{fraction:.0%} of the corrections"
    ax.set_title(f"{title}\nrandom's final {ylabel} reached with {reached}", fontsize=9)
    ax.set_xlabel("corrected images")
    ax.set_ylabel(f"test {ylabel} (mean of {len(summary['runs'])} seeds)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    """Lay out, write and close a benchmark figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    print(f"-> {path}")


# ----------------------------------------------------------------------------------------------------------- U-Net

#: EM conditions: generator settings and an optional contrast factor applied after it (grey levels about the mean).
EM_CONDITIONS: dict[str, dict] = {
    "routine": {},
    "noisy": {"noise_sigma": 0.13},
    "uneven illumination": {"illumination_amplitude": 0.6},
    "crowded": {"mitochondria_fraction": 0.22},
    "sparse": {"mitochondria_fraction": 0.025},
    "5-nm voxels": {"voxel_nm": 5.0},
    "low contrast": {"contrast": 0.4},
}


def em_slices(condition: str, seed: int, n_slices: int, size: int) -> list[Item]:
    """``n_slices`` neighbouring slices of one synthetic EM volume of ``condition``."""
    settings = dict(EM_CONDITIONS[condition])
    contrast = settings.pop("contrast", 1.0)
    volume = generate_em_volume((n_slices, size, size), seed=seed, **settings)
    image = volume.image
    if contrast != 1.0:
        rng = np.random.default_rng([seed, 7])
        mean = float(image.mean())
        image = np.clip(np.rint(mean + contrast * (image - mean) + rng.normal(0, 4.0, image.shape)), 0, 255)
        image = image.astype(np.uint8)
    return [Item(image[z], volume.mask[z] > 0, condition, f"{condition}/{seed}/{z}") for z in range(n_slices)]


def unet_sets(size: int, smoke: bool) -> tuple[list[Item], list[Item], list[Item]]:
    """Labelled start, pool and test set for the U-Net (see the module's description)."""
    if smoke:
        labelled = em_slices("routine", 1, 2, size)
        pool = em_slices("routine", 2, 2, size) + em_slices("noisy", 3, 2, size)
        return labelled, pool, em_slices("routine", 9, 1, size) + em_slices("noisy", 10, 1, size)
    # Two routine volumes of 6 slices: slices 0 and 3 labelled, the 4 others are near-duplicates in the pool.
    first, second = em_slices("routine", 1, 6, size), em_slices("routine", 2, 6, size)
    labelled = [first[0], first[3], second[0], second[3]]
    pool = [item for volume in (first, second) for z, item in enumerate(volume) if z not in (0, 3)]
    for item in pool:
        item.condition = "routine (near-duplicate)"
    pool += em_slices("routine", 3, 8, size) + em_slices("routine", 4, 8, size)  # 24 routine in all
    hard = [name for name in EM_CONDITIONS if name != "routine"]
    for c, condition in enumerate(hard):  # 4 of each of the 6 other conditions: 24
        pool += em_slices(condition, 20 + c, 4, size)
    test = [item for c, condition in enumerate(EM_CONDITIONS) for item in em_slices(condition, 100 + c, 4, size)]
    return labelled, pool, test


def unet_training_tensors(items: list[Item], n_patches: int, patch: int, seed: int):
    """Augmented patches of the labelled images (each image as likely as any other), each image normalised on its
    own as it will be served."""
    images = np.stack([NORMALIZATION.apply(item.image).astype(np.float32) for item in items])
    masks = np.stack([item.truth.astype(np.uint8) for item in items])
    sampled_images, sampled_masks = sample_patches(images, masks, n_patches=n_patches, patch_size=patch,
                                                   foreground_bias=0.5, seed=seed)
    transform = build_augmentation(patch, flip=True, rotate_degrees=0.0, scale=(1.0, 1.0), brightness=0.1,
                                   contrast=0.1, noise_sigma=0.02)
    return augment_patches(sampled_images, sampled_masks, transform, seed=seed)


def unet_train(model, items: list[Item], *, steps: int, patch: int, learning_rate: float, seed: int, batch: int = 8):
    """``steps`` optimiser steps on fresh augmented patches of ``items`` (the same budget whatever their number),
    one learning-rate cycle (as :func:`cellops.unet.train.fit` schedules a training): each round ends on settled
    weights."""
    images, masks = unet_training_tensors(items, steps * batch, patch, seed)
    torch.manual_seed(seed)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, masks), batch_size=batch, shuffle=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=len(loader),
                                                    pct_start=0.2)
    train_one_epoch(model, DiceBCELoss(), optimizer, scheduler, loader, torch.device("cpu"), 0)
    return model


def unet_iou(model, test: list[Item], settings: UNetServing) -> float:
    """Foreground IoU over every pixel of the test slices, each segmented on its own."""
    served = load_for_inference(model)
    prediction = np.stack([segment(served, item.image, settings) for item in test])
    truth = np.stack([item.truth for item in test])
    return float(binary_segmentation_scores(prediction, truth).foreground_iou)


def unet_uncertainty(model, image: np.ndarray, settings: UNetServing) -> float:
    """The image's uncertainty from the family's own :func:`segment_with_uncertainty` (8 dihedral views)."""
    return float(segment_with_uncertainty(model, image, settings)[1].image)


def run_unet(args, log) -> dict:
    size = 96
    labelled, pool, test = unet_sets(size, args.smoke)
    settings = UNetServing(tile_size=size, tile_overlap=0, batch_size=4, threshold=0.5, normalization=NORMALIZATION)
    architecture = Architecture(in_channels=1, out_channels=1, base_channels=8, depth=3, dropout=0.0)
    steps_first, steps = (2, 2) if args.smoke else (400, 120)
    source = f"cellops.unet.predict.segment_with_uncertainty ({IMAGE_SCORE})"
    log(f"U-Net: {len(labelled)} labelled, pool {len(pool)}, test {len(test)} slices of {size}x{size}; "
        f"uncertainty from {source}")
    runs = []
    for seed in args.seeds:
        started = time.perf_counter()
        initial = unet_train(build_model(architecture, seed), labelled, steps=steps_first, patch=64,
                             learning_rate=3e-3, seed=seed)

        def train(model, picked, round_seed):
            return unet_train(model, labelled + picked, steps=steps, patch=64, learning_rate=1e-3, seed=round_seed)

        def uncertainty(model, item):
            return unet_uncertainty(load_for_inference(model), item.image, settings)

        run = run_orders(pool, initial, train, lambda model: unet_iou(model, test, settings), uncertainty,
                         rounds=args.rounds_unet, k=args.k_unet, seed=seed, log=log)
        run["seconds"] = round(time.perf_counter() - started, 1)
        runs.append(run)
    counts = [i * args.k_unet for i in range(args.rounds_unet + 1)]
    summary = summarise("unet", "foreground IoU", counts, runs)
    summary.update({"uncertainty_source": source, "labelled": len(labelled), "pool": len(pool), "test": len(test),
                    "pool_conditions": _count(pool), "test_conditions": _count(test),
                    "architecture": vars(architecture), "steps_initial": steps_first, "steps_per_round": steps,
                    "batch": 8, "patch": 64})
    return summary


# ------------------------------------------------------------------------------------------------------ Mask R-CNN

#: Colony conditions at 5x on 256-px fields (the default 10x colonies of a 512-px field, half as large).
COLONY_CONDITIONS: dict[str, dict] = {
    "routine": {},
    "touching": {"gap": (0.0, 3.0)},
    "irregular": {"irregularity": 2.5},
    "differentiated rims": {"differentiated_fraction": 0.7},
    "cluttered": {"clutter": 3.0},
    "small colonies": {"magnification": 3.0, "n_colonies": (5, 10)},
    "noisy": {"noise_sigma": 0.09},
}


def colony_field(condition: str, seed: int, size: int, **override) -> Item:
    settings = {"magnification": 5.0, "n_single_cells": 6, "n_debris": 15, **COLONY_CONDITIONS[condition], **override}
    sample = generate_colony_image((size, size), seed=seed, **settings)
    return Item(sample.image, sample.labels, condition, f"{condition}/{seed}")


def maskrcnn_sets(size: int, smoke: bool) -> tuple[list[Item], list[Item], list[Item]]:
    if smoke:
        return ([colony_field("routine", 1, size)],
                [colony_field("routine", 2, size), colony_field("touching", 3, size)],
                [colony_field("routine", 90, size)])
    labelled = [colony_field("routine", s, size) for s in (1, 2, 3)]
    # Near-duplicates: the labelled fields again, another noise level (the same colonies, another exposure).
    pool = [replace(colony_field("routine", s, size, noise_sigma=noise), condition="routine (near-duplicate)")
            for s, noise in ((1, 0.045), (2, 0.045), (3, 0.045), (1, 0.025))]
    pool += [colony_field("routine", s, size) for s in range(10, 18)]  # 12 routine in all
    for c, condition in enumerate([name for name in COLONY_CONDITIONS if name != "routine"]):
        pool += [colony_field(condition, 30 + 10 * c + i, size) for i in range(2)]  # 12 of 6 other conditions
    test = [colony_field(condition, 200 + 10 * c + i, size) for c, condition in enumerate(COLONY_CONDITIONS)
            for i in range(2)]
    return labelled, pool, test


def instance_sample(item: Item, image_id: int) -> tuple[torch.Tensor, dict]:
    """(image, target) as :func:`cellops.maskrcnn.data.load_instance_samples` makes them."""
    from torchvision import tv_tensors

    image = tv_tensors.Image(model_image(item.image, NORMALIZATION))
    ids = [i for i in np.unique(item.truth) if i > 0]
    masks = torch.from_numpy(np.stack([item.truth == i for i in ids]).astype(np.uint8)) if ids else \
        torch.zeros((0, *item.truth.shape), dtype=torch.uint8)
    target = tidy_target({"masks": tv_tensors.Mask(masks), "labels": torch.ones(len(ids), dtype=torch.int64),
                          "image_id": image_id}, min_pixels=1)
    return image, target


def instance_test_set(items: list[Item]) -> tuple[list, dict]:
    """Samples and COCO ground truth of ``items`` (image ids from 1, in order)."""
    names = {f"{i:04d}.png": item.truth for i, item in enumerate(items, start=1)}
    coco = labels_to_coco(names, category="object")
    return [instance_sample(item, i) for i, item in enumerate(items, start=1)], coco


def maskrcnn_train(model, items: list[Item], *, epochs: int, learning_rate: float, warmup: int, seed: int):
    samples = [instance_sample(item, i) for i, item in enumerate(items, start=1)]
    augmentation = build_instance_augmentation(InstanceAugmentation(flip=True, rotate90=True, scale=(0.9, 1.1),
                                                                    brightness=0.2, contrast=0.2, noise_sigma=0.01))
    config = MaskRCNNTraining(epochs=epochs, batch_size=2, learning_rate=learning_rate, warmup_iterations=warmup,
                              clip_grad_norm=10.0, amp=False, device="cpu", threads=1, seed=seed, validate_every=epochs)
    fit_maskrcnn(model, InstanceDataset(samples, augmentation), [], {}, config, MaskRCNNServing(), resume=False)
    return model


def maskrcnn_model_settings(size: int, detections: int = 100) -> MaskRCNNSettings:
    """configs/maskrcnn.yaml's light ResNet-18-FPN, fields scaled to ``size`` pixels."""
    return MaskRCNNSettings(backbone="resnet18", fpn_channels=64, representation_size=256, mask_head_layers=2,
                            anchor_sizes=(16, 32, 64, 128, 256), min_size=size, max_size=size,
                            detections_per_image=detections, score_threshold=0.05, rpn_post_nms_train=500,
                            rpn_post_nms_test=300, box_batch_size_per_image=128, trainable_layers=5)


def maskrcnn_uncertainty(model, image: np.ndarray, settings: MaskRCNNServing) -> float:
    """The image's uncertainty from the family's own :func:`predict_with_uncertainty` (8 dihedral views)."""
    return float(predict_with_uncertainty(model, image, settings)[1].image)


def run_maskrcnn(args, log) -> dict:
    size = 128 if args.smoke else 256
    labelled, pool, test = maskrcnn_sets(size, args.smoke)
    test_samples, test_coco = instance_test_set(test)
    serving = MaskRCNNServing(score_threshold=0.5, mask_threshold=0.5, tile_size=size, tile_overlap=size // 4,
                              normalization=NORMALIZATION, max_detections=100, categories={1: "colony"})
    epochs_first, epochs = (1, 1) if args.smoke else (24, 4)
    source = "cellops.maskrcnn.predict.predict_with_uncertainty"
    log(f"Mask R-CNN: {len(labelled)} labelled, pool {len(pool)}, test {len(test)} fields of {size}x{size}; "
        f"uncertainty from {source}")
    runs = []
    for seed in args.seeds:
        started = time.perf_counter()
        torch.manual_seed(seed)
        # Half resolution, as configs/maskrcnn.yaml segments colonies: they are large.
        initial = maskrcnn_train(build_maskrcnn(maskrcnn_model_settings(size // 2), 2, seed=seed), labelled,
                                 epochs=epochs_first, learning_rate=0.02, warmup=10, seed=seed)

        def train(model, picked, round_seed):
            return maskrcnn_train(model, labelled + picked, epochs=epochs, learning_rate=0.01, warmup=2,
                                  seed=round_seed)

        def score(model):
            return float(evaluate_instances(model, test_samples, test_coco, serving)[0].mask_ap50)

        def uncertainty(model, item):
            model.eval()
            return maskrcnn_uncertainty(model, item.image, serving)

        run = run_orders(pool, initial, train, score, uncertainty, rounds=args.rounds_maskrcnn, k=args.k_maskrcnn,
                         seed=seed, log=log)
        run["seconds"] = round(time.perf_counter() - started, 1)
        runs.append(run)
    counts = [i * args.k_maskrcnn for i in range(args.rounds_maskrcnn + 1)]
    summary = summarise("maskrcnn", "mask AP50", counts, runs)
    summary.update({"uncertainty_source": source, "labelled": len(labelled), "pool": len(pool), "test": len(test),
                    "pool_conditions": _count(pool), "test_conditions": _count(test), "image_size": size,
                    "epochs_initial": epochs_first, "epochs_per_round": epochs})
    return summary


def _count(items: list[Item]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item.condition] = counts.get(item.condition, 0) + 1
    return counts


# ------------------------------------------------------------------------------------------------------------ main

def combine(paths: list[Path]) -> dict:
    """The families of several runs of this script (e.g. one seed each, run side by side) as one result: their
    seeds' runs pooled, the mean curves and the fraction reached computed again."""
    import json

    families: dict[str, dict] = {}
    for path in paths:
        for family, result in json.loads(Path(path).read_text())["families"].items():
            if family not in families:
                families[family] = result
                continue
            if result["corrections"] != families[family]["corrections"]:
                raise SystemExit(f"{path}: {family} was run with other rounds or k than {paths[0]}")
            families[family]["runs"] = families[family]["runs"] + result["runs"]
            families[family]["seconds"] = families[family].get("seconds", 0) + result.get("seconds", 0)
    for family, result in families.items():
        merged = summarise(family, result["metric"], result["corrections"], result["runs"])
        result.update({key: value for key, value in merged.items()})
    return families


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=["unet", "maskrcnn", "both"], default="both")
    parser.add_argument("--seeds", type=int, default=None, help="repeats (default: 3 for the U-Net, 1 for Mask R-CNN)")
    parser.add_argument("--seed-from", type=int, default=0, help="first seed (to run seeds side by side)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default: 6 U-Net, 5 Mask R-CNN)")
    parser.add_argument("--k", type=int, default=None, help="corrections per round (default: 4 U-Net, 2 Mask R-CNN)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--combine", type=Path, nargs="+", default=None,
                        help="JSONs of earlier runs to pool (seeds run side by side) instead of running")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--figures", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--csv", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--smoke", "--quick", action="store_true", help="tiny sets, one round: checks that it runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    def log(message: str) -> None:
        print(message, flush=True)

    if args.combine:
        results = combine(args.combine)
    else:
        families = ["unet", "maskrcnn"] if args.family == "both" else [args.family]
        defaults = {"unet": (3, 6, 4), "maskrcnn": (1, 5, 2)}
        results = {}
        for family in families:
            started = time.perf_counter()
            seeds, rounds, k = (1, 1, 1) if args.smoke else defaults[family]
            run_args = argparse.Namespace(**{**vars(args), "seeds": range(args.seed_from, args.seed_from +
                                                                           (args.seeds or seeds)),
                                             f"rounds_{family}": args.rounds or rounds, f"k_{family}": args.k or k})
            result = run_unet(run_args, log) if family == "unet" else run_maskrcnn(run_args, log)
            result["seconds"] = round(time.perf_counter() - started, 1)
            results[family] = result
    summary = []
    for family, result in results.items():
        counts = result["corrections"]
        needed = result["corrections_needed"]
        fraction = result["fraction_reached"]
        log(f"{family}: random order's final {result['metric']} {result['mean']['random'][-1]:.4f} after "
            f"{counts[-1]} corrections ({len(result['runs'])} seeds); the uncertainty order reaches it with "
            f"{'never' if needed is None else needed} ({'-' if fraction is None else f'{fraction:.0%}'}); the random "
            f"order's best {result['random_best']:.4f} with {result['corrections_needed_for_random_best']}; mean "
            f"over the curve: random {result['area_under_curve']['random']:.4f}, uncertainty "
            f"{result['area_under_curve']['uncertainty']:.4f}; {result['seconds']:.0f} s")
        summary.append(row(f"{family}: corrections to reach random order's final {result['metric']}",
                           "uncertainty order", float(needed if needed is not None else counts[-1] * 10),
                           "random order", float(counts[-1]), "corrections", higher_is_better=False,
                           target=round(1 / TARGET_FRACTION, 2),
                           note=f"{result['metric']} {result['mean']['random'][-1]:.3f} after {counts[-1]}; "
                                f"{len(result['runs'])} seeds; uncertainty from {result['uncertainty_source']}"))
        if not args.smoke:
            write_csv(args.csv / f"active_learning_{family}.csv", result)
            title = {"unet": "U-Net, synthetic EM (foreground IoU)",
                     "maskrcnn": "Mask R-CNN, synthetic colonies (mask AP50)"}[family]
            plot(args.figures / f"active-learning-{family}.png", result, title,
                 "IoU" if family == "unet" else "mask AP50")
    out = args.out
    if out is None and set(results) != {"unet", "maskrcnn"}:
        out = Path("outputs/benchmarks") / f"active_learning-{'-'.join(results)}.json"
    write_result("active_learning", {"families": results}, summary, out, smoke=args.smoke)


if __name__ == "__main__":
    main()
