"""Out-of-distribution verdicts per family: false alarms on in-distribution test images, detection of every shifted
domain, what the flag says about accuracy, the candidates measured, and what the verdict costs (issue 29).

Per family a model is trained briefly on the project's synthetic data as its pipeline would (U-Net: EM slices;
classifier: endothelial cells; Mask R-CNN: phase-contrast colonies; the training helpers of
``benchmarks/active_learning.py`` and ``benchmarks/uncertainty_cost.py``); its reference is fitted as registration
fits it (:mod:`cellops.ood`: the family's ``reference_rows`` on training images, calibration on held-out validation
images at a 5 % false-alarm rate). It then meets:

- **in distribution**: new test images of its own domain (false alarms: target <= 5 %);
- **shifted domains** built from those test images: heavy blur (Gaussian, sigma 4 px), heavy noise (sigma 0.25 of the
  1-99 % range), contrast inversion, another magnification (the central half enlarged 2x; the whole image reduced
  2x), a harder imaging condition of the robustness sweep or the active-learning pools (U-Net: low contrast; Mask
  R-CNN: 3x-smaller colonies; classifier: strong noise and blur together), and the other assays' images (EM slices,
  fluorescent nuclei, phase-contrast colonies, endothelial cells), each sent to a model that never saw them
  (target: >= 95 % flagged per domain);
- **accuracy flagged vs unflagged**: the task's own score (U-Net Dice, classifier accuracy, Mask R-CNN F1 at IoU
  0.5) of every image that has a ground truth, split by the verdict: a flag means something when flagged images
  score lower.

Candidates (all calibrated the same way): ``input (chosen)`` (the input statistics, distance to the nearest
training image in the space whitened by their shrunk covariance: the library's choice), ``input, Mahalanobis``
(distance to their mean instead), ``input + output`` (with the output statistics too), ``output`` (the output
statistics alone), ``output score`` (the classic one-number score: U-Net mean entropy, classifier top softmax
probability, Mask R-CNN top detection score), ``deep`` and ``deep, Mahalanobis`` (pooled activations: the U-Net
bottleneck, the classifier's GAP features, Mask R-CNN's FPN levels; torch only, a hook).

Latency: the work of a served request (decode the PNG upload, predict, answer) without and with the verdict, per
upload size, interleaved (best of ``--repeats``); HTTP and BentoML's own overhead, which only dilute the cost, are
left out.

    python benchmarks/ood.py [--family unet classifier maskrcnn] [--out PATH] [--csv DIR]
    python benchmarks/ood.py --smoke --out /tmp/x.json   (tiny sets, one step of training: checks the script runs)

Results: outputs/benchmarks/ood.json (or --out), benchmarks/results/ood.csv. One torch thread; run it under ``nice``.
"""

from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from benchlib import row, write_result

from cellops.ood import INTENSITY_FEATURES, fit_reference
from cellops.runtimes import interleaved_best

ROOT = Path(__file__).resolve().parents[1]
RATE = 0.05
#: The library's score (:func:`cellops.ood.fit_reference`'s defaults): input statistics, nearest training image.
CHOSEN = "input (chosen)"


@dataclass
class Sample:
    """One image as a family's model sees it, with its ground truth when it has one."""

    image: np.ndarray
    truth: object | None
    domain: str


@dataclass
class Scored:
    """What the benchmark keeps of one predicted image."""

    domain: str
    features: np.ndarray
    deep: np.ndarray
    accuracy: float | None
    label: int = 0


@dataclass
class FamilyRun:
    family: str
    feature_names: tuple[str, ...]
    output_score: str
    reference: list[Scored]
    calibration: list[Scored]
    tested: list[Scored]
    latency: dict = field(default_factory=dict)
    model: str = ""


# --- shifted domains ------------------------------------------------------------------------------------------------


