"""Robustness of the classical analyses with their defaults, and their time per 2048 x 2048 image.

1. The sweep (:mod:`cellops.robustness`): per condition, F1 at IoU 0.5 (nuclei, colonies), median area error
   of matched colonies, median dF/F0 correlation (calcium), against the issue's targets.
2. Time per 2048 x 2048 image: the defaults (sizes and thresholds measured) against the fixed settings of the
   earlier releases (nuclei 30 px / Otsu; colonies 10x numbers, no splitting or edge refinement), in the same
   run. The nuclei image is a 512 x 512 field tiled 4 x 4 (drawing 700 nuclei at full size takes minutes); the
   default nuclei analysis (segmentation and table) is also set against the issue's 1.5 s per image, with its
   F1 at IoU 0.5 on that image, so that a speed-up that loses accuracy shows.

    python benchmarks/robustness.py [--images 3] [--only nuclei colonies calcium] [--skip-timing] [--smoke] [--out PATH]

The sweep, the timings, the missed targets and the summary rows (per analysis its worst condition against the
target; per analysis the time of the defaults against the fixed settings) go to outputs/benchmarks/robustness.json
(or --out). ``--smoke``: one image per condition of the colony analysis only (unless --only names others), and the
timing on a 256 x 256 image (nuclei: a 64 x 64 field tiled 4 x 4), once: checks that the script runs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from benchlib import row, write_result

from cellops.classical.colonies import FIXED_10X, ColonyParams, measure_colonies
from cellops.classical.nuclei import NucleusParams, nucleus_table, segment_nuclei
from cellops.metrics import match_instances
from cellops.robustness import SweepSettings, robustness_sweep, summarise_sweep
from cellops.synthetic.colonies import generate_colony_image
from cellops.synthetic.nuclei import generate_nuclei_image

#: Nuclei: F1 0.92 in every condition (issue 27: the harder conditions real fields show).
TARGETS = {"nuclei": {"f1": 0.92}, "colonies": {"f1": 0.90, "median_area_error": 0.05},
           "calcium": {"median_r": 0.98}}

FIXED_NUCLEI = NucleusParams(nucleus_diameter_px=30.0, threshold="otsu")
#: The default nuclei analysis (diameter and threshold measured, segmentation and table), seconds per 2048 x 2048
#: image on 2 cores (issue 31).
NUCLEI_SECONDS_TARGET = 1.5


def _best_time(fn, repeats: int) -> float:
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def timing(repeats: int = 2, side: int = 2048) -> dict[str, float]:
    """Best time of the defaults and of the fixed settings on one ``side`` x ``side`` image of each analysis (the
    nuclei: a field a quarter as wide, tiled 4 x 4); ``side`` below 2048 only for --smoke."""
    field = side // 4
    sample = generate_nuclei_image("Control", (field, field), seed=1)
    nuclei = np.tile(sample.image, (4, 4))
    area = (side / 2048) ** 2
    colonies = generate_colony_image((side, side), seed=1, n_colonies=(max(1, int(48 * area)), max(2, int(112 * area))),
                                     n_single_cells=int(400 * area), n_debris=int(960 * area)).image
    result = {}
    for name, params in (("nuclei_auto_s", NucleusParams()), ("nuclei_fixed_s", FIXED_NUCLEI)):
        result[name] = _best_time(lambda: nucleus_table(segment_nuclei(nuclei, params), nuclei), repeats)
    result["nuclei_auto_f1"] = match_instances(tiled_labels(sample.labels), segment_nuclei(nuclei),
                                               iou_threshold=0.5).f1
    for name, params in (("colonies_auto_s", ColonyParams()), ("colonies_fixed_s", FIXED_10X)):
        result[name] = _best_time(lambda: measure_colonies(colonies, params), repeats)
    return result


def tiled_labels(labels: np.ndarray, times: int = 4) -> np.ndarray:
    """``labels`` tiled ``times`` x ``times``, each copy's nuclei numbered apart (the ground truth of the tiled
    timing image).

    >>> tiled_labels(np.array([[0, 1]]), 2).tolist()
    [[0, 1, 0, 2], [0, 3, 0, 4]]
    """
    count = int(labels.max())
    rows = [[np.where(labels > 0, labels + count * (times * i + j), 0) for j in range(times)] for i in range(times)]
    return np.block(rows).astype(np.int32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3, help="images per condition")
    parser.add_argument("--only", nargs="+", choices=list(TARGETS),
                        help="the analyses (default: all; --smoke: colonies)")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="the JSON (default outputs/benchmarks/robustness.json)")
    parser.add_argument("--smoke", action="store_true",
                        help="one image per condition, colonies only (unless --only), small timing images, run once")
    args = parser.parse_args()
    if args.smoke:
        args.images = 1
    if not args.only:
        args.only = ["colonies"] if args.smoke else list(TARGETS)
    summary_rows = []
    report: dict = {}
    failures = []
    for kind in args.only:
        summary = summarise_sweep(robustness_sweep(kind, settings=SweepSettings(images_per_condition=args.images)))
        print(f"\n{kind} ({args.images} images per condition, defaults):")
        print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        report[kind] = summary.to_dict("records")
        for column, target in TARGETS[kind].items():
            lower_is_better = column == "median_area_error"
            missed = summary[summary[column] > target] if lower_is_better else summary[summary[column] < target]
            failures += [f"{kind} / {r.condition}: {column} {getattr(r, column):.3f} (target "
                         f"{'<=' if lower_is_better else '>='} {target})" for r in missed.itertuples()]
            # The worst condition against the target: "x better" is how many times the target it reaches.
            worst = summary.loc[summary[column].idxmax() if lower_is_better else summary[column].idxmin()]
            summary_rows.append(row(f"{kind}: {column}, worst condition", f"defaults ({worst['condition']})",
                                    float(worst[column]), "issue target", float(target), column,
                                    higher_is_better=not lower_is_better, target=1.0,
                                    note=f"{len(summary)} conditions, {args.images} image(s) each"))
    if not args.skip_timing:
        side = 256 if args.smoke else 2048
        key = f"timing_{side}"
        report[key] = timing(repeats=1 if args.smoke else 2, side=side)
        t = report[key]
        print(f"\nper {side}x{side} image: nuclei {t['nuclei_auto_s']:.2f} s (F1 {t['nuclei_auto_f1']:.3f}; "
              f"fixed settings {t['nuclei_fixed_s']:.2f} s), "
              f"colonies {t['colonies_auto_s']:.2f} s (fixed {t['colonies_fixed_s']:.2f} s)")
        # Against the time (a full-size image only): "x better" is the target over ours, met from 1.
        summary_rows.append(row(f"nuclei: default analysis per {side}x{side} image", "defaults (measured sizes)",
                                t["nuclei_auto_s"], "issue target", NUCLEI_SECONDS_TARGET, "s",
                                higher_is_better=False, target=None if args.smoke else 1.0,
                                note=f"segmentation and table, best of 2; F1 {t['nuclei_auto_f1']:.3f} at IoU 0.5 "
                                     "on that image"))
        for kind in ("nuclei", "colonies"):
            summary_rows.append(row(f"{kind}: time per {side}x{side} image", "defaults (measured sizes)",
                                    t[f"{kind}_auto_s"], "fixed settings", t[f"{kind}_fixed_s"], "s",
                                    higher_is_better=False, note="what measuring the sizes costs"))
    report["missed_targets"] = failures
    out = write_result("robustness", report, summary_rows, args.out, smoke=args.smoke)
    print("\nmissed targets:" if failures else "\nevery condition meets its target", *failures, sep="\n  ")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
