"""`cellops analyze` on hostile batches: every bad file named and skipped, the rest analysed, the exit code says
which (0 all analysed, 1 some failed, 2 nothing could be done), and outputs never overwrite each other."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from cellops.batch import SUMMARY, input_names
from cellops.synthetic.calcium import generate_calcium_movie
from cellops.synthetic.nuclei import generate_nuclei_image
from tracking.cli import main


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(path: Path) -> Path:
    """A 70-byte PNG whose header claims 100000 x 100000 pixels (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 8))
                     + _png_chunk(b"IEND", b""))
    return path


def _bad_files(folder: Path) -> dict[Path, str]:
    """Every kind of bad input, each with the words its error line must hold."""
    folder.mkdir(parents=True, exist_ok=True)
    grey = (np.arange(32 * 32) % 251).astype(np.uint8).reshape(32, 32)
    Image.fromarray(grey).save(folder / "whole.png")
    data = (folder / "whole.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "whole.png").unlink()
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("plate 3, well B2\n")
    tifffile.imwrite(folder / "complex.tif", np.ones((20, 16, 16), np.complex64))
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(folder / "rgb.png")
    tifffile.imwrite(folder / "short.tif", np.ones((5, 32, 32), np.uint16))
    (folder / "a_folder").mkdir()
    (folder / "loop.tif").symlink_to(folder / "loop.tif")
    return {
        _bomb_png(folder / "bomb.png"): "image too large",
        folder / "truncated.png": "not a readable image",
        folder / "empty.png": "empty file",
        folder / "notes.txt": "unsupported file type (suffix '.txt'). Supported: ",
        folder / "complex.tif": "unsupported dtype complex64",
        folder / "rgb.png": "an RGB(A) image (shape (32, 32, 3)), not a grey-level time-lapse stack",
        folder / "short.tif": "5 frames; a movie needs at least 16",
        folder / "a_folder": "is a directory",
        folder / "loop.tif": "symbolic link loop",
    }


def test_a_calcium_batch_names_each_bad_file_and_analyses_the_good_one(tmp_path, capsys):
    good = tmp_path / "in" / "good.tif"
    good.parent.mkdir()
    tifffile.imwrite(good, generate_calcium_movie("Film", (64, 64), n_frames=24, n_cells=4, seed=2).movie)
    bad = _bad_files(tmp_path / "in")
    out = tmp_path / "out"
    code = main(["analyze", "calcium", str(good), *map(str, bad), "--out", str(out)])
    err = capsys.readouterr().err.splitlines()
    assert code == 1
    for path, problem in bad.items():
        assert [line for line in err if f"{path}: {problem}" in line], f"{path.name} not named with {problem!r}"
    assert "some files failed (9 of 10)" in err[-1]
    table = pd.read_csv(out / "calcium_all.csv")
    assert set(table["movie"]) == {"good.tif"} and len(table) > 0
    assert (out / "good_dff.csv").is_file() and (out / "good_cells.tif").is_file()
    assert sorted(p.name for p in out.glob("short*")) == []


def test_a_batch_where_no_file_can_be_used_exits_2(tmp_path, capsys):
    bad = [tmp_path / "missing.png", _bomb_png(tmp_path / "bomb.png"), tmp_path / "complex.tif"]
    tifffile.imwrite(bad[2], np.ones((16, 16), np.complex128))
    assert main(["analyze", "colonies", *map(str, bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "missing.png: no such file" in err and "bomb.png: image too large" in err
    assert "complex.tif: unsupported dtype complex128" in err and "no file could be analysed" in err
    assert not (tmp_path / "o" / "colonies_all.csv").exists()
    with pytest.raises(SystemExit) as no_input:
        main(["analyze", "colonies", "--out", str(tmp_path / "o")])
    assert no_input.value.code == 2


def test_a_broken_config_stops_the_command_with_2(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("blur_sigma: [2\n")
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(image)
    assert main(["analyze", "colonies", str(image), "--out", str(tmp_path / "o"), "--config", str(config)]) == 2
    assert f"{config}: not a readable YAML file" in capsys.readouterr().err


def test_same_named_files_from_two_folders_keep_their_own_outputs(tmp_path, capsys):
    files = []
    for folder, seed in (("A", 1), ("B", 2)):
        path = tmp_path / folder / "n0.tif"
        path.parent.mkdir()
        tifffile.imwrite(path, generate_nuclei_image("Control", (128, 128), seed=seed, n_nuclei=6).image)
        files.append(path)
    solo = tmp_path / "A" / "solo.tif"
    tifffile.imwrite(solo, tifffile.imread(files[0]))
    out = tmp_path / "out"
    # One group for all: the table's labels must still tell the two n0.tif apart (they are separate replicates).
    assert main(["analyze", "nuclei", *map(str, files), str(solo), "--group", "G", "--out", str(out)]) == 0
    first, second = pd.read_csv(out / "A" / "n0_nuclei.csv"), pd.read_csv(out / "B" / "n0_nuclei.csv")
    assert set(first["image"]) == {"A/n0.tif"} and set(second["image"]) == {"B/n0.tif"}
    assert not first[["area"]].equals(second[["area"]])  # two images, two results: nothing overwritten
    assert (out / "A" / "n0_nuclei.tif").is_file() and (out / "B" / "n0_nuclei.tif").is_file()
    assert (out / "solo_nuclei.csv").is_file() and not (out / "n0_nuclei.csv").exists()  # no clash: today's name
    table = pd.read_csv(out / "nuclei_all.csv")
    assert set(table["image"]) == {"A/n0.tif", "B/n0.tif", "solo.tif"}


def test_output_names_do_not_depend_on_the_order_of_the_inputs():
    files = [Path("run1/Control/x.tif"), Path("run2/Control/x.tif"), Path("run2/Control/x.png"), Path("y.tif")]
    names = input_names(files)
    assert names == input_names(files[::-1])
    assert len({name.stem.casefold() for name in names.values()}) == len(files)
    assert names[Path("y.tif")].stem == "y"
    assert names[Path("run1/Control/x.tif")].stem == "run1/Control/x"
    assert names[Path("run2/Control/x.png")].stem == "run2/Control/x.png"  # same folder, same stem: extension kept


def test_a_rerun_keeps_unchanged_files_and_redoes_those_whose_content_settings_or_group_changed(tmp_path, capsys):
    files = []
    for group, seed in (("Control", 1), ("Film", 2), ("Film", 3)):
        path = tmp_path / group / f"n{seed}.tif"
        path.parent.mkdir(exist_ok=True)
        tifffile.imwrite(path, generate_nuclei_image(group, (128, 128), seed=seed, n_nuclei=6).image)
        files.append(str(path))
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"")
    out = tmp_path / "out"
    assert main(["analyze", "nuclei", *files, str(bad), "--out", str(out)]) == 1
    first = (out / "nuclei_all.csv").read_text()
    summary = pd.read_csv(out / SUMMARY, dtype=str, keep_default_na=False).set_index("input")
    assert list(summary["status"]) == ["done", "done", "done", "failed"]
    assert summary.loc["bad.tif", "problem"] == f"{bad}: empty file" and summary.loc["bad.tif", "outputs"] == ""
    assert summary.loc["n1.tif", "outputs"] == "n1_nuclei.csv;n1_nuclei.tif"
    assert summary.loc["n1.tif", "group"] == "Control"
    assert int(summary.loc["n1.tif", "objects"]) == len(pd.read_csv(out / "n1_nuclei.csv"))
    capsys.readouterr()

    assert main(["analyze", "nuclei", *files, str(bad), "--out", str(out)]) == 1
    assert "3 of 4 files analysed (3 unchanged since the last run: kept)" in capsys.readouterr().out
    assert (out / "nuclei_all.csv").read_text() == first  # the kept files' tables, as analysed
    assert (out / "nuclei_statistics.csv").is_file()

    tifffile.imwrite(files[0], generate_nuclei_image("Control", (128, 128), seed=9, n_nuclei=6).image)
    assert main(["analyze", "nuclei", *files, "--out", str(out)]) == 0
    assert list(pd.read_csv(out / SUMMARY)["status"]) == ["done", "skipped", "skipped"]
    assert main(["analyze", "nuclei", *files, "--group", "G", "--out", str(out)]) == 0
    assert set(pd.read_csv(out / SUMMARY)["status"]) == {"done"}
    assert set(pd.read_csv(out / "nuclei_all.csv")["group"]) == {"G"}
    config = tmp_path / "c.yaml"
    config.write_text("nucleus_diameter_px: 12\n")
    assert main(["analyze", "nuclei", files[1], "--group", "G", "--config", str(config), "--out", str(out)]) == 0
    assert list(pd.read_csv(out / SUMMARY)["status"]) == ["done"]


def test_a_resumed_calcium_batch_gives_the_group_curves_of_a_fresh_one(tmp_path):
    files = []
    for group, seed in (("Control", 1), ("Film", 2)):
        path = tmp_path / group / f"m{seed}.tif"
        path.parent.mkdir()
        tifffile.imwrite(path, generate_calcium_movie(group, (64, 64), n_frames=24, n_cells=4, seed=seed).movie)
        files.append(str(path))
    assert main(["analyze", "calcium", *files, "--out", str(tmp_path / "fresh")]) == 0
    assert main(["analyze", "calcium", files[0], "--out", str(tmp_path / "resumed")]) == 0
    assert main(["analyze", "calcium", *files, "--out", str(tmp_path / "resumed")]) == 0
    assert list(pd.read_csv(tmp_path / "resumed" / SUMMARY)["status"]) == ["skipped", "done"]
    for name in ("calcium_group_curves.csv", "calcium_all.csv"):
        assert (tmp_path / "resumed" / name).read_text() == (tmp_path / "fresh" / name).read_text(), name
    assert set(pd.read_csv(tmp_path / "fresh" / "calcium_group_curves.csv")["group"]) == {"Control", "Film"}
