"""The one way a U-Net is applied: settings validated, flips and z-smoothing behave, segment = threshold of
probabilities."""

import numpy as np
import pytest
import torch

from cellops.inference import prepare_for_inference
from cellops.unet.predict import predict_probabilities, score, segment
from cellops.unet.specs import UNetServing

BASE = dict(tile_size=16, tile_overlap=4, batch_size=4, threshold=0.5)


def _pointwise_model() -> torch.nn.Module:
    # sigmoid(4x - 2): a per-pixel model, so flips cannot change its output.
    conv = torch.nn.Conv2d(1, 1, 1)
    torch.nn.init.constant_(conv.weight, 4.0)
    torch.nn.init.constant_(conv.bias, -2.0)
    return prepare_for_inference(conv)


def test_settings_refuse_impossible_values_and_name_keys():
    for overlap in (16, 1.5, -1):  # a whole tile, part of a pixel, negative
        with pytest.raises(ValueError, match="tile_overlap"):
            UNetServing(**{**BASE, "tile_overlap": overlap})
    with pytest.raises(ValueError, match="odd number"):
        UNetServing(**BASE, z_smoothing=2)
    with pytest.raises(ValueError, match=r"missing keys \['threshold'\]"):
        UNetServing.from_dict({k: v for k, v in BASE.items() if k != "threshold"})
    assert UNetServing.from_dict(BASE).as_dict() == {"family": "unet", **BASE, "flip_averaging": False, "z_smoothing": 1,
                                                     "normalization": {"mode": "dtype", "low": 1.0, "high": 99.8}}
    with pytest.raises(ValueError, match="'classifier' model, not of a 'unet' one"):
        UNetServing.from_dict({**BASE, "family": "classifier"})


def test_an_overlap_registered_as_a_fraction_reads_as_the_pixels_of_the_same_tiles():
    assert UNetServing.from_dict({**BASE, "tile_overlap": 0.25}).tile_overlap == 4
    assert UNetServing.from_dict({**BASE, "tile_size": 128, "tile_overlap": 0.25}) == \
        UNetServing.from_dict({**BASE, "tile_size": 128, "tile_overlap": 32})
    assert UNetServing.from_dict({**BASE, "tile_overlap": 4.0}).tile_overlap == 4
    assert type(UNetServing.from_dict({**BASE, "tile_overlap": 0.0}).tile_overlap) is int


def test_flip_averaging_is_exact_for_a_flip_equivariant_model(rng):
    image = rng.random((2, 40, 36)).astype(np.float32)
    plain = predict_probabilities(_pointwise_model(), image, UNetServing(**BASE))
    flipped = predict_probabilities(_pointwise_model(), image, UNetServing(**BASE, flip_averaging=True))
    np.testing.assert_allclose(plain, flipped, atol=1e-6)


def test_z_smoothing_averages_neighbouring_slices_of_a_stack_only(rng):
    stack = np.zeros((5, 16, 16), np.float32)
    stack[2] = 1.0
    smooth = predict_probabilities(_pointwise_model(), stack, UNetServing(**BASE, z_smoothing=3))
    plain = predict_probabilities(_pointwise_model(), stack, UNetServing(**BASE))
    np.testing.assert_allclose(smooth[1], (plain[0] + plain[1] + plain[2]) / 3, atol=1e-6)
    single = predict_probabilities(_pointwise_model(), stack[2], UNetServing(**BASE, z_smoothing=3))
    np.testing.assert_allclose(single, plain[2], atol=1e-6)  # a 2-D image has no neighbours


def test_segment_thresholds_and_score_counts_every_voxel():
    image = np.zeros((2, 16, 16), np.uint8)
    image[:, :8] = 255  # unit range 1.0 -> sigmoid(2) = 0.88 > 0.5; 0 -> sigmoid(-2) = 0.12
    settings = UNetServing(**BASE)
    mask = segment(_pointwise_model(), image, settings)
    assert mask.dtype == bool and mask[:, :8].all() and not mask[:, 8:].any()
    scores, prediction = score(_pointwise_model(), image, (image > 0).astype(np.uint8) * 255, settings)
    assert scores.foreground_iou == 1.0 and np.array_equal(prediction, mask)


