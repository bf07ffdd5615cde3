"""The Great Expectations suite over the U-Net's segmentation volumes, before any training.

Each image/mask volume is summarised as one table row per slice (dtypes, shapes, value ranges, mask values,
foreground fraction); the suite checks that table on the shared runner (:func:`cellops.validation.run_suite`) and
each failure names the volume, its files and slices, what was expected and what was found.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cellops.validation import ValidationReport, explained_failures, gx, plural, run_suite, tagged

IMAGE_DTYPES = ["uint8", "uint16", "float32"]
MASK_DTYPES = ["uint8", "bool"]


@dataclass(frozen=True)
class SegmentationExpectations:
    """Thresholds of the segmentation dataset suite (all from the YAML config).

    Attributes
    ----------
    min_foreground_fraction : float, optional
        Least foreground fraction of each volume.
    max_foreground_fraction : float, optional
        Largest foreground fraction of each volume.
    min_slice_std : float, optional
        Least standard deviation of a slice's pixels (lower: a constant slice).
    min_slices : int, optional
        Least number of slices of each volume.
    """

    min_foreground_fraction: float = 0.005
    max_foreground_fraction: float = 0.5
    min_slice_std: float = 1e-6
    min_slices: int = 1


def _mask_values(mask_slice: np.ndarray) -> list:
    """The distinct values of a mask slice (at most 6 of them, enough to name a non-binary mask)."""
    values = np.unique(mask_slice)
    return values[:6].tolist()


def _mask_is_binary(mask_slice: np.ndarray) -> bool:
    values = set(np.unique(mask_slice).tolist())
    return bool(values <= {0, 1} or values <= {0, 255})


def summarise_volumes(volumes: dict[str, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """One row per slice of every (image, mask) volume, with the figures the expectations check.

    Each column describes one property, so that one fault shows in one column only: a mask one slice short
    fails ``shape_matches`` and nothing else (the slices both volumes have are still checked for binary values
    and foreground).

    Parameters
    ----------
    volumes : dict of str to tuple of np.ndarray
        Named (image, mask) volumes, (Z, Y, X).

    Returns
    -------
    pd.DataFrame
        One row per slice: ``volume``, ``slice``, ``shape_matches`` and the figures of the other expectations.

    Examples
    --------
    >>> img = np.random.default_rng(0).integers(0, 255, (2, 8, 8), dtype=np.uint8)
    >>> msk = np.zeros((2, 8, 8), np.uint8); msk[:, :2] = 255
    >>> summarise_volumes({"training": (img, msk)})[["volume", "slice", "shape_matches"]].values.tolist()
    [['training', 0, True], ['training', 1, True]]
    """
    rows = []
    for name, (image, mask) in volumes.items():
        shape_matches = image.shape == mask.shape
        volume_fg = float((mask > 0).mean()) if mask.size else float("nan")
        image_slices = image if image.ndim >= 3 else image[None]
        mask_slices = mask if mask.ndim >= 3 else mask[None]
        for z in range(len(image_slices)):
            image_slice = image_slices[z].astype(np.float64)
            has_mask = z < len(mask_slices)
            rows.append(
                {
                    "volume": name,
                    "slice": z,
                    "ndim": image.ndim,
                    "image_shape": "x".join(map(str, image.shape)),
                    "mask_shape": "x".join(map(str, mask.shape)),
                    "shape_matches": shape_matches,
                    "image_dtype": image.dtype.name,
                    # Only supported dtypes take part in the same-dtype check: an unsupported one is its own fault.
                    "supported_image_dtype": image.dtype.name if image.dtype.name in IMAGE_DTYPES else None,
                    "mask_dtype": mask.dtype.name,
                    "image_finite": bool(np.isfinite(image_slice).all()),
                    "image_std": float(np.nanstd(image_slice)) if image_slice.size else 0.0,
                    # None where the mask has no such slice: GX skips nulls, shape_matches names the fault.
                    "mask_is_binary": _mask_is_binary(mask_slices[z]) if has_mask else None,
                    "mask_values": ",".join(map(str, _mask_values(mask_slices[z]))) if has_mask else None,
                    "slice_foreground_fraction": float((mask_slices[z] > 0).mean()) if has_mask else None,
                    "volume_foreground_fraction": volume_fg,
                }
            )
    return pd.DataFrame(rows)


def _segmentation_suite(expect: SegmentationExpectations) -> list:
    e = gx.expectations
    return tagged([
        ("slices", e.ExpectTableRowCountToBeBetween(min_value=expect.min_slices)),
        ("ndim", e.ExpectColumnValuesToBeInSet(column="ndim", value_set=[3])),
        ("shape_matches", e.ExpectColumnValuesToBeInSet(column="shape_matches", value_set=[True])),
        ("image_dtype", e.ExpectColumnValuesToBeInSet(column="image_dtype", value_set=IMAGE_DTYPES)),
        ("same_image_dtype", e.ExpectColumnUniqueValueCountToBeBetween(column="supported_image_dtype", max_value=1)),
        ("mask_dtype", e.ExpectColumnValuesToBeInSet(column="mask_dtype", value_set=MASK_DTYPES)),
        ("mask_is_binary", e.ExpectColumnValuesToBeInSet(column="mask_is_binary", value_set=[True])),
        ("image_finite", e.ExpectColumnValuesToBeInSet(column="image_finite", value_set=[True])),
        ("image_std", e.ExpectColumnValuesToBeBetween(column="image_std", min_value=expect.min_slice_std,
                                                      strict_min=True)),
        ("foreground", e.ExpectColumnValuesToBeBetween(
            column="volume_foreground_fraction",
            min_value=expect.min_foreground_fraction,
            max_value=expect.max_foreground_fraction,
        )),
    ])


def _explain_segmentation(check: str, table: pd.DataFrame, expect: SegmentationExpectations,
                          sources: dict[str, str]) -> str:
    """Plain words for a failed check of the segmentation suite: the volume (and its files) and the slices at
    fault, what was expected and what was found."""

    def _source(volume: str) -> str:
        return f"volume {volume!r}" + (f" ({sources[volume]})" if volume in sources else "")

    def _per_volume(rows: pd.DataFrame, describe) -> str:
        return "; ".join(f"{_source(v)}: {describe(g.iloc[0])}" for v, g in rows.groupby("volume", sort=False))

    def _slices(rows: pd.DataFrame, limit: int = 8) -> str:
        parts = []
        for volume, group in rows.groupby("volume", sort=False):
            zs = group["slice"].tolist()
            shown = ", ".join(map(str, zs[:limit])) + (f" and {len(zs) - limit} more" if len(zs) > limit else "")
            parts.append(f"{_source(volume)} slice{'s' if len(zs) > 1 else ''} {shown}")
        return "; ".join(parts)

    if check == "slices":
        return f"{plural(len(table), 'slice')} in all volumes, at least {expect.min_slices} expected"
    if check == "ndim":
        bad = table[table["ndim"] != 3]
        return _per_volume(bad, lambda r: f"expected a 3-D (Z, Y, X) stack, found {r['ndim']}-D of shape "
                                          f"{r['image_shape']}")
    if check == "shape_matches":
        bad = table[~table["shape_matches"]]
        return _per_volume(bad, lambda r: f"image is {r['image_shape']} but its mask is {r['mask_shape']}; "
                                          "expected the same shape")
    if check == "image_dtype":
        bad = table[~table["image_dtype"].isin(IMAGE_DTYPES)]
        return _per_volume(bad, lambda r: f"image dtype {r['image_dtype']}, expected one of {IMAGE_DTYPES}")
    if check == "same_image_dtype":
        return ("volumes differ in image dtype, so their grey levels would be scaled differently: "
                + ", ".join(f"{_source(v)} {d}" for v, d in
                             table.groupby("volume", sort=False)["image_dtype"].first().items()))
    if check == "mask_dtype":
        bad = table[~table["mask_dtype"].isin(MASK_DTYPES)]
        return _per_volume(bad, lambda r: f"mask dtype {r['mask_dtype']}, expected one of {MASK_DTYPES}")
    if check == "mask_is_binary":
        bad = table[table["mask_is_binary"].eq(False)]
        first = bad.iloc[0]
        return (f"mask values are not binary in {_slices(bad)}: expected {{0, 1}} or {{0, 255}}, found "
                f"{{{first['mask_values'].replace(',', ', ')}}} in slice {first['slice']}")
    if check == "image_finite":
        return f"NaN or infinite pixels in {_slices(table[~table['image_finite']])}; expected finite values"
    if check == "image_std":
        bad = table[~(table["image_std"] > expect.min_slice_std)]
        return (f"blank (constant) image in {_slices(bad)}: standard deviation {bad['image_std'].iloc[0]:.3g}, "
                f"expected above {expect.min_slice_std}")
    if check == "foreground":
        fraction = table["volume_foreground_fraction"]
        bad = table[~fraction.between(expect.min_foreground_fraction, expect.max_foreground_fraction)]
        return _per_volume(bad, lambda r: f"mask foreground is {r['volume_foreground_fraction']:.2%} of the volume, "
                                          f"expected {expect.min_foreground_fraction:.2%} to "
                                          f"{expect.max_foreground_fraction:.2%}")
    raise KeyError(check)


def validate_segmentation_dataset(
    volumes: dict[str, tuple[np.ndarray, np.ndarray]],
    expectations: SegmentationExpectations = SegmentationExpectations(),
    data_docs_dir: Path | None = None,
    sources: dict[str, str] | None = None,
) -> ValidationReport:
    """Run the segmentation dataset suite on named (image, mask) volumes.

    The suite expects: at least ``min_slices`` slices; 3-D stacks; each mask the shape of its image; image
    dtypes in :data:`IMAGE_DTYPES`, the same in every volume; mask dtypes in :data:`MASK_DTYPES`; binary mask
    values ({0, 1} or {0, 255}); finite pixels; no constant slice; each volume's foreground fraction within
    bounds.

    Parameters
    ----------
    volumes : dict of str to tuple of np.ndarray
        E.g. ``{"training": (image, mask), "testing": (image, mask)}``, (Z, Y, X) arrays.
    expectations : SegmentationExpectations, optional
        Thresholds of the suite.
    data_docs_dir : Path or None, optional
        Where to build Great Expectations' HTML Data Docs; none are built when omitted.
    sources : dict of str to str, optional
        The files each volume came from, quoted in the failures (e.g. ``{"training": "training.tif"}``).

    Returns
    -------
    ValidationReport
        Each line of its ``failures`` names the failed expectation, the volume (and slices), what was expected
        and what was found.
    """
    table = summarise_volumes(volumes)
    report = run_suite(table, "segmentation_dataset", _segmentation_suite(expectations), data_docs_dir)
    report.failures = explained_failures(
        report, lambda check: _explain_segmentation(check, table, expectations, sources or {}))
    return report
