"""The one tiler: overlaps in pixels for every family, tiles covering the axis evenly, and overlaps registered as
a fraction of the tile read as the pixels that lay the same tiles."""

import numpy as np
import pytest

from cellops.inference import plan_tiles, tile_count
from cellops.tiling import overlap_from_fraction, tile_starts
from cellops.unet.specs import UNetServing


@pytest.mark.parametrize("tile,overlap", [(64, 0), (64, 16), (128, 32), (512, 128), (512, 256), (32, 31)])
def test_tiles_cover_the_axis_with_at_least_the_overlap(tile, overlap):
    for length in range(1, 3 * tile + 7, 5):
        starts = tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts == sorted(set(starts))
        assert starts[-1] == max(0, length - tile)  # the last tile ends flush with the axis
        gaps = np.diff(starts)
        assert (tile - gaps >= overlap).all()  # every pair of neighbours shares at least the overlap
        if len(starts) > 2:
            assert gaps.max() - gaps.min() <= 1  # spread evenly
            assert (length - tile) / (len(starts) - 2) > tile - overlap  # one tile fewer: an overlap too short


@pytest.mark.parametrize("overlap", [-1, 64, 100, 0.25, 8.5])
def test_overlaps_that_are_no_pixel_count_are_refused(overlap):
    with pytest.raises(ValueError, match="whole number of pixels"):
        tile_starts(200, 64, overlap)


def test_a_fraction_lays_the_tiles_its_stride_laid():
    # The fraction form stepped int(tile * (1 - fraction)) pixels (at least 1): the pixels must give those tiles.
    def by_stride(length, tile, stride):
        if length <= tile:
            return [0]
        n = int(np.ceil((length - tile) / stride)) + 1
        return [int(round(i * (length - tile) / (n - 1))) for i in range(n)]

    for tile in (16, 64, 100, 128, 512):
        for fraction in (0.0, 0.1, 0.25, 0.3, 0.325, 0.5, 0.75, 0.99):
            overlap = overlap_from_fraction(fraction, tile)
            stride = max(1, int(tile * (1.0 - fraction)))
            assert overlap == tile - stride
            for length in range(tile - 3, 6 * tile, 7):
                assert tile_starts(length, tile, overlap) == by_stride(length, tile, stride)
    assert overlap_from_fraction(0.25, 128) == 32 == round(0.25 * 128)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        overlap_from_fraction(1.0, 64)


def test_u_net_plan_and_tile_count_use_the_pixel_overlap():
    settings = UNetServing.from_dict({"tile_size": 64, "tile_overlap": 0.25, "batch_size": 2, "threshold": 0.5})
    assert settings.tile_overlap == 16 and settings.as_dict()["tile_overlap"] == 16
    plan = plan_tiles(150, 100, 64, settings.tile_overlap, np.ones((64, 64), np.float32))
    rows, cols = tile_starts(150, 64, 16), tile_starts(100, 64, 16)
    assert plan.starts == [(y, x) for y in rows for x in cols]
    assert tile_count((3, 150, 100), 64, 16) == 3 * len(rows) * len(cols)
