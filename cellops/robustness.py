"""Robustness of the classical analyses with their default settings, across imaging conditions.

Each condition is a set of synthetic-generator settings that makes one thing hard (tiny or huge nuclei, dim
nuclei beside bright ones, dense clusters, strong vignetting, defocus, low light, 8-bit, and the harder ones real
fields show: a low dynamic range on a high camera offset, a dim population mixed with a bright one, a blotchy
and vignetted background, dim blurred nuclei of another focal plane beside sharp ones (they count as nuclei),
confluent clusters of small nuclei touching on several sides; small colonies at 4x,
touching colonies, differentiated rims; cells of mixed size, slow drift). The sweep draws a few images per
condition, runs the analysis with the defaults (nothing tuned per condition) and scores it against the
generator's ground truth: F1 at IoU 0.5 for nuclei and colonies (plus the median area error of matched
colonies), the median correlation of recovered and true dF/F0 for calcium.

``benchmarks/robustness.py`` runs the whole sweep; the tests run a small one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cellops.classical.calcium import CalciumParams, measure_calcium_movie
from cellops.classical.colonies import ColonyParams, measure_colonies
from cellops.classical.nuclei import NucleusParams, segment_nuclei
from cellops.metrics import match_instances
from cellops.synthetic.calcium import generate_calcium_movie
from cellops.synthetic.colonies import generate_colony_image
from cellops.synthetic.nuclei import generate_nuclei_image

#: Nuclei: condition -> generator settings (``density`` multiplies the number of nuclei per area).
NUCLEI_CONDITIONS: dict[str, dict] = {
    "default (30 px)": {},
    "diameter 8 px": {"diameter_scale": 8 / 30},
    "diameter 15 px": {"diameter_scale": 0.5},
    "diameter 60 px": {"diameter_scale": 2.0},
    "dim beside bright": {"brightness": (0.08, 1.0)},
    "elongated nuclei (PDA film)": {"group": "Film"},
    "dense touching clusters": {"touching_fraction": 0.85, "density": 1.6},
    "mitotic and flat nuclei": {"mitotic_fraction": 0.12, "flat_fraction": 0.12},
    "strong vignetting": {"illumination_gradient": 0.8},
    "out of focus": {"defocus_sigma": 5.0},
    "low light": {"photons": 40.0, "noise_sigma": 0.04},
    "8-bit": {"bit_depth": 8},
    # Harder than the above, as real images are (issue 27): each one thing a real field does.
    "16-bit, low dynamic range": {"levels_per_unit": 300.0, "offset_levels": 2000.0},
    "dim and bright populations": {"dim_fraction": 0.35, "dim_gain": 0.2},
    "blotchy, vignetted background": {"blotchy_background": 0.35, "vignetting": 0.5},
    "out-of-focus neighbours": {"out_of_focus_fraction": 0.3},
    "confluent clusters (18 px)": {"diameter_scale": 0.6, "confluence": 0.7, "density": 6.0},
}

#: Colonies: condition -> generator settings.
COLONY_CONDITIONS: dict[str, dict] = {
    "default (10x)": {},
    "4x magnification": {"magnification": 4.0},
    "touching colonies": {"gap": (0.0, 3.0)},
    "irregular colonies": {"irregularity": 2.5},
    "differentiated rims": {"differentiated_fraction": 0.7},
    "many single cells and debris": {"clutter": 3.0},
    "4x, touching, cluttered": {"magnification": 4.0, "gap": (0.0, 3.0), "clutter": 3.0},
}

#: Calcium: condition -> generator settings.
CALCIUM_CONDITIONS: dict[str, dict] = {
    "default": {},
    "small cells": {"size_scale": 0.6},
    "large cells": {"size_scale": 1.8},
    "mixed sizes": {"size_spread": 0.45},
    "slow drift": {"drift_px": 6.0, "background_drift": 0.5},
    "low light": {"photons": 300.0},
}


@dataclass(frozen=True)
class SweepSettings:
    """How many images per condition, and the base seed (image ``i`` of every condition uses ``seed + i``)."""

    images_per_condition: int = 3
    seed: int = 100


def _nuclei_score(condition: dict, seed: int, params: NucleusParams) -> dict[str, float]:
    settings = dict(condition)
    scale = settings.get("diameter_scale", 1.0)
    density = settings.pop("density", 1.0)
    group = settings.pop("group", "Control")
    side = int(np.clip(512 * scale, 256, 1024))
    n_nuclei = int(round(45 * (side / 512) ** 2 / scale**2 * density))
    sample = generate_nuclei_image(group, (side, side), seed=seed, n_nuclei=n_nuclei, **settings)
    match = match_instances(sample.labels, segment_nuclei(sample.image, params), iou_threshold=0.5)
    return {"f1": match.f1, "objects": int(sample.labels.max())}


def _colony_score(condition: dict, seed: int, params: ColonyParams) -> dict[str, float]:
    sample = generate_colony_image((512, 512), seed=seed, **condition)
    found = measure_colonies(sample.image, params).labels
    match = match_instances(sample.labels, found, iou_threshold=0.5)
    errors = [abs((found == p).sum() / (sample.labels == t).sum() - 1) for t, p, _ in match.pairs]
    return {"f1": match.f1, "median_area_error": float(np.median(errors)) if errors else float("nan"),
            "objects": int(sample.labels.max())}


def _calcium_score(condition: dict, seed: int, params: CalciumParams) -> dict[str, float]:
    movie = generate_calcium_movie("Film", (256, 256), n_frames=120, seed=seed, **condition)
    result = measure_calcium_movie(movie.movie, params)
    match = match_instances(movie.labels, result.labels, iou_threshold=0.5)
    row = {int(cell): i for i, cell in enumerate(result.cell_ids)}
    correlations = [float(np.corrcoef(result.dff[row[p]], movie.traces[t - 1])[0, 1]) for t, p, _ in match.pairs]
    return {"median_r": float(np.median(correlations)) if correlations else float("nan"),
            "f1": match.f1, "objects": int(movie.labels.max())}


_SCORERS: dict[str, tuple[Callable[[dict, int, object], dict], dict[str, dict], type]] = {
    "nuclei": (_nuclei_score, NUCLEI_CONDITIONS, NucleusParams),
    "colonies": (_colony_score, COLONY_CONDITIONS, ColonyParams),
    "calcium": (_calcium_score, CALCIUM_CONDITIONS, CalciumParams),
}


def robustness_sweep(kind: str, conditions: Iterable[str] | None = None, settings: SweepSettings = SweepSettings(),
                     params: object | None = None) -> pd.DataFrame:
    """Score the ``kind`` analysis (``nuclei``, ``colonies`` or ``calcium``) with ``params`` (the defaults when
    None) on every image of every condition; one row per image.

    Examples
    --------
    >>> table = robustness_sweep("colonies", ["default (10x)"], SweepSettings(images_per_condition=1))
    >>> table.columns.tolist()[:3], bool(table["f1"].iloc[0] > 0.8)
    (['condition', 'image', 'f1'], True)
    """
    if kind not in _SCORERS:
        raise ValueError(f"unknown analysis {kind!r}; expected one of {sorted(_SCORERS)}")
    score, known, params_class = _SCORERS[kind]
    names = list(known) if conditions is None else list(conditions)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown {kind} conditions {unknown}; known: {list(known)}")
    params = params_class() if params is None else params
    rows = [{"condition": name, "image": i, **score(known[name], settings.seed + i, params)}
            for name in names for i in range(settings.images_per_condition)]
    return pd.DataFrame(rows)


def summarise_sweep(table: pd.DataFrame) -> pd.DataFrame:
    """Per condition: the mean F1 over its images, the median area error (colonies) and the median trace
    correlation (calcium), in the sweep's order."""
    columns = [c for c in ("f1", "median_area_error", "median_r", "objects") if c in table]
    aggregations = {c: ("median" if c in ("median_area_error", "median_r") else "mean") for c in columns}
    return table.groupby("condition", sort=False).agg(aggregations).reset_index()
