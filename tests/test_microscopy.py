"""cellops.microscopy: every format read into TCZYX order with its pixel sizes, channels and scenes; bad files
refused naming the file; OME-TIFF and OME-Zarr written and read back at the same scale, pixels exact."""

import builtins
import math
import sys

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from cellops.errors import ImageInputError, ImageTooLargeError
from cellops.io import read_tiff_stack
from cellops.microscopy import (AXES, SUPPORTED_FORMATS, MicroscopeImage, open_image, write_ome_tiff,
                                write_ome_zarr)

pytestmark = pytest.mark.minutes(1)


def _stack(*shape, dtype=np.uint16):
    return (np.arange(math.prod(shape)) % 251).astype(dtype).reshape(shape)


def _ome(path, data, axes, pixel_size=None, channels=None, **extra):
    metadata = {"axes": axes, **extra}
    if pixel_size is not None:
        metadata.update(PhysicalSizeX=pixel_size, PhysicalSizeY=pixel_size, PhysicalSizeXUnit="µm",
                        PhysicalSizeYUnit="µm")
    if channels:
        metadata["Channel"] = {"Name": list(channels)}
    tifffile.imwrite(path, data, ome=True, metadata=metadata, photometric="minisblack")
    return path


def _edit_ome_xml(path, old, new):
    """Rewrite the file's OME-XML with ``old`` replaced (tifffile relocates the description when it grows)."""
    with tifffile.TiffFile(path) as tif:
        xml = tif.ome_metadata
    assert old in xml
    tifffile.tiffcomment(path, comment=xml.replace(old, new).encode())
    return path


# -- OME-TIFF -----------------------------------------------------------------------------------------------------


def test_ome_tiff_one_named_channel(tmp_path):
    image = open_image(_ome(tmp_path / "a.ome.tif", _stack(16, 20), "YX", 0.325, channels=["DAPI"]))
    assert (image.format, image.axes, image.data.shape) == ("ome-tiff", "YX", (16, 20))
    assert image.pixel_size_um == {"Y": 0.325, "X": 0.325} and image.yx_pixel_size_um == 0.325
    assert image.channel_names == ("DAPI",) and image.channel is None
    assert image.scenes == ("Image0",) and image.scene == "Image0" and image.time_step_s is None
    assert open_image(image.source, channel="dapi").channel == "DAPI"
    assert image.single_channel("x") is image


def test_ome_tiff_three_channels_are_chosen_by_name_case_or_index(tmp_path):
    data = _stack(3, 16, 20)
    path = _ome(tmp_path / "c.ome.tif", data, "CYX", 0.5, channels=["GFP", "DAPI", "1"])
    image = open_image(path)
    assert image.axes == "CYX" and image.channel_names == ("GFP", "DAPI", "1")
    with pytest.raises(ImageInputError, match=r"c.ome.tif: 3 channels \(0: GFP, 1: DAPI, 2: 1\): choose one with "
                                              r"--channel NAME\|INDEX \(config key `channel`\) for the nuclei"):
        image.single_channel("the nuclei analysis")
    for choice, index in (("DAPI", 1), ("dapi", 1), (0, 0), (np.int64(0), 0), ("1", 2), ("2", 2)):
        chosen = open_image(path, channel=choice)
        assert chosen.axes == "YX" and np.array_equal(chosen.data, data[index]), choice
        assert chosen.channel == image.channel_names[index] and chosen.channel_names == image.channel_names
        assert chosen.single_channel("x") is chosen
    for bad in ("RFP", 3, -1, "7"):
        with pytest.raises(ImageInputError, match=r"c.ome.tif: no channel .*its channels are 0: GFP, 1: DAPI, 2: 1"):
            open_image(path, channel=bad)


