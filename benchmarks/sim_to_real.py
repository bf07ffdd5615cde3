"""Sim to real: a Mask R-CNN trained on the default synthetic nuclei meets a harder domain it never saw, then is
fine-tuned on corrections (the exact ground truth) of 1, 2, 4 and 8 images of that domain (issue 28).

    python benchmarks/sim_to_real.py [--counts 1 2 4 8] [--seeds N] [--smoke] [--out PATH] [--figures DIR] [--csv DIR]

**The model** is configs/maskrcnn_nuclei.yaml's (ResNet-18-FPN, full resolution, small anchors) at a CPU size:
256x256 fields of the default synthetic nuclei (:func:`cellops.synthetic.nuclei.generate_nuclei_image`, the three
groups, about 12 nuclei each), 18 training images, trained from scratch. **The new domain** is
:func:`cellops.synthetic.nuclei_domains.generate_lab_nuclei_image`: larger nuclei pressed together, a dim population,
a blotchy vignetted background, dim blurred nuclei of another focal plane, few photons, dark nucleoli, stretched to
8 bits (everything the default images lack at once, as a real field). **Fine-tuning** starts from the synthetic
model each time (the loop's default: fine-tune the champion) on the 18 original training images mixed with the
first n corrected fields of the domain, each repeated so that corrections make up about a third of every epoch
(``round(9 / n)`` copies), 4 epochs. **Scored** on 8 held-out fields of the domain and on the 6 synthetic test
images (does it forget?): F1 of masks matched one to one at IoU 0.5 among detections scoring at least 0.5
(:func:`cellops.maskrcnn.evaluation.evaluate`, the project's matching), with precision, recall and mask AP50.
**The domain's target**: F1 within 0.05 of the model's own synthetic test F1. **A control** fine-tunes the same
way on 8 more images of the default domain: the gain must come from the domain, not from more training.

Results: outputs/benchmarks/sim_to_real.json (or --out), benchmarks/results/sim_to_real.csv, docs/img/sim-to-real.png.
``--smoke``: 128-px fields, two training images, one epoch, one correction, no figure: checks that the script runs.
Sizes are for 2 shared cores: one torch thread, run it under ``nice``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from active_learning import (NORMALIZATION, Item, instance_test_set, maskrcnn_model_settings, maskrcnn_train,
                             save_figure)
from benchlib import row, write_result

from cellops.maskrcnn.evaluation import evaluate, match_detections
from cellops.maskrcnn.specs import MaskRCNNServing
from cellops.synthetic.nuclei import GROUP_SHAPES, generate_nuclei_image
from cellops.synthetic.nuclei_domains import generate_lab_nuclei_image
from cellops.thresholds import choose_score_threshold
from models.maskrcnn import build_maskrcnn

ROOT = Path(__file__).resolve().parents[1]
MARGIN = 0.05


def default_fields(seeds: list[int], size: int, n_nuclei: int) -> list[Item]:
    groups = list(GROUP_SHAPES)
    items = []
    for i, seed in enumerate(seeds):
        group = groups[i % len(groups)]
        sample = generate_nuclei_image(group, (size, size), seed=seed, n_nuclei=n_nuclei)
        items.append(Item(sample.image, sample.labels, f"synthetic {group}", f"synthetic/{seed}"))
    return items


def lab_fields(seeds: list[int], size: int, n_nuclei: int) -> list[Item]:
    return [Item((s := generate_lab_nuclei_image((size, size), seed=seed, n_nuclei=n_nuclei)).image, s.labels,
                 "lab domain", f"lab/{seed}") for seed in seeds]


def served_threshold(model, validation: tuple[list, dict], serving: MaskRCNNServing) -> float:
    """The score threshold of highest F1 on the validation fields, as the training pipeline chooses it."""
    detections = evaluate(model, validation[0], validation[1], serving)[1]
    return float(choose_score_threshold(match_detections(validation[1], detections)).value)


def scores(model, test: tuple[list, dict], serving: MaskRCNNServing, threshold: float) -> dict[str, float]:
    """F1, precision and recall at ``threshold`` (and at the fixed 0.5), mask AP50."""
    result, detections = evaluate(model, test[0], test[1], replace(serving, score_threshold=threshold))
    at_half = match_detections(test[1], detections).f1_at(0.5)[0]
    return {"f1": round(result.f1_50, 4), "precision": round(result.precision_50, 4),
            "recall": round(result.recall_50, 4), "mask_ap50": round(result.mask_ap50, 4),
            "threshold": threshold, "f1_at_0.5": round(at_half, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8], help="corrected images per point")
    parser.add_argument("--seeds", type=int, default=1, help="repeats with other weights and corrected images")
    parser.add_argument("--fine-tune-epochs", type=int, default=8, help="epochs of every fine-tuning")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--figures", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--csv", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--smoke", "--quick", action="store_true", help="tiny sizes: checks that the script runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size, n_nuclei = (128, 4) if args.smoke else (256, 12)
    n_train, n_test, n_lab_test, n_lab_val = (2, 1, 1, 1) if args.smoke else (18, 6, 8, 2)
    epochs_base, epochs_tune = (1, 1) if args.smoke else (12, args.fine_tune_epochs)
    counts = [1] if args.smoke else sorted(args.counts)
    serving = MaskRCNNServing(score_threshold=0.5, mask_threshold=0.5, tile_size=size, tile_overlap=size // 4,
                              normalization=NORMALIZATION, max_detections=300, categories={1: "nucleus"})
    train = default_fields(list(range(1000, 1000 + n_train)), size, n_nuclei)
    synthetic_test = instance_test_set(default_fields(list(range(2000, 2000 + n_test)), size, n_nuclei))
    lab_test = instance_test_set(lab_fields(list(range(4000, 4000 + n_lab_test)), size, n_nuclei))
    # Each model is served at the score threshold of highest F1 on validation fields of the domain (two, held out
    # like the test fields, the same for every model), as the training pipeline chooses it on its validation split.
    lab_validation = instance_test_set(lab_fields(list(range(4500, 4500 + n_lab_val)), size, n_nuclei))

    def measured(model) -> dict:
        threshold = served_threshold(model, lab_validation, serving)
        return {"lab": scores(model, lab_test, serving, threshold),
                "synthetic": scores(model, synthetic_test, serving, threshold)}

    runs = []
    for seed in range(args.seeds):
        started = time.perf_counter()
        corrections = lab_fields(list(range(3000 + 100 * seed, 3000 + 100 * seed + max(counts))), size, n_nuclei)
        extra_default = default_fields(list(range(5000 + 100 * seed, 5000 + 100 * seed + max(counts))), size, n_nuclei)
        base = maskrcnn_train(build_maskrcnn(maskrcnn_model_settings(size, 300), 2, seed=seed), train,
                              epochs=epochs_base, learning_rate=0.02, warmup=20, seed=seed)
        points = [{"corrected": 0, **measured(base)}]
        print(f"seed {seed}: synthetic model, synthetic test {points[0]['synthetic']}, lab domain {points[0]['lab']} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)

        def tuned(extra: list[Item], tune_seed: int):
            repeats = max(1, round(9 / len(extra)))
            return maskrcnn_train(copy.deepcopy(base), train + extra * repeats, epochs=epochs_tune,
                                  learning_rate=0.01, warmup=5, seed=tune_seed)

        for n in counts:
            model = tuned(corrections[:n], seed * 100 + n)
            points.append({"corrected": n, **measured(model)})
            print(f"  {n} corrected: lab domain {points[-1]['lab']}, synthetic test {points[-1]['synthetic']} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
        model = tuned(extra_default[:max(counts)], seed * 100 + 99)
        control = {"extra_default_images": max(counts), **measured(model)}
        print(f"  control, {max(counts)} more default images: lab domain {control['lab']}", flush=True)
        runs.append({"points": points, "control": control, "seconds": round(time.perf_counter() - started, 1)})

    xs = [0, *counts]
    mean = {f"{part}_{key}": [float(np.mean([run["points"][i][part][key] for run in runs])) for i in range(len(xs))]
            for part in ("lab", "synthetic") for key in ("f1", "f1_at_0.5", "mask_ap50")}
    base_synthetic_f1 = mean["synthetic_f1_at_0.5"][0]  # on its own domain, at the served default 0.5
    target = base_synthetic_f1 - MARGIN
    reached = next((x for x, f1 in zip(xs, mean["lab_f1"]) if f1 >= target), None)
    control_f1 = float(np.mean([run["control"]["lab"]["f1"] for run in runs]))
    result = {"image_size": size, "training_images": n_train, "synthetic_test_images": n_test,
              "lab_test_images": n_lab_test, "lab_validation_images": n_lab_val, "epochs_base": epochs_base,
              "epochs_fine_tune": epochs_tune,
              "score_threshold": "chosen on the lab validation fields, per model", "corrected": xs, "mean": mean,
              "target_f1": round(target, 4), "target": f"lab-domain F1 >= synthetic test F1 - {MARGIN}",
              "corrected_to_reach_target": reached, "control_lab_f1": control_f1, "runs": runs}
    print(f"lab-domain F1 by corrected images {dict(zip(xs, [round(v, 3) for v in mean['lab_f1']]))}; synthetic "
          f"test F1 {base_synthetic_f1:.3f}, target {target:.3f}: reached with "
          f"{'never' if reached is None else reached}; control ({max(counts)} more default images) {control_f1:.3f}")
    summary = [row("lab-domain F1@0.5 after fine-tuning on corrections", f"{max(counts)} corrected lab images",
                   mean["lab_f1"][-1], "synthetic-trained model", mean["lab_f1"][0], "F1",
                   note=f"target {target:.3f} (synthetic test F1 {base_synthetic_f1:.3f} - {MARGIN}): "
                        f"{'not reached' if reached is None else f'reached with {reached}'}; control "
                        f"{max(counts)} more default images: {control_f1:.3f}")]
    if not args.smoke:
        write_csv(args.csv / "sim_to_real.csv", runs, xs)
        plot(args.figures / "sim-to-real.png", xs, mean, target, base_synthetic_f1, control_f1, len(runs))
    write_result("sim_to_real", result, summary, args.out, smoke=args.smoke)


def write_csv(path: Path, runs: list[dict], xs: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["seed", "corrected", "threshold", "lab_f1", "lab_precision", "lab_recall", "lab_f1_at_0.5",
                         "lab_mask_ap50", "synthetic_f1", "synthetic_mask_ap50"])
        for seed, run in enumerate(runs):
            for point in run["points"]:
                lab, synthetic = point["lab"], point["synthetic"]
                writer.writerow([seed, point["corrected"], lab["threshold"], lab["f1"], lab["precision"], lab["recall"],
                                 lab["f1_at_0.5"], lab["mask_ap50"], synthetic["f1"], synthetic["mask_ap50"]])
            control = run["control"]
            lab, synthetic = control["lab"], control["synthetic"]
            writer.writerow([seed, f"control: {control['extra_default_images']} default", lab["threshold"], lab["f1"],
                             lab["precision"], lab["recall"], lab["f1_at_0.5"], lab["mask_ap50"], synthetic["f1"],
                             synthetic["mask_ap50"]])
    print(f"-> {path}")


def plot(path: Path, xs: list[int], mean: dict, target: float, synthetic_f1: float, control_f1: float,
         seeds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=120)
    ax.plot(xs, mean["lab_f1"], "o-", color="tab:blue", label="lab domain F1 (threshold on validation)")
    ax.plot(xs, mean["lab_f1_at_0.5"], "o:", color="tab:cyan", label="lab domain F1 at score 0.5")
    ax.plot(xs, mean["lab_mask_ap50"], "^-", color="tab:purple", alpha=0.6, label="lab domain mask AP50")
    ax.plot(xs, mean["synthetic_f1_at_0.5"], "s--", color="tab:grey", label="synthetic test F1 at score 0.5")
    ax.plot([xs[-1]], [control_f1], "x", color="tab:red", ms=9, label=f"control: {xs[-1]} more synthetic")
    ax.axhline(target, color="tab:green", ls=":", label=f"target {target:.2f}")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("corrected images of the lab domain")
    ax.set_ylabel(f"score at IoU 0.5 (mean of {seeds} seed{'s' if seeds > 1 else ''})")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Mask R-CNN nuclei: synthetic-trained (synthetic test F1 {synthetic_f1:.2f}),\n"
                 "fine-tuned on corrections of a harder domain", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
