"""What uncertainty costs per image, and which uncertainty ranks the model's mistakes first, per family.

1. Cost: per family, the default prediction (U-Net :func:`segment`, Mask R-CNN :func:`predict_image`, classifier
   :func:`predict_probabilities`) against the same with uncertainty (``segment_with_uncertainty``: eight dihedral
   views; ``predict_with_uncertainty``: eight views matched by mask IoU; ``classify_with_uncertainty``: entropy
   costs nothing more, MC dropout :data:`MC_SAMPLES` passes), timed interleaved on the same inputs, seconds per
   image. The default path is the library's own, unchanged; the uncertainty path is checked to return the same
   prediction before any figure is reported.
2. Ranking (``--rank``, part of the full run): does the uncertainty point at the mistakes?
   - U-Net: a small U-Net trained briefly on a synthetic EM volume segments the slices (cut into quarters) of
     another; each candidate image score of :class:`cellops.unet.predict.TTAStatistics` is ranked against the
     true error of the served mask (1 - Dice), Spearman correlation; the library uses the best
     (:data:`cellops.unet.predict.IMAGE_SCORE`).
   - Classifier: an efficientcellnet (dropout 0.2) trained briefly on synthetic endothelial images classifies
     held-out ones; AUROC of each uncertainty at telling the misclassified images from the right ones (predictive
     entropy of the one served pass; MC dropout: entropy of the mean of the samples, and their mutual
     information), over several seeds; the library's default is the better
     (:data:`cellops.classifier.predict.DEFAULT_UNCERTAINTY`).

    python benchmarks/uncertainty_cost.py [--repeats 3] [--seeds 3] [--out PATH]
    python benchmarks/uncertainty_cost.py --smoke --out /tmp/x.json   (random tiny networks, no training)

Writes outputs/benchmarks/uncertainty_cost.json. One torch thread (the cost ratios are what matter, and the
machine is shared).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from benchlib import print_summary, row, write_result

from cellops.classifier.predict import (MC_SAMPLES, classify_with_uncertainty, mc_dropout_probabilities)
from cellops.classifier.specs import ClassifierServing
from cellops.classifier.train import predict_probabilities
from cellops.inference import prepare_for_inference
from cellops.maskrcnn.predict import predict_image, predict_with_uncertainty
from cellops.maskrcnn.specs import MaskRCNNServing
from cellops.runtimes import interleaved_best
from cellops.uncertainty import normalised_entropy
from cellops.unet.predict import (IMAGE_SCORE, TTAStatistics, segment, segment_with_uncertainty, served_probabilities,
                                  tta_probabilities)
from cellops.unet.specs import Architecture, UNetServing
from cellops.unet.train import build_model


def auroc(scores: np.ndarray, positives: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` telling ``positives`` (bool) from the rest (Mann-Whitney, ties
    counted half); None when one side is empty."""
    from scipy.stats import rankdata

    positives = np.asarray(positives, bool)
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# --- cost --------------------------------------------------------------------------------------------------------