def test_ome_tiff_z_stack_in_nanometres(tmp_path):
    data = _stack(5, 2, 16, 20)  # Z, C
    path = tmp_path / "z.ome.tif"
    tifffile.imwrite(path, data, ome=True, photometric="minisblack",
                     metadata={"axes": "ZCYX", "PhysicalSizeX": 108.3, "PhysicalSizeXUnit": "nm",
                               "PhysicalSizeY": 108.3, "PhysicalSizeYUnit": "nm", "PhysicalSizeZ": 0.5,
                               "PhysicalSizeZUnit": "µm"})
    image = open_image(path)
    assert image.axes == "CZYX" and np.array_equal(image.data, np.moveaxis(data, 1, 0))
    assert image.pixel_size_um == pytest.approx({"Z": 0.5, "Y": 0.1083, "X": 0.1083})
    assert image.channel_names == ("C0", "C1")
    assert "no pixel size" not in image.describe() and "CZYX (2, 5, 16, 20) uint16" in image.describe()


def test_ome_tiff_time_lapse_time_increment_and_plane_delta_t(tmp_path):
    data = _stack(4, 16, 20)
    image = open_image(_ome(tmp_path / "t.ome.tif", data, "TYX", 1.0, TimeIncrement=2.5, TimeIncrementUnit="min"))
    assert image.axes == "TYX" and image.time_step_s == 150.0 and "time step 150 s" in image.describe()
    planes = {"DeltaT": [0.0, 0.5, 1.0, 1.5], "DeltaTUnit": ["s"] * 4}
    assert open_image(_ome(tmp_path / "p.ome.tif", data, "TYX", Plane=planes)).time_step_s == 0.5


def test_ome_tiff_two_scenes(tmp_path):
    path = tmp_path / "wells.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as writer:
        writer.write(_stack(2, 16, 20), metadata={"axes": "ZYX", "Name": "Well A1", "PhysicalSizeX": 0.5,
                                                  "PhysicalSizeY": 0.5})
        writer.write(_stack(12, 10) + 7, metadata={"axes": "YX", "Name": "Well B2", "PhysicalSizeX": 2.0,
                                                   "PhysicalSizeY": 2.0})
    with pytest.raises(ImageInputError, match=r"wells.ome.tif: 2 scenes \(0: Well A1, 1: Well B2\): choose one "
                                              r"with --scene NAME\|INDEX"):
        open_image(path)
    second = open_image(path, scene="Well B2")
    assert second.scene == "Well B2" and second.scenes == ("Well A1", "Well B2")
    assert np.array_equal(second.data, _stack(12, 10) + 7) and second.yx_pixel_size_um == 2.0
    assert open_image(path, scene=1).scene == open_image(path, scene="well b2").scene == "Well B2"
    first = open_image(path, scene="0")
    assert first.axes == "ZYX" and first.yx_pixel_size_um == 0.5
    with pytest.raises(ImageInputError, match=r"no scene 'Well C3'; its scenes are 0: Well A1, 1: Well B2"):
        open_image(path, scene="Well C3")


def test_tiff_scene_choice_on_a_single_scene_file(tmp_path):
    path = _ome(tmp_path / "a.ome.tif", _stack(8, 8), "YX")
    assert open_image(path, scene=0).scene == "Image0"
    with pytest.raises(ImageInputError, match="no scene 1; its scenes are 0: Image0"):
        open_image(path, scene=1)


def test_rgb_ome_tiff_is_yxs(tmp_path):
    rgb = _stack(16, 20, 3, dtype=np.uint8)
    path = tmp_path / "rgb.ome.tif"
    tifffile.imwrite(path, rgb, ome=True, photometric="rgb", metadata={"axes": "YXS"})
    image = open_image(path)
    assert image.axes == "YXS" and image.channel_names == () and np.array_equal(image.data, rgb)
    green = open_image(path, channel="G")
    assert green.axes == "YX" and np.array_equal(green.data, rgb[..., 1]) and green.channel_names == ("R", "G", "B")


# -- ImageJ, plain TIFF, pictures ---------------------------------------------------------------------------------


def test_imagej_hyperstack(tmp_path):
    data = _stack(2, 3, 2, 16, 20)  # T, Z, C
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.25, 1 / 0.25),
                     metadata={"unit": "um", "spacing": 2.0, "finterval": 0.5, "axes": "TZCYX"})
    image = open_image(path)
    assert (image.format, image.axes) == ("imagej-tiff", "TCZYX")
    assert np.array_equal(image.data, np.moveaxis(data, 2, 1))
    assert image.pixel_size_um == {"Z": 2.0, "Y": 0.25, "X": 0.25} and image.time_step_s == 0.5
    assert image.channel_names == ("C0", "C1")
    assert np.array_equal(open_image(path, channel=1).data, data[:, :, 1])


