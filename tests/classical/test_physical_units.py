"""The classical analyses on microscope files: channels chosen, sizes in µm from the file's own pixel size, label
images written with the input's scale (read back the same), and the same µm figures at two magnifications."""

import cv2
import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

from cellops.cli import analyze
from cellops.errors import ImageInputError
from cellops.io import FileReading
from cellops.classical.analyses import analyze_nucleus_file, analysis_settings
from cellops.batch import InputName
from cellops.microscopy import open_image
from cellops.synthetic.calcium import generate_calcium_movie
from cellops.synthetic.colonies import generate_colony_image
from cellops.synthetic.nuclei import generate_nuclei_image

pytestmark = pytest.mark.minutes(2)


def _ome(path, data, axes, pixel_size, channels=None, **extra):
    metadata = {"axes": axes, "PhysicalSizeX": pixel_size, "PhysicalSizeY": pixel_size,
                "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm", **extra}
    if channels:
        metadata["Channel"] = {"Name": list(channels)}
    tifffile.imwrite(path, data, ome=True, metadata=metadata, photometric="minisblack")
    return path


def _config(tmp_path, kind, **analysis):
    path = tmp_path / f"{kind}.yaml"
    path.write_text(yaml.safe_dump({"parameters": {"analysis": analysis}}))
    return path


@pytest.fixture(scope="module")
def nuclei_sample():
    return generate_nuclei_image("Control", (256, 256), seed=4, n_nuclei=14)


def test_a_multichannel_file_is_refused_without_a_channel_and_read_with_one(tmp_path, nuclei_sample, capsys):
    noise = np.random.default_rng(0).integers(0, 50, nuclei_sample.image.shape).astype(np.uint16)
    stack = np.stack([noise, nuclei_sample.image])
    source = _ome(tmp_path / "two.ome.tif", stack, "CYX", 0.4, channels=["GFP", "DAPI"])

    code = analyze("nuclei", [source], tmp_path / "none", None, None)
    assert code == 2
    assert "2 channels" in capsys.readouterr().err and "DAPI" in (tmp_path / "none" / "batch_summary.csv").read_text()

    assert analyze("nuclei", [source], tmp_path / "out", None, None, channel="DAPI") == 0
    by_index = tmp_path / "by_index"
    assert analyze("nuclei", [source], by_index, None, None, channel="1") == 0
    table = pd.read_csv(tmp_path / "out" / "two_nuclei.csv")
    assert table.equals(pd.read_csv(by_index / "two_nuclei.csv"))
    assert len(table) >= 10
    assert np.allclose(table["area_um2"], table["area"] * 0.4**2)
    assert np.allclose(table["feret_max_um"], table["feret_max"] * 0.4)
    assert (table["pixel_size_um"] == 0.4).all()

    labels = open_image(tmp_path / "out" / "two_nuclei.tif")
    assert labels.pixel_size_um["X"] == pytest.approx(0.4) and labels.pixel_size_um["Y"] == pytest.approx(0.4)
    assert labels.data.shape == nuclei_sample.image.shape and int(labels.data.max()) == len(table)


def test_without_a_pixel_size_the_table_is_in_pixels_and_um_sizes_need_one(tmp_path, nuclei_sample):
    source = tmp_path / "plain.tif"
    tifffile.imwrite(source, nuclei_sample.image)
    found = analyze_nucleus_file(source, tmp_path, InputName("plain.tif", "plain"), "g")
    assert found.table["pixel_size_um"].isna().all() and found.table["area_um2"].isna().all()
    params, _ = analysis_settings("nuclei", {"nucleus_diameter_um": 12.0})
    with pytest.raises(ImageInputError, match="no pixel size: give pixel_size_um"):
        analyze_nucleus_file(source, tmp_path, InputName("plain.tif", "plain"), "g", params)
    params, _ = analysis_settings("nuclei", {"nucleus_diameter_um": 12.0, "pixel_size_um": 0.4})
    with_config = analyze_nucleus_file(source, tmp_path, InputName("plain.tif", "plain2"), "g", params)
    assert (with_config.table["segmented_diameter_px"] == 30.0).all()
    assert (with_config.table["pixel_size_um"] == 0.4).all()


