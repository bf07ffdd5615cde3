"""Colony analysis throughput on 2048x2048 images: cellops (OpenCV) against scikit-image, in the same run,
both with the fixed 10x settings (``FIXED_10X``); ``benchmarks/robustness.py`` times the measured defaults.

The scikit-image peer performs the same steps with scikit-image's own functions: Gaussian blur, Canny,
binary dilation, hole filling, binary erosion, labelling, then per colony the same measures (area,
centroid, perimeter, upright box, minimum-area rotated box, convex hull and solidity, Hu moments,
circularity, equivalent diameter). Both must find the same number of colonies in every image before any figure
is written (the script stops otherwise), so a speed-up bought by doing less cannot be reported.

    python benchmarks/colonies.py [--images 4] [--size 2048] [--repeats 2] [--smoke] [--out PATH]

The figures and the summary row (OpenCV against scikit-image, images/s) go to outputs/benchmarks/colonies.json (or
--out). ``--smoke``: one 256x256 image, one repeat: checks that the script runs (a few seconds).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull
from skimage import feature, filters, measure, morphology

from benchlib import row, write_result
from cellops.classical.colonies import FIXED_10X, ColonyParams, measure_colonies
from cellops.synthetic.colonies import generate_colony_image


def _min_area_rect(hull: np.ndarray) -> tuple[float, float, float]:
    """Rotating calipers over convex-hull points: width, height and angle of the smallest enclosing box."""
    best = (np.inf, 0.0, 0.0, 0.0)
    for a, b in zip(hull, np.roll(hull, -1, axis=0)):
        edge = b - a
        norm = np.hypot(*edge)
        if norm == 0:
            continue
        u = edge / norm
        v = np.array([-u[1], u[0]])
        pu, pv = hull @ u, hull @ v
        w, h = np.ptp(pu), np.ptp(pv)
        if w * h < best[0]:
            best = (w * h, w, h, float(np.degrees(np.arctan2(u[1], u[0]))))
    return best[1], best[2], best[3]


def skimage_colonies(image: np.ndarray, params: ColonyParams) -> list[dict]:
    """The same steps as :func:`cellops.classical.colonies.measure_colonies`, in scikit-image."""
    blurred = filters.gaussian(image, sigma=params.blur_sigma, preserve_range=True)
    edges = feature.canny(blurred, sigma=0.0, low_threshold=params.canny_low, high_threshold=params.canny_high)
    footprint = morphology.disk(params.kernel_size // 2)
    grown = edges
    for _ in range(params.dilate_iterations):
        grown = morphology.dilation(grown, footprint)
    filled = ndimage.binary_fill_holes(grown)
    shrunk = filled
    for _ in range(params.erode_iterations):
        shrunk = morphology.erosion(shrunk, footprint)
    rows = []
    for region in measure.regionprops(measure.label(shrunk)):
        if region.area < params.min_area:
            continue
        coords = region.coords[:, ::-1].astype(float)
        hull_pts = coords[ConvexHull(coords).vertices]
        width, height, angle = _min_area_rect(hull_pts)
        rows.append({
            "area": float(region.area), "centroid": region.centroid, "perimeter": float(region.perimeter),
            "bbox": region.bbox, "rotated": (width, height, angle), "hull_area": float(region.area_convex),
            "solidity": float(region.solidity), "hu": region.moments_hu,
            "circularity": 4 * np.pi * region.area / region.perimeter**2,
            "equivalent_diameter": float(region.equivalent_diameter_area),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="the JSON (default outputs/benchmarks/colonies.json)")
    parser.add_argument("--smoke", action="store_true", help="one small image, one repeat: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.images, args.size, args.repeats = 1, 256, 1
    # A larger field of view at the same magnification as the default data: same colony sizes, more of them (at
    # least one or two, so a smoke-sized image still has colonies to measure).
    area = (args.size / 512) ** 2
    images = [generate_colony_image((args.size, args.size), seed=i,
                                    n_colonies=(max(1, int(3 * area)), max(2, int(7 * area))),
                                    n_single_cells=int(25 * area), n_debris=int(60 * area)).image
              for i in range(args.images)]
    # Fixed numbers, so both sides run the same steps (the defaults measure sizes and split/refine on top).
    params = FIXED_10X

    def run_cellops() -> list[int]:
        return [len(measure_colonies(image, params).contours) for image in images]

    def run_skimage() -> list[int]:
        return [len(skimage_colonies(image, params)) for image in images]

    timings: dict[str, float] = {}
    counts: dict[str, list[int]] = {}
    for _ in range(args.repeats):
        for name, fn in (("cellops", run_cellops), ("skimage", run_skimage)):
            start = time.perf_counter()
            counts[name] = fn()
            timings[name] = min(timings.get(name, np.inf), time.perf_counter() - start)
    if counts["cellops"] != counts["skimage"]:
        raise SystemExit(f"colonies per image: cellops {counts['cellops']}, scikit-image {counts['skimage']}: the "
                         "two do not run the same analysis, the comparison is void")
    result = {
        "images": args.images, "size": args.size,
        "cellops_images_per_s": args.images / timings["cellops"],
        "skimage_images_per_s": args.images / timings["skimage"],
        "speedup": timings["skimage"] / timings["cellops"],
        "colonies_cellops": counts["cellops"], "colonies_skimage": counts["skimage"],
    }
    summary = [row("colony analysis, FIXED_10X settings", "cellops (OpenCV)", result["cellops_images_per_s"],
                   "scikit-image", result["skimage_images_per_s"], "images/s",
                   note=f"{args.images} images of {args.size} px; colonies {sum(counts['cellops'])} vs "
                        f"{sum(counts['skimage'])}")]
    out = write_result("colonies", result, summary, args.out, smoke=args.smoke)
    print(f"{args.images} images of {args.size}x{args.size}")
    print(f"  cellops (OpenCV): {result['cellops_images_per_s']:.2f} images/s, colonies {counts['cellops']}")
    print(f"  scikit-image:     {result['skimage_images_per_s']:.2f} images/s, colonies {counts['skimage']}")
    print(f"  speedup: {result['speedup']:.1f}x; written to {out}")


if __name__ == "__main__":
    main()