@pytest.mark.parametrize("unit, expected", [("\\u00B5m", 0.65), ("micron", 0.65), ("um", 0.65), ("nm", 0.00065),
                                            ("mm", 650.0), ("pixel", None), (None, None)])
def test_imagej_units(tmp_path, unit, expected):
    path = tmp_path / "movie.tif"
    metadata = {"axes": "TYX", "finterval": 2} | ({"unit": unit} if unit else {})
    tifffile.imwrite(path, _stack(3, 16, 16), imagej=True, resolution=(1 / 0.65, 1 / 0.65), metadata=metadata)
    image = open_image(path)
    assert image.yx_pixel_size_um == (pytest.approx(expected) if expected else None)
    assert image.axes == "TYX" and image.time_step_s == 2.0


def test_plain_tiff_stack_is_z_without_pixel_size_even_with_dpi(tmp_path):
    data = _stack(5, 16, 20)  # tifffile writes 3 or 4 planes without photometric= as RGB(A)
    for name, kwargs in (("shaped.tif", {"resolution": (300, 300)}), ("bare.tif", {"metadata": None})):
        tifffile.imwrite(tmp_path / name, data, **kwargs)
        image = open_image(tmp_path / name)
        assert (image.format, image.axes, image.pixel_size_um) == ("tiff", "ZYX", {})
        assert np.array_equal(image.data, data) and image.yx_pixel_size_um is None
        assert "no pixel size" in image.describe()
    tifffile.imwrite(tmp_path / "one.tif", data[:1])
    assert open_image(tmp_path / "one.tif").axes == "YX"
    assert open_image(tmp_path / "one.tif", channel=0).channel is None  # one grey channel: 0 is all of it
    with pytest.raises(ImageInputError, match="one.tif: has one grey channel .* channel 'DAPI' does not exist"):
        open_image(tmp_path / "one.tif", channel="DAPI")


def test_a_tiff_with_two_unnamed_stack_axes_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "q.tif", _stack(2, 5, 8, 8))
    with pytest.raises(ImageInputError, match=r"q.tif: a TIFF with 2 unnamed stack axes \(shape \(2, 5, 8, 8\)\)"):
        open_image(tmp_path / "q.tif")
    tifffile.imwrite(tmp_path / "c.tif", _stack(2, 5, 8, 8), metadata={"axes": "CZYX"})
    assert open_image(tmp_path / "c.tif").axes == "CZYX"


