"""Colony analysis throughput on 2048x2048 images: cellops (OpenCV) against the same steps in scikit-image and
scipy, in the same run, interleaved, on the same images; first with the defaults (sizes measured, touching
colonies split along bright seams, edges refined), then with the fixed 10x settings of the earlier releases
(``FIXED_10X``: blur, Canny, dilation, hole filling, erosion, area filter only).

The scikit-image peer (:func:`skimage_colonies`) runs :func:`cellops.classical.colonies.measure_colonies`'s steps
with scikit-image's and scipy's functions: Gaussian blur, Sobel gradients and Otsu's Canny thresholds, Canny,
dilation, hole filling, erosion, labelling and the area filter; with the defaults also the scale-free first
detection that measures the colony width (distance transform, area-weighted median), the bright-seam search (the
same line filters by scipy FFT, the same least-cost extension), the split (coarse grid, Euclidean distance
transform, Gaussian smoothing, h-maxima, watershed), the edge refinement (gradient-magnitude watershed in the
ring, grey erosion/dilation of the labels, binary opening); then per colony the same measures (area, centroid,
perimeter, upright box, minimum-area rotated box, convex hull and solidity, Hu moments, circularity, equivalent
diameter). Where the two libraries differ (scikit-image's Canny thresholds its L2 gradient magnitude, OpenCV's the
L1 one; its first-pass width uses the exact distance transform, OpenCV's a 5x5 chamfer) a colony can come out
split or merged differently, so with the defaults the colony counts must agree within 5 % per image (at least
exactly for fewer than 20 colonies); with the fixed settings exactly. The script stops otherwise, before any
figure is written, so a speed-up bought by doing less cannot be reported.

    python benchmarks/colonies.py [--images 2] [--size 2048] [--repeats 2] [--smoke] [--out PATH]

The figures and the summary rows go to outputs/benchmarks/colonies.json (or --out): the defaults against
scikit-image (target 10x), the defaults' images/s against the issue's 4 images/s (0.25 s per 2048x2048 image),
and the fixed settings against scikit-image. ``--smoke``: one 256x256 image, one repeat: checks that the script
runs (a few seconds).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull
from skimage import feature, filters, measure, morphology, segmentation

from benchlib import row, write_result
from cellops.classical.colonies import (AUTO, FIXED_10X, REFERENCE_DIAMETER, ColonyParams, _extend_seam,
                                        _line_kernels, _line_scores, _SEAM_MAX_SOLIDITY, _SEAM_SCORE,
                                        _SEAM_SINGLE_AREA, measure_colonies)
from cellops.classical.common import to_uint8_gray
from cellops.classical.scale import weighted_median
from cellops.synthetic.colonies import generate_colony_image

#: The issue's target for the defaults: 0.25 s per 2048 x 2048 image.
TARGET_IMAGES_PER_S = 4.0
#: Colony counts of the two implementations of the defaults may differ by this fraction per image.
COUNT_TOLERANCE = 0.05


def ellipse(size: int) -> np.ndarray:
    """The elliptical structuring element OpenCV's ``getStructuringElement(MORPH_ELLIPSE, (size, size))`` makes
    (each row as wide as the rounded ellipse), as a boolean footprint for scikit-image.

    >>> ellipse(5).astype(int).tolist()[0], ellipse(5).astype(int).tolist()[2]
    ([0, 0, 1, 0, 0], [1, 1, 1, 1, 1])
    """
    r = size // 2
    footprint = np.zeros((size, size), bool)
    for i in range(size):
        dy = i - r
        dx = int(np.floor(r * np.sqrt(max(r * r - dy * dy, 0) / (r * r)) + 0.5)) if r else 0
        footprint[i, max(r - dx, 0):min(r + dx + 1, size)] = True
    return footprint


def _edge_regions(gray: np.ndarray, sigma: float, low: float, high: float, kernel_size: int, dilate: int,
                  erode: int) -> np.ndarray:
    blurred = filters.gaussian(gray.astype(np.float64), sigma=sigma, preserve_range=True) if sigma > 0 else gray
    edges = feature.canny(blurred, sigma=0.0, low_threshold=low, high_threshold=high)
    footprint = ellipse(kernel_size)
    grown = edges
    for _ in range(dilate):
        grown = morphology.binary_dilation(grown, footprint)
    shrunk = ndimage.binary_fill_holes(grown)
    for _ in range(erode):
        shrunk = morphology.binary_erosion(shrunk, footprint)
    return shrunk


def _thresholds(gray: np.ndarray, sigma: float) -> tuple[float, float]:
    """Otsu's threshold of the gradient magnitude scikit-image's Canny thresholds (L2), and half of it."""
    blurred = filters.gaussian(gray.astype(np.float64), sigma=sigma, preserve_range=True) if sigma > 0 else gray
    magnitude = np.hypot(ndimage.sobel(blurred, axis=0), ndimage.sobel(blurred, axis=1))
    high = float(filters.threshold_otsu(magnitude[::2, ::2]))
    return 0.5 * high, high


def _settings(gray: np.ndarray, params: ColonyParams) -> dict:
    if params.colony_diameter_px == AUTO:
        low, high = _thresholds(gray, 1.0)
        labels = measure.label(_edge_regions(gray, 1.0, low, high, 5, 1, 2), connectivity=2)
        areas = np.bincount(labels.ravel())[1:].astype(np.float64)
        distance = ndimage.distance_transform_edt(labels > 0)
        widths = 2 * np.asarray(ndimage.maximum(distance, labels, np.arange(1, len(areas) + 1)), float)
        big = areas >= 50
        diameter = weighted_median(widths[big], areas[big]) if big.any() else 0.0
        if diameter < params.min_colony_diameter_px:
            diameter = REFERENCE_DIAMETER
    else:
        diameter = float(params.colony_diameter_px)
    scale = diameter / REFERENCE_DIAMETER
    blur = float(np.clip(2.0 * scale, 0.8, 3.0)) if params.blur_sigma == AUTO else float(params.blur_sigma)
    low, high = _thresholds(gray, blur) if AUTO in (params.canny_low, params.canny_high) else (0.0, 0.0)
    return {"diameter": diameter, "blur": blur,
            "low": low if params.canny_low == AUTO else float(params.canny_low),
            "high": high if params.canny_high == AUTO else float(params.canny_high),
            "dilate": max(1, round(2 * scale)) if params.dilate_iterations == AUTO else int(params.dilate_iterations),
            "erode": max(1, round(5 * scale)) if params.erode_iterations == AUTO else int(params.erode_iterations),
            "min_area": 0.2 * np.pi / 4 * diameter**2 if params.min_area == AUTO else float(params.min_area)}


def _seams(gray: np.ndarray, regions: np.ndarray, radius: float, min_area: float) -> np.ndarray:
    """The bright-seam search of :func:`cellops.classical.colonies.bright_seams` with scikit-image's labelling,
    regionprops and morphology (the line filters and the least-cost extension are scipy/scikit-image already)."""
    seams = np.zeros(regions.shape, bool)
    mask = regions > 0
    single = _SEAM_SINGLE_AREA * np.pi * radius**2
    candidates = [r for r in measure.regionprops(regions) if r.area >= 2 * min_area
                  and (r.area > single or r.solidity < _SEAM_MAX_SOLIDITY)]
    if not candidates:
        return seams
    margin = max(3, int(round(0.05 * radius)))
    core = morphology.binary_erosion(np.pad(mask, margin, constant_values=True), morphology.disk(margin))
    core = core[margin:-margin, margin:-margin]
    kernels = _line_kernels(length=float(np.clip(0.8 * radius, 15, 41)),
                            width=float(np.clip(0.012 * radius, 0.5, 1.5)))
    spectra: dict = {}
    boxes = [tuple(slice(a, b) for a, b in zip(r.bbox[:2], r.bbox[2:])) for r in candidates]
    scores = [_line_scores(gray, box, kernels, spectra) for box in boxes]
    inside = np.concatenate([s[(regions[b] == r.label) & core[b]] for s, b, r in zip(scores, boxes, candidates)])
    if inside.size < 100:
        return seams
    low, centre, high = np.percentile(inside, [25, 50, 75])
    spread = max(float(high - low) / 1.349, 1e-6)
    for region, box, score in zip(candidates, boxes, scores):
        own = regions[box] == region.label
        z = (score - centre) / spread
        for piece in measure.regionprops(measure.label((z > _SEAM_SCORE) & own & core[box], connectivity=2)):
            top, left, bottom, right = piece.bbox
            if max(bottom - top, right - left) < 0.2 * radius:
                continue
            found = np.zeros(own.shape, bool)
            found[tuple(piece.coords.T)] = True
            for attempt in range(2):
                rest = own & ~morphology.binary_dilation(found, morphology.disk(margin + 1))
                if (np.bincount(measure.label(rest, connectivity=2).ravel())[1:] >= min_area).sum() >= 2:
                    seams[box] |= morphology.binary_dilation(found, morphology.disk(1)) & own
                    break
                if attempt == 0:
                    near = (slice(max(0, top - int(radius)), bottom + int(radius)),
                            slice(max(0, left - int(radius)), right + int(radius)))
                    extended = _extend_seam(z[near], own[near], core[box][near], found[near], radius)
                    if extended is None:
                        break
                    found = np.zeros_like(found)
                    found[near] = extended
    return seams


def _split(mask: np.ndarray, radius: float, seams: np.ndarray) -> np.ndarray:
    factor = max(1, int(radius // 12))
    rows, cols = -(-mask.shape[0] // factor), -(-mask.shape[1] // factor)

    def coarse_grid(full: np.ndarray) -> np.ndarray:
        padded = np.zeros((rows * factor, cols * factor), bool)
        padded[:full.shape[0], :full.shape[1]] = full
        return padded.reshape(rows, factor, cols, factor).any(axis=(1, 3))

    small = coarse_grid(mask)
    cut = small & ~coarse_grid(seams)
    distance = ndimage.gaussian_filter(ndimage.distance_transform_edt(cut) * factor, max(1.0, 0.05 * radius) / factor)
    markers = measure.label(morphology.h_maxima(distance, max(1.0, 0.04 * radius)))
    coarse = segmentation.watershed(-distance, markers, mask=small)
    labels = np.repeat(np.repeat(coarse, factor, axis=0), factor, axis=1)[:mask.shape[0], :mask.shape[1]]
    return np.where(mask, labels, 0)


def _refine(gray: np.ndarray, labels: np.ndarray, inner: int, outer: int, opening: int) -> np.ndarray:
    smooth = filters.gaussian(gray.astype(np.float64), sigma=1.0, preserve_range=True)
    landscape = np.rint(np.hypot(ndimage.sobel(smooth, axis=1), ndimage.sobel(smooth, axis=0)) * 4)
    mask = labels > 0
    beyond = labels.max() + 1
    settled = morphology.erosion(np.pad(labels, inner, constant_values=beyond), ellipse(2 * inner + 1))[
        inner:-inner, inner:-inner] == morphology.dilation(labels, ellipse(2 * inner + 1))
    band = 3 * inner
    nearest_other = morphology.erosion(np.pad(np.where(mask, labels, beyond), band, constant_values=beyond),
                                       ellipse(2 * band + 1))[band:-band, band:-band]
    interface = mask & (nearest_other < beyond) & (nearest_other != morphology.dilation(labels, ellipse(2 * band + 1)))
    settled &= ~interface
    landscape[interface] = np.rint(smooth[interface] * 4)
    near = morphology.binary_dilation(mask, ellipse(2 * outer + 1))
    markers = np.where(settled & mask, labels, 0)
    markers[~near] = beyond
    ring = morphology.binary_dilation(markers == 0, ellipse(3))
    refined = np.where(ring, segmentation.watershed(landscape, markers, mask=ring), markers)
    refined[refined == beyond] = 0
    refined[~morphology.binary_opening(refined > 0, ellipse(2 * opening + 1))] = 0
    return refined


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
    """The steps of :func:`cellops.classical.colonies.measure_colonies` with ``params``, in scikit-image and scipy:
    one dict of measures per colony."""
    gray = to_uint8_gray(image)
    s = _settings(gray, params)
    regions = measure.label(_edge_regions(gray, s["blur"], s["low"], s["high"], params.kernel_size, s["dilate"],
                                          s["erode"]), connectivity=2)
    areas = np.bincount(regions.ravel())
    big = areas > int(s["min_area"] * 0.5)
    big[0] = False
    regions = np.where(big[regions], regions, 0)
    radius = s["diameter"] / 2
    if params.split_touching:
        labels = _split(regions > 0, radius, _seams(gray, regions, radius, 0.5 * s["min_area"]))
    else:
        labels = regions
    if params.refine_edges and labels.max():
        labels = _refine(gray, labels, max(2, int(round(0.06 * radius))), max(3, int(round(0.2 * radius))),
                         max(2, int(round(0.25 * radius))))
    rows = []
    for region in measure.regionprops(labels):
        if region.area < s["min_area"]:
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


def _check_counts(label: str, ours: list[int], peer: list[int], tolerance: float) -> None:
    """Stop unless the two count the same colonies per image, within ``tolerance`` (a fraction, rounded down)."""
    if any(abs(a - b) > int(tolerance * max(a, b)) for a, b in zip(ours, peer)):
        raise SystemExit(f"{label}: colonies per image: cellops {ours}, scikit-image {peer}: the two do not run the "
                         "same analysis, the comparison is void")


def compare(images: list[np.ndarray], params: ColonyParams, repeats: int) -> dict:
    """Best time of cellops and of the scikit-image peer over all ``images``, interleaved (cellops, peer, cellops,
    ...), and the colonies each found per image."""
    timings = {"cellops": np.inf, "skimage": np.inf}
    counts: dict[str, list[int]] = {}
    runs = {"cellops": lambda: [len(measure_colonies(image, params).contours) for image in images],
            "skimage": lambda: [len(skimage_colonies(image, params)) for image in images]}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            counts[name] = run()
            timings[name] = min(timings[name], time.perf_counter() - start)
    n = len(images)
    return {"cellops_s_per_image": timings["cellops"] / n, "skimage_s_per_image": timings["skimage"] / n,
            "cellops_images_per_s": n / timings["cellops"], "skimage_images_per_s": n / timings["skimage"],
            "speedup": timings["skimage"] / timings["cellops"],
            "colonies_cellops": counts["cellops"], "colonies_skimage": counts["skimage"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="the JSON (default outputs/benchmarks/colonies.json)")
    parser.add_argument("--smoke", action="store_true", help="one small image, one repeat: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.images, args.size, args.repeats = 1, 256, 1
    # The timing image of benchmarks/robustness.py (10x, colonies, single cells and debris at the same density), at
    # least one or two colonies in a smoke-sized one.
    area = (args.size / 2048) ** 2
    images = [generate_colony_image((args.size, args.size), seed=i,
                                    n_colonies=(max(1, int(48 * area)), max(2, int(112 * area))),
                                    n_single_cells=int(400 * area), n_debris=int(960 * area)).image
              for i in range(args.images)]
    defaults = compare(images, ColonyParams(), args.repeats)
    _check_counts("defaults", defaults["colonies_cellops"], defaults["colonies_skimage"], COUNT_TOLERANCE)
    fixed = compare(images, FIXED_10X, args.repeats)
    _check_counts("FIXED_10X", fixed["colonies_cellops"], fixed["colonies_skimage"], 0.0)
    size = f"{args.images} image(s) of {args.size}x{args.size}"
    result = {"images": args.images, "size": args.size, "repeats": args.repeats, **defaults, "fixed_10x": fixed,
              "count_tolerance": COUNT_TOLERANCE, "target_images_per_s": TARGET_IMAGES_PER_S}
    summary = [
        row("colony analysis, defaults (sizes measured, split, refined)", "cellops (OpenCV)",
            defaults["cellops_images_per_s"], "scikit-image + scipy, same steps", defaults["skimage_images_per_s"],
            "images/s", target=10.0,
            note=f"{size}; colonies {sum(defaults['colonies_cellops'])} vs {sum(defaults['colonies_skimage'])} "
                 f"(within {COUNT_TOLERANCE:.0%} per image)"),
        row(f"colony analysis, defaults, time per {args.size}x{args.size} image", "cellops (OpenCV)",
            defaults["cellops_images_per_s"], "issue target (0.25 s per 2048x2048 image)", TARGET_IMAGES_PER_S,
            "images/s", target=1.0 if args.size == 2048 else None,
            note=f"{defaults['cellops_s_per_image']:.3f} s per image"),
        row("colony analysis, FIXED_10X settings", "cellops (OpenCV)", fixed["cellops_images_per_s"],
            "scikit-image + scipy, same steps", fixed["skimage_images_per_s"], "images/s",
            note=f"{size}; colonies {sum(fixed['colonies_cellops'])} vs {sum(fixed['colonies_skimage'])}"),
    ]
    out = write_result("colonies", result, summary, args.out, smoke=args.smoke)
    print(size)
    for name, figures in (("defaults", defaults), ("FIXED_10X", fixed)):
        print(f"  {name}: cellops {figures['cellops_s_per_image']:.3f} s/image, scikit-image "
              f"{figures['skimage_s_per_image']:.3f} s/image, {figures['speedup']:.1f}x; colonies "
              f"{figures['colonies_cellops']} vs {figures['colonies_skimage']}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
