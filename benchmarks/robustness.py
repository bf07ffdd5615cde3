"""Robustness of the classical analyses with their defaults, and their time per 2048 x 2048 image.

1. The sweep (:mod:`cellops.robustness`): per condition, F1 at IoU 0.5 (nuclei, colonies), median area error
   of matched colonies, median dF/F0 correlation (calcium), against the issue's targets.
2. Time per 2048 x 2048 image: the defaults (sizes and thresholds measured) against the fixed settings of the
   earlier releases (nuclei 30 px / Otsu; colonies 10x numbers, no splitting or edge refinement), in the same
   run. The nuclei image is a 512 x 512 field tiled 4 x 4 (drawing 700 nuclei at full size takes minutes).

    python benchmarks/robustness.py [--images 3] [--only nuclei colonies calcium] [--skip-timing]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from cellops.classical.colonies import FIXED_10X, ColonyParams, measure_colonies
from cellops.classical.nuclei import NucleusParams, nucleus_table, segment_nuclei
from cellops.robustness import SweepSettings, robustness_sweep, summarise_sweep
from cellops.synthetic.colonies import generate_colony_image
from cellops.synthetic.nuclei import generate_nuclei_image

TARGETS = {"nuclei": {"f1": 0.85}, "colonies": {"f1": 0.90, "median_area_error": 0.05},
           "calcium": {"median_r": 0.98}}

FIXED_NUCLEI = NucleusParams(nucleus_diameter_px=30.0, threshold="otsu")


def _best_time(fn, repeats: int) -> float:
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def timing(repeats: int = 2) -> dict[str, float]:
    nuclei = np.tile(generate_nuclei_image("Control", (512, 512), seed=1).image, (4, 4))
    colonies = generate_colony_image((2048, 2048), seed=1, n_colonies=(48, 112), n_single_cells=400, n_debris=960).image
    result = {}
    for name, params in (("nuclei_auto_s", NucleusParams()), ("nuclei_fixed_s", FIXED_NUCLEI)):
        result[name] = _best_time(lambda: nucleus_table(segment_nuclei(nuclei, params), nuclei), repeats)
    for name, params in (("colonies_auto_s", ColonyParams()), ("colonies_fixed_s", FIXED_10X)):
        result[name] = _best_time(lambda: measure_colonies(colonies, params), repeats)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3, help="images per condition")
    parser.add_argument("--only", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks/robustness.json"))
    args = parser.parse_args()
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
            failures += [f"{kind} / {row.condition}: {column} {getattr(row, column):.3f} (target "
                         f"{'<=' if lower_is_better else '>='} {target})" for row in missed.itertuples()]
    if not args.skip_timing:
        report["timing_2048"] = timing()
        t = report["timing_2048"]
        print(f"\nper 2048x2048 image: nuclei {t['nuclei_auto_s']:.2f} s (fixed settings {t['nuclei_fixed_s']:.2f} s), "
              f"colonies {t['colonies_auto_s']:.2f} s (fixed {t['colonies_fixed_s']:.2f} s)")
    report["missed_targets"] = failures
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float))
    print("\nmissed targets:" if failures else "\nevery condition meets its target", *failures, sep="\n  ")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