def test_png_rgb_and_grey(tmp_path):
    rgb = _stack(16, 20, 3, dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    image = open_image(tmp_path / "rgb.png")
    assert (image.format, image.axes, image.pixel_size_um, image.channel_names) == ("png", "YXS", {}, ())
    blue = open_image(tmp_path / "rgb.png", channel="b")
    assert blue.axes == "YX" and blue.channel == "B" and np.array_equal(blue.data, rgb[..., 2])
    with pytest.raises(ImageInputError, match="rgb.png: no channel 'DAPI'; this colour image's channels are 0: R"):
        open_image(tmp_path / "rgb.png", channel="DAPI")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.jpg", quality=100)
    grey = open_image(tmp_path / "grey.jpg")
    assert (grey.format, grey.axes) == ("jpeg", "YX")


# -- OME-Zarr, zarr -------------------------------------------------------------------------------------------------


def test_ome_zarr_written_and_read_back(tmp_path):
    data = _stack(2, 3, 4, 16, 20)
    path = write_ome_zarr(tmp_path / "v.ome.zarr", data, axes="TCZYX", pixel_size_um={"Z": 2.0, "Y": 0.5, "X": 0.5},
                          channel_names=["DAPI", "GFP", "RFP"])
    attrs = zarr.open_group(str(path), mode="r").attrs.asdict()
    assert attrs["ome"]["version"] == "0.5"
    assert [axis.get("unit") for axis in attrs["ome"]["multiscales"][0]["axes"]][2:] == ["micrometer"] * 3
    image = open_image(path)
    assert (image.format, image.axes) == ("ome-zarr", "TCZYX") and np.array_equal(image.data, data)
    assert image.pixel_size_um == {"Z": 2.0, "Y": 0.5, "X": 0.5} and image.channel_names == ("DAPI", "GFP", "RFP")
    assert np.array_equal(open_image(path, channel="GFP").data, data[:, 1])


def test_ome_zarr_labels_and_masks_round_trip_exactly(tmp_path):
    labels = (np.arange(3 * 16 * 20).reshape(3, 16, 20) * 7919 % 100003).astype(np.int32)
    back = open_image(write_ome_zarr(tmp_path / "labels.ome.zarr", labels, axes="ZYX", pixel_size_um=0.4))
    assert back.data.dtype == np.int32 and np.array_equal(back.data, labels)
    assert back.pixel_size_um == {"Y": 0.4, "X": 0.4}  # no Z size given: Z has none
    floats = np.where(labels % 5 == 0, np.nan, labels).astype(np.float32)
    back = open_image(write_ome_zarr(tmp_path / "floats.ome.zarr", floats[None], axes="CZYX", channel_names=["p"]))
    assert np.array_equal(back.data, floats, equal_nan=True) and back.channel_names == ("p",)
    mask = labels % 3 == 0
    back = open_image(write_ome_zarr(tmp_path / "mask.ome.zarr", mask, axes="ZYX"))
    assert back.data.dtype == bool and np.array_equal(back.data, mask) and back.pixel_size_um == {}


def test_ome_zarr_written_by_ome_zarr_py_in_both_ngff_versions(tmp_path):
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    data = _stack(2, 16, 20)
    for name, fmt in (("v05.ome.zarr", None), ("v04.zarr", FormatV04())):
        group = zarr.open_group(str(tmp_path / name), mode="w", zarr_format=2 if fmt else 3)
        write_image(data, group, axes=["c", "y", "x"], scale={"c": 1.0, "y": 0.3, "x": 0.3},
                    axes_units={"y": "nanometer", "x": "nanometer"}, scale_factors=[2], fmt=fmt,
                    omero={"channels": [{"label": label, "color": "FFFFFF", "active": True,
                                         "window": {"min": 0, "max": 255, "start": 0, "end": 255}}
                                        for label in ("A", "B")]})
        image = open_image(tmp_path / name)
        assert image.format == "ome-zarr" and image.axes == "CYX" and np.array_equal(image.data, data), name
        assert image.pixel_size_um == pytest.approx({"Y": 0.0003, "X": 0.0003}) and image.channel_names == ("A", "B")


def test_ome_zarr_without_units_has_no_pixel_size(tmp_path):
    from ome_zarr.writer import write_image

    write_image(_stack(16, 20), zarr.open_group(str(tmp_path / "u.zarr"), mode="w"), axes=["y", "x"],
                scale={"y": 0.3, "x": 0.3}, scale_factors=[])
    assert open_image(tmp_path / "u.zarr").pixel_size_um == {}


def test_plain_zarr_arrays(tmp_path):
    volume = _stack(3, 16, 20)
    zarr.create_array(str(tmp_path / "vol.zarr"), data=volume)
    image = open_image(tmp_path / "vol.zarr")
    assert (image.format, image.axes, image.pixel_size_um) == ("zarr", "ZYX", {}) and np.array_equal(image.data,
                                                                                                       volume)
    zarr.create_array(str(tmp_path / "plane.zarr"), data=volume[0])
    assert open_image(tmp_path / "plane.zarr").axes == "YX"
    zarr.create_array(str(tmp_path / "named.zarr"), data=volume, dimension_names=["t", "y", "x"])
    assert open_image(tmp_path / "named.zarr").axes == "TYX"
    zarr.open_group(str(tmp_path / "group.zarr"), mode="w").create_array("raw", data=volume)
    with pytest.raises(ImageInputError, match="group.zarr: a zarr group without OME-NGFF multiscales metadata; open "
                                              "one of its arrays \\(raw\\)"):
        open_image(tmp_path / "group.zarr")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(ImageInputError, match="empty.zarr: not a zarr store"):
        open_image(tmp_path / "empty.zarr")


# -- CZI (written with pylibCZIrw), ND2 and LIF -------------------------------------------------------------------


def test_czi_through_bioio(tmp_path):
    czi = pytest.importorskip("pylibCZIrw.czi")
    path = tmp_path / "a.czi"
    with czi.create_czi(str(path), exist_ok=True) as writer:
        for c in range(2):
            for z in range(3):
                writer.write(data=np.full((16, 20), 10 * c + z, np.uint16), plane={"C": c, "Z": z, "T": 0})
        writer.write_metadata(channel_names={0: "DAPI", 1: "GFP"}, scale_x=0.2e-6, scale_y=0.2e-6, scale_z=1e-6)
    image = open_image(path)
    assert (image.format, image.axes, image.data.shape) == ("czi", "CZYX", (2, 3, 16, 20))
    assert image.pixel_size_um == pytest.approx({"Z": 1.0, "Y": 0.2, "X": 0.2})
    assert image.channel_names == ("DAPI", "GFP") and len(image.scenes) == 1
    assert np.array_equal(open_image(path, channel="GFP").data[:, 0, 0], [10, 11, 12])


@pytest.mark.parametrize("suffix, package", [(".czi", "bioio-czi"), (".nd2", "bioio-nd2"), (".lif", "bioio-lif")])
def test_a_missing_reader_package_is_named(tmp_path, monkeypatch, suffix, package):
    path = tmp_path / f"a{suffix}"
    path.write_bytes(b"\0" * 64)
    monkeypatch.setitem(sys.modules, package.replace("-", "_"), None)  # the import fails
    with pytest.raises(ImageInputError, match=f"a{suffix}: reading \\{suffix} files needs the {package} package: "
                                              f"pip install {package}$"):
        open_image(path)


def test_a_missing_bioio_is_named(tmp_path, monkeypatch):
    path = tmp_path / "a.nd2"
    path.write_bytes(b"\0" * 64)
    real_import = builtins.__import__

    def no_bioio(name, *args, **kwargs):
        if name == "bioio":
            raise ModuleNotFoundError("No module named 'bioio'", name="bioio")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "bioio", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_bioio)
    with pytest.raises(ImageInputError, match="needs the bioio-nd2 package: pip install bioio bioio-nd2"):
        open_image(path)


