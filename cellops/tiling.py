"""Where the tiles of an image larger than a model's input lie: one tiler for every family.

The U-Net's sliding window (:func:`cellops.inference.sliding_window_predict`) and the Mask R-CNN's tiled
prediction (:func:`cellops.maskrcnn.predict.predict_tiled`) both lay their tiles with :func:`tile_starts`, and
both give the overlap of neighbouring tiles in pixels.
"""

from __future__ import annotations


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of side ``tile`` covering an axis of ``length`` pixels, neighbours sharing at least
    ``overlap`` pixels.

    The first tile starts at 0 and the last ends flush with the axis; the fewest tiles that keep every overlap at
    least ``overlap`` are spread evenly between them, so the overlaps are all about the same size.

    Parameters
    ----------
    length : int
        Pixels along the axis.
    tile : int
        Side of a tile in pixels.
    overlap : int
        Least number of pixels two neighbouring tiles share, in ``[0, tile)``.

    Returns
    -------
    list of int
        Offsets in increasing order; ``[0]`` when one tile covers the axis.

    Examples
    --------
    >>> tile_starts(1000, 512, 128)
    [0, 244, 488]
    >>> tile_starts(100, 64, 16)
    [0, 36]
    >>> tile_starts(64, 64, 16)
    [0]
    """
    if overlap != int(overlap) or not 0 <= overlap < tile:  # a fraction of the tile is not a pixel count
        raise ValueError(f"overlap must be a whole number of pixels in [0, tile {tile}), got {overlap}")
    overlap = int(overlap)
    if length <= tile:
        return [0]
    step = tile - overlap
    n_steps = -(-(length - tile) // step) + 1
    return [int(round(i * (length - tile) / (n_steps - 1))) for i in range(n_steps)]


def overlap_from_fraction(fraction: float, tile: int) -> int:
    """The overlap in pixels that lays the same tiles as ``fraction`` of a ``tile``-pixel tile, tiles stepping
    ``int(tile * (1 - fraction))`` pixels (at least 1).

    This is ``round(fraction * tile)`` whenever ``fraction * tile`` is a whole number of pixels; for any other
    fraction the step is rounded down, so the overlap is rounded up.

    Parameters
    ----------
    fraction : float
        Share of a tile's side overlapping its neighbour, in ``[0, 1)``.
    tile : int
        Side of a tile in pixels.

    Returns
    -------
    int
        Overlap in pixels, in ``[0, tile)``.

    Examples
    --------
    >>> overlap_from_fraction(0.25, 128), overlap_from_fraction(0.25, 512), overlap_from_fraction(0.325, 100)
    (32, 128, 33)
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"an overlap fraction must lie in [0, 1), got {fraction}")
    return tile - max(1, int(tile * (1.0 - fraction)))