def _range(image: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(image, [1, 99])
    return float(low), float(max(high, low + 1e-6))


def _as_dtype(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    if np.issubdtype(like.dtype, np.integer):
        info = np.iinfo(like.dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(like.dtype)
    return values.astype(like.dtype)


def blurred(image: np.ndarray, sigma: float = 4.0) -> np.ndarray:
    planes = image.astype(np.float32)
    return _as_dtype(cv2.GaussianBlur(planes, (0, 0), sigma), image)


def noisy(image: np.ndarray, seed: int, fraction: float = 0.25) -> np.ndarray:
    low, high = _range(image)
    rng = np.random.default_rng(seed)
    return _as_dtype(image.astype(np.float64) + rng.normal(0, fraction * (high - low), image.shape), image)


def inverted(image: np.ndarray) -> np.ndarray:
    if np.issubdtype(image.dtype, np.integer):
        return (np.iinfo(image.dtype).max - image).astype(image.dtype)
    return (image.max() - image).astype(image.dtype)


def magnified(image: np.ndarray, truth: np.ndarray | None, factor: float) -> tuple[np.ndarray, np.ndarray | None]:
    """``factor`` 2: the central half enlarged twice (same size); 0.5: the whole image halved."""
    height, width = image.shape[:2]
    if factor > 1:
        top, left = height // 4, width // 4
        image = image[top:top + height // 2, left:left + width // 2]
        truth = None if truth is None else truth[top:top + height // 2, left:left + width // 2]
        size, method = (width, height), cv2.INTER_LINEAR
    else:
        size, method = (width // 2, height // 2), cv2.INTER_AREA
    out = cv2.resize(image, size, interpolation=method)
    if truth is not None:
        truth = cv2.resize(truth.astype(np.uint16), size, interpolation=cv2.INTER_NEAREST).astype(truth.dtype)
    return out, truth


def shifted(samples: list[Sample], seed: int) -> list[Sample]:
    """The image-level shifts of every test sample (ground truth kept where the shift keeps it)."""
    out = []
    for i, s in enumerate(samples):
        out.append(Sample(blurred(s.image), s.truth, "heavy blur"))
        out.append(Sample(noisy(s.image, seed + i), s.truth, "heavy noise"))
        out.append(Sample(inverted(s.image), s.truth, "contrast inversion"))
        image, truth = magnified(s.image, _array(s.truth), 2.0)
        out.append(Sample(image, _like(s.truth, truth), "magnification 2x"))
        image, truth = magnified(s.image, _array(s.truth), 0.5)
        out.append(Sample(image, _like(s.truth, truth), "magnification 0.5x"))
    return out


def _array(truth):
    return truth if isinstance(truth, np.ndarray) else None


def _like(original, transformed):
    return transformed if isinstance(original, np.ndarray) else original


# --- other assays (grey 8-bit fields of `size`) ---------------------------------------------------------------------


def em_fields(n: int, size: int, seed: int) -> list[np.ndarray]:
    """One slice of each of ``n`` EM volumes (neighbouring slices of one volume are near-duplicates)."""
    from cellops.synthetic.em import generate_em_volume

    return [generate_em_volume((1, size, size), seed=seed + i).image[0] for i in range(n)]


def nuclei_fields(n: int, size: int, seed: int) -> list[np.ndarray]:
    from cellops.synthetic.nuclei import GROUP_SHAPES, generate_nuclei_image

    groups = list(GROUP_SHAPES)
    return [generate_nuclei_image(groups[i % 3], (size, size), seed=seed + i, n_nuclei=12).image for i in range(n)]


def colony_fields(n: int, size: int, seed: int, **settings) -> list[tuple[np.ndarray, np.ndarray]]:
    from cellops.synthetic.colonies import generate_colony_image

    settings = {"magnification": 5.0, "n_single_cells": 6, "n_debris": 15, **settings}
    return [((s := generate_colony_image((size, size), seed=seed + i, **settings)).image, s.labels) for i in range(n)]


def endothelial_fields(n: int, size: int, seed: int) -> list[np.ndarray]:
    from cellops.synthetic.endothelial import CLASSES, generate_cell_image, image_seed

    return [generate_cell_image(CLASSES[i % 2], size, seed=image_seed(seed, CLASSES[i % 2], i)) for i in range(n)]


# --- scoring -------------------------------------------------------------------------------------------------------


def candidates(run: FamilyRun) -> dict[str, tuple[Callable[[list[Scored]], np.ndarray], str]]:
    """Candidate name -> (feature rows of a list of scored images, the distance they are scored by)."""
    n_input = len(INTENSITY_FEATURES)
    out_index = run.feature_names.index(run.output_score)
    combined = lambda items: np.array([s.features for s in items])  # noqa: E731
    deep = lambda items: np.array([s.deep for s in items])  # noqa: E731
    inputs = lambda items: np.array([s.features[:n_input] for s in items])  # noqa: E731
    return {
        CHOSEN: (inputs, "nearest"),
        "input, Mahalanobis": (inputs, "mahalanobis"),
        "input + output": (combined, "nearest"),
        "input + output, Mahalanobis": (combined, "mahalanobis"),
        "output": (lambda items: np.array([s.features[n_input:] for s in items]), "nearest"),
        "output score": (lambda items: np.array([[s.features[out_index]] for s in items]), "mahalanobis"),
        "deep": (deep, "nearest"),
        "deep, Mahalanobis": (deep, "mahalanobis"),
    }


def evaluate_candidates(run: FamilyRun) -> list[dict]:
    """Per candidate and domain: the share flagged (false alarms in distribution, detection elsewhere)."""
    rows = []
    domains = list(dict.fromkeys(s.domain for s in run.tested))
    for name, (rows_of, score) in candidates(run).items():
        reference, calibration = rows_of(run.reference), rows_of(run.calibration)
        names = [f"f{i}" for i in range(reference.shape[1])]
        fitted = fit_reference(run.family, reference, calibration, names, false_alarm_rate=RATE, score=score)
        for domain in domains:
            items = [s for s in run.tested if s.domain == domain]
            flagged = fitted.scores(rows_of(items)) > fitted.threshold
            truths = np.array([s.accuracy for s in items if s.accuracy is not None])
            rows.append({"family": run.family, "candidate": name, "domain": domain, "images": len(items),
                         "flagged": round(float(flagged.mean()), 4), "task_score": _mean(truths)})
    return rows


def accuracy_split(run: FamilyRun) -> dict:
    """The task score of the images with a ground truth, flagged vs unflagged by the library's score."""
    rows_of = candidates(run)["input + output"][0]  # all features: the library picks the scored ones itself
    fitted = fit_reference(run.family, rows_of(run.reference), rows_of(run.calibration), run.feature_names,
                           false_alarm_rate=RATE)
    items = [s for s in run.tested if s.accuracy is not None]
    flagged = fitted.scores(rows_of(items)) > fitted.threshold
    scores = np.array([s.accuracy for s in items])
    return {"threshold": round(fitted.threshold, 4),
            "flagged": {"images": int(flagged.sum()), "score": _mean(scores[flagged])},
            "unflagged": {"images": int((~flagged).sum()), "score": _mean(scores[~flagged])}}


def _mean(values: np.ndarray) -> float | None:
    return round(float(values.mean()), 4) if len(values) else None


# --- U-Net ---------------------------------------------------------------------------------------------------------


def run_unet(smoke: bool, repeats: int, log) -> FamilyRun:
    from active_learning import NORMALIZATION, em_slices, unet_train

    from cellops.inference import prepare_for_inference
    from cellops.unet import ood as unet_ood
    from cellops.unet.predict import predict_probabilities
    from cellops.unet.specs import Architecture, UNetServing
    from cellops.unet.train import build_model

    size = 96 if smoke else 256
    model = build_model(Architecture(1, 1, 4 if smoke else 8, 2 if smoke else 3, 0.0), seed=0)
    train = em_slices("routine", 1, 2 if smoke else 8, size) + ([] if smoke else em_slices("routine", 2, 8, size))
    model = prepare_for_inference(unet_train(model, train, steps=2 if smoke else 250, patch=64, learning_rate=3e-3,
                                             seed=0))
    settings = UNetServing(tile_size=64, tile_overlap=16, batch_size=16, threshold=0.5, normalization=NORMALIZATION)
    deep: list[torch.Tensor] = []
    model.bottleneck.register_forward_hook(lambda m, i, o: deep.append(o.detach().float().mean(dim=(2, 3))))

    def scored(sample: Sample) -> Scored:
        deep.clear()
        probabilities = predict_probabilities(model, sample.image, settings)
        unit = settings.normalization.apply(sample.image)
        features = unet_ood.image_features(unit, probabilities, settings.threshold)
        accuracy = None
        if isinstance(sample.truth, np.ndarray):
            mask, truth = probabilities >= settings.threshold, sample.truth > 0
            total = mask.sum() + truth.sum()
            accuracy = float(2.0 * (mask & truth).sum() / total) if total else 1.0
        return Scored(sample.domain, features, torch.cat(deep).mean(dim=0).numpy(), accuracy)

    volume = np.stack([item.image for item in train])
    crops = unet_ood.reference_crops(volume, (64, 128, 256), 30 if smoke else 96, seed=0)
    reference = [scored(Sample(c, None, "reference")) for c in crops]
    validation = np.stack([i.image for i in em_slices("routine", 5, 2 if smoke else 8, size)])
    calibration = [scored(Sample(c, None, "calibration"))
                   for c in unet_ood.reference_crops(validation, (64, 128, 256), 20 if smoke else 100, seed=1)]
    test_items = em_slices("routine", 100, 2 if smoke else 10, size) + ([] if smoke else
                                                                          em_slices("routine", 101, 10, size))
    test = [Sample(i.image, i.truth, "in distribution") for i in test_items]
    n_other = 2 if smoke else 20
    others = ([Sample(i.image, i.truth, "low contrast (harder EM)")
               for i in em_slices("low contrast", 120, n_other, size)]
              + [Sample(f, None, "other assay: nuclei") for f in nuclei_fields(n_other, size, 300)]
              + [Sample(f, None, "other assay: colonies") for f, _ in colony_fields(n_other, size, 400)])
    tested = [scored(s) for s in test + shifted(test, 7) + others]
    served_reference = fit_reference("unet", np.array([r.features for r in reference]),
                                     np.array([c.features for c in calibration]), unet_ood.FEATURE_NAMES)

    def served(data: bytes, verdict: bool) -> bytes:
        from cellops.io import encode_image

        image = decoded(data)
        probabilities = predict_probabilities(model, image, settings)
        if verdict:
            unet_ood.verdict_for(served_reference, image, probabilities, settings)
        return encode_image((probabilities >= settings.threshold).astype(np.uint8) * 255, "png")

    big = np.concatenate([np.concatenate([t.image for t in test[i:i + 4]], axis=1) for i in (0, 4, 8)])[:768, :1024] \
        if not smoke else test[0].image
    latency = latency_of(served, {f"{size}x{size} PNG": png(test[0].image),
                                  f"{big.shape[1]}x{big.shape[0]} PNG": png(big)}, repeats)
    log(f"U-Net: reference {len(reference)}, calibration {len(calibration)}, tested {len(tested)}; {latency}")
    return FamilyRun("unet", unet_ood.FEATURE_NAMES, "mean_entropy", reference, calibration, tested, latency,
                     f"U-Net base 8, depth 3, {len(train)} training slices of {size}x{size}")


def latency_of(served: Callable[[bytes, bool], object], uploads: dict[str, bytes], repeats: int) -> list[dict]:
    """Seconds of a served request's work (decode the upload, predict, answer) without and with the verdict, per
    upload, best of ``repeats``, interleaved."""
    out = []
    for what, data in uploads.items():
        times = interleaved_best({"without": lambda: served(data, False), "with": lambda: served(data, True)},
                                 repeats)
        out.append({"input": what, "without_s": round(times["without"], 5), "with_verdict_s": round(times["with"], 5),
                    "extra": round(times["with"] / times["without"] - 1.0, 4)})
    return out


def png(image: np.ndarray) -> bytes:
    from cellops.io import encode_image

    return encode_image(image, "png")


def decoded(data: bytes) -> np.ndarray:
    from cellops.io import decode_image

    return decode_image(data, max_pixels=1 << 26).array


# --- classifier ----------------------------------------------------------------------------------------------------


def run_classifier(smoke: bool, repeats: int, log) -> FamilyRun:
    from cellops.classifier import ood as classifier_ood
    from cellops.classifier.data import Augmentation, build_augmentation, to_model_input
    from cellops.classifier.specs import ClassifierServing, ClassifierTraining
    from cellops.classifier.train import fit, predict_probabilities
    from cellops.intensity import Normalization
    from cellops.synthetic.endothelial import CLASSES, generate_cell_image, image_seed
    from models.classifier import build_classifier

    size, n_train, n_test, epochs = (32, 16, 4, 1) if smoke else (96, 150, 50, 10)
    normalization = Normalization(mode="percentile", low=1.0, high=99.8)

    def prepared(picture: np.ndarray) -> np.ndarray:
        return to_model_input(picture, channels=1, size=size, normalization=normalization)

    def draw(n: int, offset: int) -> list[Sample]:
        return [Sample(generate_cell_image(name, size, seed=image_seed(0, name, offset + i)), label, "")
                for label, name in enumerate(CLASSES) for i in range(n)]

    train, val, test = draw(n_train, 0), draw(10 if smoke else 75, 10_000), draw(n_test, 20_000)
    stack = lambda samples: np.stack([prepared(s.image) for s in samples]).astype(np.float32)  # noqa: E731
    labels = lambda samples: np.array([s.truth for s in samples])  # noqa: E731
    model = build_classifier("efficientcellnet", num_classes=2, in_channels=1,
                             options={"widths": [16, 24, 32, 64], "dropout": 0.2}, seed=0)
    config = ClassifierTraining(epochs=epochs, batch_size=32, learning_rate=4e-3, weight_decay=1e-4,
                                label_smoothing=0.0, warmup_fraction=0.15, seed=0, device="cpu", threads=0)
    fit(model, (stack(train), labels(train)), (stack(val), labels(val)), config,
        build_augmentation(Augmentation(flip=True, rotate90=True, brightness=0.25, contrast=0.25, blur_sigma=1.2,
                                        noise_sigma=0.02)), positive=1)
    model.eval()
    settings = ClassifierServing(classes=tuple(CLASSES), positive_class=CLASSES[1], channels=1, size=size,
                                 batch_size=32)
    deep: list[torch.Tensor] = []
    model.classifier.register_forward_pre_hook(lambda m, args: deep.append(args[0].detach().float()))

    def scored_all(samples: list[Sample], domain: str | None = None) -> list[Scored]:
        deep.clear()
        inputs = stack(samples)
        with torch.no_grad():
            probabilities = predict_probabilities(model, inputs, settings.batch_size)
        pooled = torch.cat(deep).numpy()
        return [Scored(domain or s.domain, classifier_ood.image_features(x, p), d,
                       None if s.truth is None else float(p.argmax() == s.truth), int(p.argmax()))
                for s, x, p, d in zip(samples, inputs, probabilities, pooled)]

    reference = scored_all(train, "reference")
    calibration = scored_all(val, "calibration")
    test_samples = [Sample(s.image, s.truth, "in distribution") for s in test]
    n_other = 4 if smoke else 40
    harder = [Sample(noisy(blurred(s.image, 2.0), 3, 0.1), s.truth, "noise and blur (harder)") for s in test_samples]
    others = ([Sample(f, None, "other assay: EM") for f in em_fields(n_other, 256, 500)]
              + [Sample(f, None, "other assay: nuclei") for f in nuclei_fields(n_other, 256, 600)]
              + [Sample(f, None, "other assay: colonies") for f, _ in colony_fields(n_other, 256, 700)])
    tested = scored_all(test_samples + shifted(test_samples, 11) + harder + others)
    served_reference = fit_reference("classifier", np.array([r.features for r in reference]),
                                     np.array([c.features for c in calibration]), classifier_ood.FEATURE_NAMES)

    def served(data: bytes, verdict: bool) -> str:
        inputs = prepared(decoded(data))[None].astype(np.float32)
        probabilities = predict_probabilities(model, inputs, settings.batch_size)[0]
        if verdict:
            classifier_ood.verdict_for(served_reference, inputs[0], probabilities)
        return CLASSES[int(probabilities.argmax())]

    latency = latency_of(served, {f"{size}x{size} PNG": png(test_samples[0].image),
                                  "256x256 PNG": png(cv2.resize(test_samples[0].image, (256, 256)))}, repeats)
    log(f"classifier: reference {len(reference)}, calibration {len(calibration)}, tested {len(tested)}; {latency}")
    return FamilyRun("classifier", classifier_ood.FEATURE_NAMES, "top_probability", reference, calibration, tested,
                     latency, f"efficientcellnet, {len(train)} training images of {size}x{size}, {epochs} epochs")


# --- Mask R-CNN ----------------------------------------------------------------------------------------------------


def run_maskrcnn(smoke: bool, repeats: int, log) -> FamilyRun:
    from active_learning import NORMALIZATION, Item, maskrcnn_model_settings, maskrcnn_train

    from cellops.maskrcnn import ood as maskrcnn_ood
    from cellops.maskrcnn.data import network_picture
    from cellops.maskrcnn.predict import label_image, predict_picture
    from cellops.maskrcnn.specs import MaskRCNNServing
    from cellops.metrics import match_instances
    from models.maskrcnn import build_maskrcnn

    size = 128 if smoke else 256
    fields = colony_fields(2 if smoke else 6, size, 1)
    torch.manual_seed(0)
    model = maskrcnn_train(build_maskrcnn(maskrcnn_model_settings(size // 2), 2, seed=0),
                           [Item(image, labels, "routine", str(i)) for i, (image, labels) in enumerate(fields)],
                           epochs=1 if smoke else 24, learning_rate=0.02, warmup=10, seed=0).eval()
    settings = MaskRCNNServing(score_threshold=0.5, mask_threshold=0.5, tile_size=size, tile_overlap=size // 4,
                               normalization=NORMALIZATION, max_detections=100, categories={1: "colony"})
    deep: list[torch.Tensor] = []
    model.backbone.register_forward_hook(
        lambda m, i, o: deep.append(torch.cat([level.detach().float().mean(dim=(2, 3)) for level in o.values()], 1)))

    def scored(sample: Sample) -> Scored:
        deep.clear()
        picture = network_picture(sample.image, settings.normalization)
        with torch.no_grad():
            instances = predict_picture(model, picture, settings)
        accuracy = None
        if isinstance(sample.truth, np.ndarray):
            match = match_instances(sample.truth, label_image(instances, sample.truth.shape))
            accuracy = float(match.f1)
        return Scored(sample.domain, maskrcnn_ood.image_features(picture, instances),
                      torch.cat(deep).mean(dim=0).numpy(), accuracy)

    def crops_of(images: list[np.ndarray], count: int, seed: int) -> list[np.ndarray]:
        rng, out = np.random.default_rng(seed), []
        for i in range(count):
            image = images[i % len(images)]
            side = min((128, 192, 256)[i % 3], *image.shape[:2])
            y, x = rng.integers(0, image.shape[0] - side + 1), rng.integers(0, image.shape[1] - side + 1)
            out.append(image[y:y + side, x:x + side])
        return out

    reference = [scored(Sample(c, None, "reference")) for c in crops_of([f for f, _ in fields], 30 if smoke else 60, 0)]
    validation = [f for f, _ in colony_fields(2 if smoke else 6, size, 50)]
    calibration = [scored(Sample(c, None, "calibration")) for c in crops_of(validation, 20 if smoke else 60, 1)]
    test = [Sample(f, t, "in distribution") for f, t in colony_fields(2 if smoke else 20, size, 100)]
    n_other = 2 if smoke else 20
    others = ([Sample(f, t, "small colonies at 3x (harder)")
               for f, t in colony_fields(n_other, size, 150, magnification=3.0, n_colonies=(5, 10))]
              + [Sample(f, None, "other assay: EM") for f in em_fields(n_other, size, 800)]
              + [Sample(f, None, "other assay: nuclei") for f in nuclei_fields(n_other, size, 900)])
    tested = [scored(s) for s in test + shifted(test, 13) + others]
    served_reference = fit_reference("maskrcnn", np.array([r.features for r in reference]),
                                     np.array([c.features for c in calibration]), maskrcnn_ood.FEATURE_NAMES)

    def served(data: bytes, verdict: bool) -> int:
        picture = network_picture(decoded(data), settings.normalization)
        with torch.no_grad():
            instances = predict_picture(model, picture, settings)
        if verdict:
            maskrcnn_ood.verdict_for(served_reference, picture, instances)
        return len(instances)

    latency = latency_of(served, {f"{size}x{size} PNG": png(test[0].image)}, repeats)
    log(f"Mask R-CNN: reference {len(reference)}, calibration {len(calibration)}, tested {len(tested)}; {latency}")
    return FamilyRun("maskrcnn", maskrcnn_ood.FEATURE_NAMES, "top_score", reference, calibration, tested, latency,
                     f"Mask R-CNN ResNet-18-FPN, {len(fields)} training fields of {size}x{size}, 24 epochs")


# --- main ----------------------------------------------------------------------------------------------------------

RUNS = {"unet": run_unet, "classifier": run_classifier, "maskrcnn": run_maskrcnn}


def summary_table(results: list[dict]) -> list[dict]:
    """The chosen score's table: family, domain, images, share flagged, and whether it meets its target."""
    table = []
    for r in results:
        for entry in r["candidates"]:
            if entry["candidate"] != CHOSEN or entry["flagged"] is None:
                continue
            inside = entry["domain"] == "in distribution"
            target = "<= 5 %" if inside else ">= 95 %"
            met = entry["flagged"] <= RATE if inside else entry["flagged"] >= 0.95
            table.append({"family": r["family"], "domain": entry["domain"], "images": entry["images"],
                          "flagged": entry["flagged"], "target": target, "met": met,
                          "task_score": entry.get("task_score")})
    return table


def summary_rows(results: list[dict]) -> list[dict]:
    """Per family: false alarms in distribution, and the weakest shifted domain's detection, the library's score
    against the classic one-number output score."""
    rows = []
    for r in results:
        def flagged(candidate: str, inside: bool) -> list[float]:
            return [e["flagged"] for e in r["candidates"] if e["candidate"] == candidate and e["flagged"] is not None
                    and (e["domain"] == "in distribution") == inside]

        ours, classic = flagged(CHOSEN, True), flagged("output score", True)
        rows.append(row(f"OOD {r['family']}: false alarms in distribution", CHOSEN, ours[0] if ours else None,
                        "output score", classic[0] if classic else None, "share flagged", higher_is_better=False))
        ours, classic = flagged(CHOSEN, False), flagged("output score", False)
        rows.append(row(f"OOD {r['family']}: weakest shifted domain flagged", CHOSEN,
                        min(ours) if ours else None, "output score", min(classic) if classic else None,
                        "share flagged"))
    return rows


def write_csv(path: Path, results: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["family", "candidate", "domain", "images", "flagged",
                                                    "task_score"])
        writer.writeheader()
        for r in results:
            for entry in r["candidates"]:
                writer.writerow({k: entry.get(k) for k in writer.fieldnames})
    print(f"-> {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (latency)")
    parser.add_argument("--smoke", action="store_true", help="tiny sets, one training step: checks the script runs")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--csv", type=Path, default=None, help="folder of ood.csv (default benchmarks/results, "
                                                               "none under --smoke)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    for family in args.family:
        started = time.perf_counter()
        run = RUNS[family](args.smoke, 1 if args.smoke else args.repeats, print)
        results.append({"family": family, "model": run.model, "candidates": evaluate_candidates(run),
                        "accuracy_by_flag": accuracy_split(run), "latency": run.latency,
                        "reference_images": len(run.reference), "calibration_images": len(run.calibration),
                        "seconds": round(time.perf_counter() - started, 1)})
        print(results[-1]["accuracy_by_flag"], results[-1]["latency"])
    table = summary_table(results)
    for line in table:
        score = "" if line["task_score"] is None else f"{line['task_score']:.3f}"
        print(f"{line['family']:<11} {line['domain']:<32} {line['images']:>4} {line['flagged']:>7.1%} "
              f"{line['target']:>8} {'ok' if line['met'] else 'MISSED':>6} {score:>6}")
    write_result("ood", {"false_alarm_rate": RATE, "table": table, "families": results}, summary_rows(results),
                 args.out, smoke=args.smoke)
    if not args.smoke or args.csv:
        write_csv((args.csv or ROOT / "benchmarks" / "results") / "ood.csv", results)


if __name__ == "__main__":
    main()