@pytest.mark.parametrize("suffix", [".czi", ".nd2", ".lif"])
def test_a_corrupt_bioio_file_is_refused_naming_it(tmp_path, suffix):
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"this is not a microscope file" * 20)
    with pytest.raises(ImageInputError, match=f"broken\\{suffix}: not a readable {suffix[1:].upper()} file"):
        open_image(path)


# -- bad input ------------------------------------------------------------------------------------------------------


def test_unknown_and_java_only_suffixes(tmp_path):
    (tmp_path / "a.xyz").write_bytes(b"data")
    with pytest.raises(ImageInputError) as error:
        open_image(tmp_path / "a.xyz")
    message = str(error.value)
    assert "a.xyz: unsupported file type (suffix '.xyz')" in message
    for fmt, (suffixes, package) in SUPPORTED_FORMATS.items():
        assert fmt in message and suffixes[0] in message and package in message
    (tmp_path / "zipped.zarr").write_bytes(b"PK")
    with pytest.raises(ImageInputError, match="zipped.zarr: a file, but a zarr store is a folder"):
        open_image(tmp_path / "zipped.zarr")
    for suffix in (".vsi", ".ims", ".oib", ".oif", ".sld", ".dv"):
        (tmp_path / f"a{suffix}").write_bytes(b"data")
        with pytest.raises(ImageInputError, match=f"a\\{suffix}: .*bioio-bioformats.*Java runtime; convert"):
            open_image(tmp_path / f"a{suffix}")


def test_missing_empty_directory_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(ImageInputError, match="gone.ome.tif: no such file"):
        open_image(tmp_path / "gone.ome.tif")
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(ImageInputError, match="empty.tif: empty file"):
        open_image(tmp_path / "empty.tif")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ImageInputError, match="folder: is a directory"):
        open_image(tmp_path / "folder")
    (tmp_path / "junk.tif").write_bytes(b"not a tiff at all" * 10)
    with pytest.raises(ImageInputError, match="junk.tif: not a readable TIFF"):
        open_image(tmp_path / "junk.tif")
    (tmp_path / "junk.png").write_bytes(b"not a png" * 10)
    with pytest.raises(ImageInputError, match="junk.png: not a readable image"):
        open_image(tmp_path / "junk.png")