@pytest.mark.parametrize("size", [0, float("nan"), 2000.0])
def test_a_bad_pixel_size_in_the_config_is_refused(size):
    with pytest.raises(ValueError, match="pixel size must be above 0 and at most 1 mm"):
        analysis_settings("nuclei", {"pixel_size_um": size})


def _magnified(image: np.ndarray, factor: int) -> np.ndarray:
    """The same field imaged with ``factor`` times smaller pixels."""
    height, width = image.shape[:2]
    return cv2.resize(image, (width * factor, height * factor), interpolation=cv2.INTER_CUBIC)


def test_one_config_gives_the_same_um_figures_at_two_pixel_sizes(tmp_path, nuclei_sample):
    """The same nuclei at 0.5 µm and 0.25 µm per pixel, one config in µm: the µm figures agree within 5 %."""
    low = _ome(tmp_path / "low.ome.tif", nuclei_sample.image, "YX", 0.5)
    high = _ome(tmp_path / "high.ome.tif", _magnified(nuclei_sample.image, 2), "YX", 0.25)
    config = _config(tmp_path, "nuclei", nucleus_diameter_um=15.0)
    assert analyze("nuclei", [low, high], tmp_path / "out", "g", config) == 0
    both = pd.read_csv(tmp_path / "out" / "nuclei_all.csv")
    low_table, high_table = (both[both["image"] == name] for name in ("low.ome.tif", "high.ome.tif"))
    assert len(low_table) == len(high_table)
    assert set(low_table["segmented_diameter_px"]) == {30.0} and set(high_table["segmented_diameter_px"]) == {60.0}
    for column in ("area_um2", "feret_max_um", "major_axis_um", "minor_axis_um"):
        a, b = low_table[column].median(), high_table[column].median()
        assert abs(a - b) / a < 0.05, (column, a, b)


def test_colony_sizes_in_um_at_two_pixel_sizes(tmp_path):
    sample = generate_colony_image((384, 384), seed=3, n_colonies=(3, 5))
    grey = sample.image if sample.image.ndim == 2 else cv2.cvtColor(sample.image, cv2.COLOR_RGB2GRAY)
    low = _ome(tmp_path / "low.ome.tif", grey, "YX", 2.0)
    high = _ome(tmp_path / "high.ome.tif", _magnified(grey, 2), "YX", 1.0)
    assert analyze("colonies", [low, high], tmp_path / "out", "g", None) == 0
    both = pd.read_csv(tmp_path / "out" / "colonies_all.csv")
    low_table, high_table = (both[both["image"] == name] for name in ("low.ome.tif", "high.ome.tif"))
    assert len(low_table) == len(high_table) >= 3
    a, b = low_table["area_um2"].sum(), high_table["area_um2"].sum()
    assert abs(a - b) / a < 0.05
    overlay = open_image(tmp_path / "out" / "low_overlay.ome.tif")
    assert overlay.axes == "YXS" and overlay.pixel_size_um["X"] == pytest.approx(2.0)


def test_calcium_takes_the_time_step_and_pixel_size_of_an_imagej_movie(tmp_path):
    movie = generate_calcium_movie("Film", (96, 96), n_frames=30, seed=2, n_cells=6).movie
    source = tmp_path / "movie.tif"
    tifffile.imwrite(source, movie, imagej=True, resolution=(1 / 0.65, 1 / 0.65),
                     metadata={"axes": "TYX", "unit": "um", "finterval": 0.5})
    assert analyze("calcium", [source], tmp_path / "out", "g", _config(tmp_path, "calcium", baseline_frames=10)) == 0
    table = pd.read_csv(tmp_path / "out" / "movie_responses.csv")
    assert (table["frame_interval_s"] == 0.5).all() and (table["pixel_size_um"] == 0.65).all()
    assert np.allclose(table["area_um2"], table["area"] * 0.65**2)
    traces = pd.read_csv(tmp_path / "out" / "movie_dff.csv")
    assert traces["time_s"].iloc[1] == 0.5


def test_file_reading_comes_from_the_config():
    params, reading = analysis_settings("colonies", {"channel": 0, "scene": "Well A1", "min_area_um2": 500.0})
    assert reading == FileReading(channel=0, scene="Well A1") and params.min_area_um2 == 500.0
    assert params.at_pixel_size(2.0).min_area == 125.0