def unet_cost(smoke: bool, repeats: int) -> dict:
    size, base, depth, tile = (64, 4, 2, 32) if smoke else (256, 8, 4, 128)
    model = prepare_for_inference(build_model(Architecture(1, 1, base, depth, 0.0), seed=0))
    settings = UNetServing(tile_size=tile, tile_overlap=tile // 4, batch_size=8, threshold=0.5)
    image = (np.random.default_rng(0).random((size, size)) * 255).astype(np.uint8)
    mask, _ = segment_with_uncertainty(model, image, settings)
    assert np.array_equal(mask, segment(model, image, settings)), "the uncertainty path changed the mask"
    times = interleaved_best({"default": lambda: segment(model, image, settings),
                              "uncertainty": lambda: segment_with_uncertainty(model, image, settings)}, repeats)
    return {"image": f"{size}x{size}", "model": f"U-Net base {base}, depth {depth}, tiles {tile}", **times}


def maskrcnn_cost(smoke: bool, repeats: int) -> dict:
    from models.maskrcnn import MaskRCNNSettings, build_maskrcnn

    size = 64 if smoke else 256
    net = MaskRCNNSettings(backbone="resnet18", fpn_channels=16 if smoke else 64,
                           representation_size=32 if smoke else 256, mask_head_layers=1 if smoke else 4,
                           min_size=size, max_size=size, anchor_sizes=(8, 16, 32, 64, 128),
                           rpn_post_nms_train=50, rpn_post_nms_test=50 if smoke else 500, box_batch_size_per_image=32)
    torch.manual_seed(0)
    model = build_maskrcnn(net, 2).eval()
    settings = MaskRCNNServing(score_threshold=0.05, tile_size=size, tile_overlap=size // 4)
    image = (np.random.default_rng(1).random((size, size)) * 255).astype(np.uint8)
    instances, _ = predict_with_uncertainty(model, image, settings)
    expected = predict_image(model, image, settings)
    assert [(i.box, i.score) for i in instances] == [(i.box, i.score) for i in expected], "instances changed"
    times = interleaved_best({"default": lambda: predict_image(model, image, settings),
                              "uncertainty": lambda: predict_with_uncertainty(model, image, settings)}, repeats)
    return {"image": f"{size}x{size}", "model": f"Mask R-CNN {net.backbone}, FPN {net.fpn_channels}",
            "instances": len(expected), **times}


def classifier_cost(smoke: bool, repeats: int) -> dict:
    from models.classifier import build_classifier

    n, size = (4, 32) if smoke else (64, 96)
    model = build_classifier("efficientcellnet", num_classes=2, in_channels=1,
                             options={"widths": [8, 16] if smoke else [16, 24, 32, 64], "dropout": 0.2}, seed=0).eval()
    settings = ClassifierServing(classes=("a", "b"), positive_class="b", channels=1, size=size, batch_size=32)
    images = np.random.default_rng(2).random((n, 1, size, size)).astype(np.float32)
    probabilities, _ = classify_with_uncertainty(model, images, settings, method="mc-dropout")
    assert np.allclose(probabilities, predict_probabilities(model, images, 32)), "the probabilities changed"
    times = interleaved_best({
        "default": lambda: predict_probabilities(model, images, settings.batch_size),
        "entropy": lambda: classify_with_uncertainty(model, images, settings, method="entropy"),
        "mc-dropout": lambda: classify_with_uncertainty(model, images, settings, method="mc-dropout")}, repeats)
    return {"images": n, "image": f"{size}x{size}", "model": "efficientcellnet, dropout 0.2",
            **{key: value / n for key, value in times.items()}}  # per image


# --- ranking -------------------------------------------------------------------------------------------------------


def unet_ranking(smoke: bool, seed: int = 0) -> dict:
    """Spearman correlation of each candidate image score with the served mask's 1 - Dice."""
    from scipy.stats import spearmanr

    from cellops.intensity import Normalization
    from cellops.synthetic.em import generate_em_volume
    from cellops.unet.data import training_patches
    from cellops.unet.train import DiceBCELoss

    side, steps = (64, 5) if smoke else (192, 300)
    train = generate_em_volume((4 if smoke else 12, side, side), seed=10 + seed)
    test = generate_em_volume((2 if smoke else 12, side, side), seed=20 + seed)
    torch.manual_seed(seed)
    model = build_model(Architecture(1, 1, 4 if smoke else 8, 2 if smoke else 3, 0.0), seed=seed)
    normalization = Normalization(mode="percentile", low=1.0, high=99.8)  # as configs/unet.yaml
    augmentation = {"flip": True, "rotate_degrees": 180.0, "scale": [0.8, 1.25], "brightness": 0.2, "contrast": 0.2,
                    "noise_sigma": 0.03}
    x, y, _ = training_patches(train.image, train.mask, n_patches=16 * steps, patch_size=64, foreground_bias=0.4,
                               hard_negative_bias=0.3, augmentation=augmentation, seed=seed,
                               normalization=normalization)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loss_fn = DiceBCELoss()
    model.train()
    for step in range(steps):
        batch = slice(16 * step, 16 * (step + 1))
        optimiser.zero_grad()
        loss = loss_fn(model(x[batch].float()), y[batch].float())
        loss.backward()
        optimiser.step()
    served = prepare_for_inference(model)
    settings = UNetServing(tile_size=64, tile_overlap=16, batch_size=16, threshold=0.5, normalization=normalization)
    half = side // 2
    errors, candidates = [], {}
    for z in range(test.image.shape[0]):
        for r in range(2):
            for c in range(2):
                image = test.image[z, r * half:(r + 1) * half, c * half:(c + 1) * half]
                truth = test.mask[z, r * half:(r + 1) * half, c * half:(c + 1) * half] > 0
                views = tta_probabilities(served, image, settings)
                mask = served_probabilities(views, settings) >= settings.threshold
                total = mask.sum() + truth.sum()
                errors.append(1.0 - (2.0 * (mask & truth).sum() / total if total else 1.0))
                statistics = TTAStatistics(settings.threshold)
                statistics.add(views)
                for name, value in statistics.scores().items():
                    candidates.setdefault(name, []).append(value)
    correlations = {}
    for name, values in candidates.items():
        rho = float(spearmanr(values, errors).statistic) if np.ptp(values) > 0 and np.ptp(errors) > 0 else np.nan
        correlations[name] = None if np.isnan(rho) else rho  # undefined for constant inputs (a smoke run)
    return {"images": len(errors), "mean_error": float(np.mean(errors)), "spearman": correlations,
            "chosen": IMAGE_SCORE}


def classifier_ranking(smoke: bool, seed: int = 0) -> dict:
    """AUROC of error detection: entropy of the served pass against MC dropout's entropy and mutual information."""
    from cellops.classifier.data import Augmentation, build_augmentation
    from cellops.classifier.specs import ClassifierTraining
    from cellops.classifier.train import fit
    from cellops.synthetic.endothelial import CLASSES, generate_cell_image, image_seed
    from models.classifier import build_classifier

    from cellops.classifier.data import to_model_input
    from cellops.intensity import Normalization

    size, n_train, n_test, epochs = (32, 8, 8, 1) if smoke else (64, 160, 200, 10)
    normalization = Normalization(mode="percentile", low=1.0, high=99.8)  # as configs/classifier.yaml

    def draw(n: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for label, name in enumerate(CLASSES):
            for i in range(n):
                picture = generate_cell_image(name, size, seed=image_seed(seed, name, offset + i))
                images.append(to_model_input(picture, channels=1, size=size, normalization=normalization))
                labels.append(label)
        return np.stack(images).astype(np.float32), np.array(labels)

    train, val, test = draw(n_train, 0), draw(max(4, n_train // 4), 10_000), draw(n_test, 20_000)
    model = build_classifier("efficientcellnet", num_classes=2, in_channels=1,
                             options={"widths": [16, 24, 32, 64], "dropout": 0.2}, seed=seed)
    config = ClassifierTraining(epochs=epochs, batch_size=32, learning_rate=4e-3, weight_decay=1e-4,
                                label_smoothing=0.0, warmup_fraction=0.15, seed=seed, device="cpu", threads=0)
    fit(model, train, val, config, build_augmentation(Augmentation(flip=True, rotate90=True, brightness=0.25,
                                                                   contrast=0.25, blur_sigma=1.2, noise_sigma=0.02)),
        positive=1)
    probabilities = predict_probabilities(model, test[0], 64)
    wrong = probabilities.argmax(axis=1) != test[1]
    samples = mc_dropout_probabilities(model, test[0], 64, samples=MC_SAMPLES, seed=seed)
    mean = samples.mean(axis=0)
    entropy_of_mean = normalised_entropy(mean)
    mutual_information = entropy_of_mean - np.mean([normalised_entropy(s) for s in samples], axis=0)
    return {"seed": seed, "test_images": len(wrong), "errors": int(wrong.sum()),
            "accuracy": float(1 - wrong.mean()),
            "auroc": {"entropy": auroc(normalised_entropy(probabilities), wrong),
                      "mc-dropout": auroc(entropy_of_mean, wrong),
                      "mc-dropout mutual information": auroc(mutual_information, wrong)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds (best counts)")
    parser.add_argument("--seeds", type=int, default=3, help="classifier ranking: training seeds")
    parser.add_argument("--part", choices=("all", "cost", "rank"), default="all",
                        help="cost only, ranking only, or both")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny random networks, no training: checks the script runs")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    repeats = 1 if args.smoke else args.repeats

    started = time.perf_counter()
    summary, result = [], {}
    if args.part in ("all", "cost"):
        result["cost_seconds"] = cost_summary(args.smoke, repeats, summary)
    if args.part in ("all", "rank"):
        result["ranking"] = ranking_summary(args.smoke, args.seeds, summary)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print_summary(summary)
    write_result("uncertainty_cost", result, summary, args.out, smoke=args.smoke)


def cost_summary(smoke: bool, repeats: int, summary: list[dict]) -> dict:
    """Seconds per image of each family with and without uncertainty; its rows appended to ``summary``."""
    cost = {"unet": unet_cost(smoke, repeats), "maskrcnn": maskrcnn_cost(smoke, repeats),
            "classifier": classifier_cost(smoke, repeats)}
    summary += [
        row("U-Net seconds per image: segment_with_uncertainty vs segment", "flip-tta",
            cost["unet"]["uncertainty"], "segment", cost["unet"]["default"], "s", higher_is_better=False,
            note=f"{cost['unet']['image']}, eight views"),
        row("Mask R-CNN seconds per image: predict_with_uncertainty vs predict_image", "flip-tta",
            cost["maskrcnn"]["uncertainty"], "predict_image", cost["maskrcnn"]["default"], "s",
            higher_is_better=False, note=f"{cost['maskrcnn']['image']}, eight views"),
        row("classifier seconds per image: entropy vs plain probabilities", "entropy",
            cost["classifier"]["entropy"], "probabilities", cost["classifier"]["default"], "s",
            higher_is_better=False, note=cost["classifier"]["image"]),
        row("classifier seconds per image: MC dropout vs plain probabilities", "mc-dropout",
            cost["classifier"]["mc-dropout"], "probabilities", cost["classifier"]["default"], "s",
            higher_is_better=False, note=f"{MC_SAMPLES} samples"),
    ]
    return cost


def ranking_summary(smoke: bool, seeds: int, summary: list[dict]) -> dict:
    """How well each uncertainty ranks the mistakes; its rows appended to ``summary``."""
    ranking_unet = [unet_ranking(smoke, seed) for seed in range(1 if smoke else seeds)]
    ranking_classifier = [classifier_ranking(smoke, seed) for seed in range(1 if smoke else seeds)]
    spearman = {key: _mean([r["spearman"][key] for r in ranking_unet]) for key in ranking_unet[0]["spearman"]}
    others = [v for k, v in spearman.items() if k != IMAGE_SCORE and v is not None]
    summary.append(row("U-Net: Spearman of the image score with 1 - Dice", IMAGE_SCORE, spearman[IMAGE_SCORE],
                       "best other candidate", max(others) if others else None, "rho",
                       note=f"mean of {len(ranking_unet)} seeds, {ranking_unet[0]['images']} test images each"))
    means = {key: _mean([r["auroc"][key] for r in ranking_classifier])
             for key in ("entropy", "mc-dropout", "mc-dropout mutual information")}
    summary.append(row("classifier: AUROC of error detection, entropy vs MC dropout", "entropy",
                       means["entropy"], "mc-dropout", means["mc-dropout"], "AUROC",
                       note=f"mean of {len(ranking_classifier)} seeds"))
    return {"unet": ranking_unet, "unet_mean_spearman": spearman, "classifier": ranking_classifier,
            "classifier_mean_auroc": means}


def _mean(values: list[float | None]) -> float | None:
    """The mean of the values that are defined; None when none is."""
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


if __name__ == "__main__":
    main()