def test_truncated_stack_and_decompression_bomb_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "cut.ome.tif"
    tifffile.imwrite(path, _stack(6, 64, 64), ome=True, metadata={"axes": "ZYX"}, photometric="minisblack")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ImageInputError, match="cut.ome.tif"):
        open_image(path)
    zarr.create_array(str(tmp_path / "big.zarr"), data=_stack(16, 20))
    write_ome_zarr(tmp_path / "big.ome.zarr", _stack(16, 20), axes="YX")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    for name in ("a.ome.tif", "big.zarr", "big.ome.zarr"):
        if name.endswith(".tif"):
            _ome(tmp_path / name, _stack(16, 20), "YX")
        with pytest.raises(ImageTooLargeError, match=f"{name}: image too large: 320 pixels per plane"):
            open_image(tmp_path / name)


@pytest.mark.parametrize("value, unit", [("0", "µm"), ("NaN", "µm"), ("2", "mm"), ("-1", "µm")])
def test_bad_ome_pixel_sizes_are_refused_naming_file_and_field(tmp_path, value, unit):
    path = _ome(tmp_path / "a.ome.tif", _stack(16, 20), "YX", 0.5)
    _edit_ome_xml(path, 'PhysicalSizeX="0.5" PhysicalSizeXUnit="µm"',
                  f'PhysicalSizeX="{value}" PhysicalSizeXUnit="{unit}"')
    with pytest.raises(ImageInputError, match=f"a.ome.tif: OME PhysicalSizeX = {value} {unit}: a pixel size must be "
                                              "above 0 and at most 1 mm"):
        open_image(path)


def test_unknown_units_are_refused(tmp_path):
    path = _edit_ome_xml(_ome(tmp_path / "a.ome.tif", _stack(16, 20), "YX", 0.5), 'PhysicalSizeXUnit="µm"',
                         'PhysicalSizeXUnit="furlong"')
    with pytest.raises(ImageInputError, match="a.ome.tif: OME PhysicalSizeX: unknown length unit 'furlong'"):
        open_image(path)


def test_bad_imagej_resolution_is_refused(tmp_path):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, _stack(16, 20), imagej=True, resolution=(1 / 5000, 1 / 5000), metadata={"unit": "um"})
    with pytest.raises(ImageInputError, match="ij.tif: ImageJ XResolution .* a pixel size must be above 0 and at most"):
        open_image(path)


def test_ome_metadata_that_disagrees_with_the_pixels_is_refused(tmp_path):
    path = _edit_ome_xml(_ome(tmp_path / "x.ome.tif", _stack(2, 16, 20), "CYX"), 'SizeX="20"', 'SizeX="21"')
    with pytest.raises(ImageInputError, match=r"x.ome.tif: its OME metadata says SizeX=21, SizeY=16, SizeZ=1, "
                                              r"SizeC=2, SizeT=1 but the pixels have shape"):
        open_image(path)
    path = _ome(tmp_path / "c.ome.tif", _stack(3, 16, 20), "CYX", channels=["A", "B", "C"])
    with tifffile.TiffFile(path) as tif:
        xml = tif.ome_metadata
    start = xml.index('<Channel ID="Channel:0:2"')
    tifffile.tiffcomment(path, comment=(xml[:start] + xml[xml.index("</Channel>", start) + 10:]).encode())
    with pytest.raises(ImageInputError, match=r"c.ome.tif: its OME metadata (says SizeX|describes 2 channels)"):
        open_image(path)


def test_an_imagej_stack_without_hyperstack_keys_is_z(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, _stack(5, 8, 8), imagej=True, metadata={"axes": "ZYX"})
    path.write_bytes(path.read_bytes().replace(b"slices=5\n", b"xxxxxx=5\n"))  # as older ImageJ stacks are
    image = open_image(path)
    assert (image.format, image.axes) == ("imagej-tiff", "ZYX") and np.array_equal(image.data, _stack(5, 8, 8))