def test_a_volume_streamed_slab_by_slab_gives_the_in_memory_mask(tmp_path):
    """Slabs of 2 with z-smoothing over 3 slices (a halo each side), from an uncompressed (memory-mapped) and a
    compressed (page by page) TIFF and a chunked zarr array: the same mask as segmenting the whole volume at once."""
    import tifffile

    import pandas as pd

    from cellops.unet.streaming import segment_volume_file, segment_volume_to_files, volume_info
    from models.unet import UNet

    torch.manual_seed(0)
    model = prepare_for_inference(UNet(base_channels=4, depth=2))
    volume = np.random.default_rng(0).integers(0, 255, (7, 40, 48), dtype=np.uint8)
    settings = UNetServing(tile_size=32, tile_overlap=8, batch_size=4, threshold=0.5, z_smoothing=3)
    expected = segment(model, volume, settings)
    assert 0 < expected.mean() < 1  # neither empty nor full: the comparison means something
    for name, options in (("plain.tif", {}), ("deflate.tif", {"compression": "zlib"})):
        tifffile.imwrite(tmp_path / name, volume, **options)
        done = []
        info = segment_volume_file(model, tmp_path / name, tmp_path / f"mask_{name}", settings, slab=2,
                                   on_slab=lambda n, total: done.append((n, total)))
        assert info == volume_info(tmp_path / name) and info.shape == (7, 40, 48)
        assert np.array_equal(tifffile.imread(tmp_path / f"mask_{name}") > 0, expected), name
        assert done == [(2, 7), (4, 7), (6, 7), (7, 7)]
    assert not list(tmp_path.glob(".*.partial"))
    # A chunked zarr array (chunks that do not align with the slabs) streams to the same mask.
    import zarr

    from cellops.microscopy import open_image, write_ome_tiff

    zarr.create_array(tmp_path / "volume.zarr", shape=volume.shape, chunks=(3, 16, 16), dtype=volume.dtype)[:] = volume
    assert volume_info(tmp_path / "volume.zarr").shape == (7, 40, 48)
    written = segment_volume_to_files(model, tmp_path / "volume.zarr", tmp_path, "from_zarr", settings, slab=2)
    assert np.array_equal(tifffile.imread(tmp_path / "from_zarr_mask.tif") > 0, expected)
    table = pd.read_csv(tmp_path / "from_zarr_slices.csv")
    assert np.allclose(table["foreground_fraction"], expected.mean(axis=(1, 2)), atol=1e-6)
    assert written["outputs"] == ["from_zarr_mask.tif", "from_zarr_mask.ome.zarr", "from_zarr_slices.csv"]
    assert written["shape"] == "7x40x48"
    as_zarr = open_image(tmp_path / "from_zarr_mask.ome.zarr")
    assert as_zarr.axes == "ZYX" and np.array_equal(as_zarr.data > 0, expected)
    # A source that states its voxel size gives masks (OME-TIFF and OME-Zarr) with that size.
    write_ome_tiff(tmp_path / "scaled.ome.tif", volume, axes="ZYX", pixel_size_um={"Z": 0.05, "Y": 0.005, "X": 0.005})
    segment_volume_to_files(model, tmp_path / "scaled.ome.tif", tmp_path, "scaled", settings, slab=3)
    for mask in ("scaled_mask.tif", "scaled_mask.ome.zarr"):
        assert open_image(tmp_path / mask).pixel_size_um == {"Z": 0.05, "Y": 0.005, "X": 0.005}, mask
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(ValueError, match="empty.zarr: not a readable zarr array"):
        volume_info(tmp_path / "empty.zarr")
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="a \\(Z, Y, X\\) grey stack is expected"):
        segment_volume_file(model, tmp_path / "rgb.tif", tmp_path / "x.tif", settings)
