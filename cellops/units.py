"""Physical units: pixel sizes checked once, and tables that carry micrometres beside pixels.

A microscope file states its pixel size in its metadata (:func:`cellops.microscopy.open_image` reads it); the
analyses convert the sizes of their configs (given in µm) with it and report every size in both units. Without a
pixel size they work in pixels and their tables say so (an empty ``pixel_size_um``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from cellops.errors import ImageInputError

#: Largest pixel size accepted, in µm (1 mm): anything larger is a unit mistake (metres, or pixels per unit).
MAX_PIXEL_SIZE_UM = 1000.0


def check_pixel_size_um(value: object, *, source: str = "pixel size") -> float:
    """``value`` as a pixel size in µm, or an :class:`~cellops.errors.ImageInputError` naming ``source``.

    A pixel size must be a finite number above 0 and at most :data:`MAX_PIXEL_SIZE_UM` (1 mm).

    Parameters
    ----------
    value : object
        The pixel size (a number, or a numeric string).
    source : str
        What the value came from (a file and its metadata field, a config key), for the message.

    Returns
    -------
    float
        The pixel size in µm.

    Examples
    --------
    >>> check_pixel_size_um(0.325)
    0.325
    >>> check_pixel_size_um(0, source="a.tif PhysicalSizeX")
    Traceback (most recent call last):
    cellops.errors.ImageInputError: a.tif PhysicalSizeX: a pixel size must be above 0 and at most 1 mm (1000 µm), got 0
    """
    try:
        size = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ImageInputError(f"{source}: a pixel size must be a number of µm, got {value!r}") from None
    if not math.isfinite(size) or size <= 0 or size > MAX_PIXEL_SIZE_UM:
        raise ImageInputError(f"{source}: a pixel size must be above 0 and at most 1 mm ({MAX_PIXEL_SIZE_UM:g} µm), "
                              f"got {value!r}")
    return size


def um_to_px(length_um: float, pixel_size_um: float) -> float:
    """A length in µm as pixels.

    >>> um_to_px(12.0, 0.4)
    30.0
    """
    return float(length_um) / check_pixel_size_um(pixel_size_um)


def add_physical_columns(table: pd.DataFrame, pixel_size_um: float | None, *, lengths: Iterable[str] = (),
                         areas: Iterable[str] = ()) -> pd.DataFrame:
    """``table`` with a ``<name>_um`` column after each length and a ``<name>_um2`` column after each area (in
    pixels), and a ``pixel_size_um`` column; without a pixel size those columns are empty (NaN), so tables of
    files with and without one still line up, and the empty ``pixel_size_um`` says the sizes are in pixels.

    Parameters
    ----------
    table : pd.DataFrame
        One row per object, sizes in pixels.
    pixel_size_um : float or None
        The pixel size the sizes were measured at.
    lengths, areas : iterable of str
        The columns in pixels and in square pixels (missing ones are skipped).

    Returns
    -------
    pd.DataFrame
        A new table.

    Examples
    --------
    >>> table = add_physical_columns(pd.DataFrame({"area": [100.0], "feret_max": [20.0]}), 0.5,
    ...                              lengths=["feret_max"], areas=["area"])
    >>> list(table.columns), float(table.loc[0, "area_um2"]), float(table.loc[0, "feret_max_um"])
    (['area', 'area_um2', 'feret_max', 'feret_max_um', 'pixel_size_um'], 25.0, 10.0)
    >>> bool(add_physical_columns(pd.DataFrame({"area": [1.0]}), None, areas=["area"])["area_um2"].isna().all())
    True
    """
    scale = np.nan if pixel_size_um is None else check_pixel_size_um(pixel_size_um)
    converted = {**{name: (f"{name}_um", scale) for name in lengths},
                 **{name: (f"{name}_um2", scale * scale) for name in areas}}
    columns: dict[str, pd.Series] = {}
    for name in table.columns:
        columns[name] = table[name]
        if name in converted:
            new_name, factor = converted[name]
            columns[new_name] = table[name].astype(float) * factor
    out = pd.DataFrame(columns, index=table.index)
    out["pixel_size_um"] = scale
    return out


#: Sizes in pixels in the tables of the analyses (nuclei, colonies, cells, instances), and in pixels squared: each gets a
#: µm (µm²) column beside it (:func:`with_physical_sizes`).
LENGTH_COLUMNS = ("perimeter", "major_axis", "minor_axis", "feret_max", "feret_min", "equivalent_diameter",
                  "width", "height", "box_width", "box_height", "rotated_width", "rotated_height", "hull_perimeter",
                  "colony_width_px", "segmented_diameter_px")
AREA_COLUMNS = ("area", "convex_area", "hull_area", "box_area", "rotated_box_area")


def with_physical_sizes(table: pd.DataFrame, pixel_size_um: float | None) -> pd.DataFrame:
    """:func:`add_physical_columns` for every column of :data:`LENGTH_COLUMNS` and :data:`AREA_COLUMNS` that
    ``table`` has.

    >>> table = with_physical_sizes(pd.DataFrame({"label": [1], "area": [40.0]}), 0.5)
    >>> list(table.columns), float(table.loc[0, "area_um2"])
    (['label', 'area', 'area_um2', 'pixel_size_um'], 10.0)
    """
    return add_physical_columns(table, pixel_size_um, lengths=[c for c in LENGTH_COLUMNS if c in table],
                                areas=[c for c in AREA_COLUMNS if c in table])