def test_imagej_metadata_that_disagrees_with_the_pixels_is_refused(tmp_path):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, _stack(2, 3, 16, 20), imagej=True, metadata={"axes": "ZCYX"})
    path.write_bytes(path.read_bytes().replace(b"slices=2", b"slices=4"))
    with pytest.raises(ImageInputError, match=r"ij.tif: its ImageJ metadata says channels=3, slices=4, images=6 "
                                              r"but the pixels have shape"):
        open_image(path)


def test_unparseable_ome_xml_is_refused(tmp_path):
    path = _edit_ome_xml(_ome(tmp_path / "a.ome.tif", _stack(16, 20), "YX", 0.5), "<Pixels ", "<Pixels <")
    with pytest.raises(ImageInputError, match="a.ome.tif: its OME-XML metadata cannot be parsed"):
        open_image(path)


def test_lsm_voxel_sizes_are_read_in_metres(tmp_path, monkeypatch):
    path = tmp_path / "a.lsm"
    tifffile.imwrite(path, _stack(3, 16, 20), photometric="minisblack")
    monkeypatch.setattr(tifffile.TiffFile, "is_lsm", property(lambda self: True), raising=False)
    monkeypatch.setattr(tifffile.TiffFile, "lsm_metadata", property(
        lambda self: {"VoxelSizeX": 0.2e-6, "VoxelSizeY": 0.2e-6, "VoxelSizeZ": 1e-6, "TimeIntervall": 0.0}),
        raising=False)
    image = open_image(path)
    assert (image.format, image.axes) == ("tiff", "ZYX")
    assert image.pixel_size_um == pytest.approx({"Z": 1.0, "Y": 0.2, "X": 0.2})


def test_non_square_pixels_are_refused_where_an_in_plane_size_is_needed(tmp_path):
    path = tmp_path / "a.ome.tif"
    tifffile.imwrite(path, _stack(16, 20), ome=True, metadata={"axes": "YX", "PhysicalSizeX": 0.5,
                                                               "PhysicalSizeY": 0.6})
    image = open_image(path)
    assert image.pixel_size_um == {"Y": 0.6, "X": 0.5}
    with pytest.raises(ImageInputError, match="a.ome.tif: pixels are not square: Y 0.6 µm, X 0.5 µm"):
        image.yx_pixel_size_um
    only_x = MicroscopeImage(image.data, "YX", {"X": 0.5}, (), None, None, ("a",), "a", path, "ome-tiff")
    assert only_x.yx_pixel_size_um == 0.5


# -- writing --------------------------------------------------------------------------------------------------------


def test_ome_tiff_written_read_back_by_us_tifffile_and_bioio(tmp_path):
    data = _stack(3, 2, 16, 20)
    path = write_ome_tiff(tmp_path / "out.ome.tif", data, axes="TCYX", pixel_size_um={"Y": 0.325, "X": 0.325},
                          channel_names=["DAPI", "GFP"], time_step_s=1.5)
    image = open_image(path)
    assert (image.format, image.axes) == ("ome-tiff", "TCYX") and np.array_equal(image.data, data)
    assert image.pixel_size_um == {"Y": 0.325, "X": 0.325} and image.channel_names == ("DAPI", "GFP")
    assert image.time_step_s == 1.5
    assert np.array_equal(read_tiff_stack(path), data)
    with tifffile.TiffFile(path) as tif:  # what napari's tifffile reader and Fiji (Bio-Formats) see
        assert 'PhysicalSizeX="0.325" PhysicalSizeXUnit="µm"' in tif.ome_metadata
        assert tif.pages.first.tags["ResolutionUnit"].value == 3  # centimetre: Fiji's plain opener shows µm
        numerator, denominator = tif.pages.first.tags["XResolution"].value
        assert 1e4 * denominator / numerator == pytest.approx(0.325)
    bioio_ome_tiff = pytest.importorskip("bioio_ome_tiff")
    from bioio import BioImage

    seen = BioImage(path, reader=bioio_ome_tiff.Reader)
    assert seen.physical_pixel_sizes.X == pytest.approx(0.325) and list(seen.channel_names) == ["DAPI", "GFP"]


@pytest.mark.parametrize("dtype", [np.int32, np.uint16, np.uint32, bool, np.float32, np.int64])
def test_ome_tiff_labels_and_masks_round_trip_exactly(tmp_path, dtype):
    labels = (np.arange(4 * 16 * 20).reshape(4, 16, 20) * 7919 % 70001).astype(dtype)
    path = write_ome_tiff(tmp_path / "l.ome.tif", labels, axes="ZYX", pixel_size_um={"Z": 1.0, "Y": 0.2, "X": 0.2})
    back = open_image(path)
    assert np.array_equal(back.data, labels) and back.pixel_size_um == {"Z": 1.0, "Y": 0.2, "X": 0.2}
    assert back.data.dtype == (np.int32 if dtype is np.int64 else dtype)


def test_ome_tiff_writes_rgb_and_are_reproducible(tmp_path):
    rgb = _stack(16, 20, 3, dtype=np.uint8)
    first = write_ome_tiff(tmp_path / "a.ome.tif", rgb, axes="YXS", pixel_size_um=2.0)
    second = write_ome_tiff(tmp_path / "b.ome.tif", rgb, axes="YXS", pixel_size_um=2.0)
    assert first.read_bytes() == second.read_bytes()
    back = open_image(first)
    assert back.axes == "YXS" and np.array_equal(back.data, rgb) and back.yx_pixel_size_um == 2.0


def test_writers_refuse_to_overwrite_and_leave_no_temporary_file(tmp_path):
    data = _stack(16, 20)
    path = write_ome_tiff(tmp_path / "a.ome.tif", data, axes="YX")
    with pytest.raises(FileExistsError, match="a.ome.tif already exists; not overwriting it"):
        write_ome_tiff(path, data + 1, axes="YX")
    assert np.array_equal(open_image(path).data, data)
    write_ome_tiff(path, data + 1, axes="YX", overwrite=True)
    assert np.array_equal(open_image(path).data, data + 1)
    folder = write_ome_zarr(tmp_path / "a.ome.zarr", data, axes="YX")
    with pytest.raises(FileExistsError, match="a.ome.zarr already exists"):
        write_ome_zarr(folder, data + 1, axes="YX")
    write_ome_zarr(folder, data + 2, axes="YX", pixel_size_um=0.5, overwrite=True)
    assert np.array_equal(open_image(folder).data, data + 2) and open_image(folder).yx_pixel_size_um == 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ome.tif", "a.ome.zarr"]


@pytest.mark.parametrize("size", [0, float("nan"), 2000.0, -0.5])
def test_writers_refuse_bad_pixel_sizes(tmp_path, size):
    for write, name in ((write_ome_tiff, "a.ome.tif"), (write_ome_zarr, "a.ome.zarr")):
        with pytest.raises(ImageInputError, match=f"{name}: pixel size X: a pixel size must be above 0"):
            write(tmp_path / name, _stack(8, 8), axes="YX", pixel_size_um={"Y": 0.5, "X": size})
        assert not (tmp_path / name).exists()


def test_writers_refuse_axes_and_names_that_do_not_fit(tmp_path):
    with pytest.raises(ImageInputError, match="a.ome.tif: axes 'ZYX' do not fit data of shape \\(8, 8\\)"):
        write_ome_tiff(tmp_path / "a.ome.tif", _stack(8, 8), axes="ZYX")
    with pytest.raises(ImageInputError, match="expected Y and X, in the order TCZYX"):
        write_ome_zarr(tmp_path / "a.ome.zarr", _stack(8, 8, 3), axes="YXS")
    with pytest.raises(ImageInputError, match="1 channel names \\(A\\) for 2 channels"):
        write_ome_tiff(tmp_path / "a.ome.tif", _stack(2, 8, 8), axes="CYX", channel_names=["A"])
    with pytest.raises(ImageInputError, match="cannot store int64 pixels \\(values beyond 32 bits\\)"):
        write_ome_tiff(tmp_path / "a.ome.tif", np.full((8, 8), 2**40), axes="YX")


def test_axes_are_canonical():
    assert AXES == "TCZYX"
