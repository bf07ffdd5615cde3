"""`cellops analyze` on users' files: every readable file analysed, every bad one named; `cellops models` on a real
MLflow store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import test_lineage
import tifffile
from PIL import Image

from cellops.cli import main
from cellops.synthetic.calcium import generate_calcium_movie
from cellops.synthetic.colonies import generate_colony_image
from cellops.synthetic.nuclei import generate_nuclei_image

#: A real MLflow SQLite store holding ``cellops-test`` v1 (champion, dice 0.8) and v2 (dice 0.7, not promoted).
registry = test_lineage.registry


def test_colonies_batch_goes_on_past_bad_files(tmp_path, capsys):
    sample = generate_colony_image((384, 384), seed=1)
    good = tmp_path / "in" / "good.png"
    good.parent.mkdir()
    Image.fromarray(sample.image).save(good)
    rgb = tmp_path / "in" / "rgb.png"
    Image.fromarray(np.stack([sample.image] * 3, axis=-1)).save(rgb)  # converted to grey, not refused
    sixteen = tmp_path / "in" / "sixteen.tif"
    tifffile.imwrite(sixteen, sample.image.astype(np.uint16) * 257)
    corrupt = tmp_path / "in" / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    empty = tmp_path / "in" / "empty.tif"
    empty.write_bytes(b"")
    stack = tmp_path / "in" / "stack.tif"
    tifffile.imwrite(stack, np.zeros((3, 64, 64), np.uint8))
    out = tmp_path / "out"
    code = main(["analyze", "colonies", str(good), str(rgb), str(sixteen), str(corrupt), str(empty), str(stack),
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "corrupt.png: not a readable image" in err
    assert "empty.tif: empty file" in err
    assert "stack.tif: expected a 2-D grey-level or RGB image, got shape (3, 64, 64)" in err
    table = pd.read_csv(out / "colonies_all.csv")
    counts = table.groupby("image").size()
    assert counts["good.png"] == counts["rgb.png"] == counts["sixteen.tif"] == sample.labels.max()
    labels = tifffile.imread(out / "good_colonies.tif")
    assert labels.dtype == np.uint16 and labels.max() == sample.labels.max()
    assert (out / "good_overlay.png").is_file()


def test_nuclei_groups_from_folders_get_statistics(tmp_path):
    files = []
    for group in ("Control", "Film"):
        for i in range(2):
            path = tmp_path / group / f"n{i}.tif"
            path.parent.mkdir(exist_ok=True)
            tifffile.imwrite(path, generate_nuclei_image(group, (256, 256), seed=i, n_nuclei=15).image)
            files.append(str(path))
    assert main(["analyze", "nuclei", *files, "--out", str(tmp_path / "out")]) == 0
    stats = pd.read_csv(tmp_path / "out" / "nuclei_statistics.csv")
    row = stats[(stats.feature == "aspect_ratio_ellipse") & (stats.comparison == "Control vs Film")].iloc[0]
    assert row.p_holm < 0.01
    assert (tmp_path / "out" / "nuclei_by_group.png").is_file()


def test_calcium_refuses_a_single_image_and_reads_a_stack(tmp_path, capsys):
    movie = generate_calcium_movie("Film", (128, 128), n_frames=40, n_cells=6, seed=2)
    stack = tmp_path / "Film" / "movie.tif"
    stack.parent.mkdir()
    tifffile.imwrite(stack, movie.movie)
    single = tmp_path / "single.tif"
    tifffile.imwrite(single, movie.movie[0])
    code = main(["analyze", "calcium", str(stack), str(single), "--out", str(tmp_path / "out")])
    assert code == 1
    assert "single.tif: expected a time-lapse stack" in capsys.readouterr().err
    dff = pd.read_csv(tmp_path / "out" / "movie_dff.csv")
    assert dff.shape[0] == 40 and abs(dff.shape[1] - 1 - movie.labels.max()) <= 1
    assert (tmp_path / "out" / "calcium_group_curves.png").is_file()


def test_calcium_with_masks_drawn_elsewhere_keeps_their_ids(tmp_path, capsys):
    movie = generate_calcium_movie("Film", (128, 128), n_frames=40, n_cells=6, seed=2)
    stack = tmp_path / "movie.tif"
    tifffile.imwrite(stack, movie.movie)
    # As Fiji or Cellpose might save them: 16-bit, ids with gaps.
    masks = tmp_path / "movie_cp_masks.tif"
    tifffile.imwrite(masks, (movie.labels * 10).astype(np.uint16))
    assert main(["analyze", "calcium", str(stack), "--masks", str(masks), "--out", str(tmp_path / "out")]) == 0
    dff = pd.read_csv(tmp_path / "out" / "movie_dff.csv")
    assert list(dff.columns[1:]) == [f"cell_{10 * i}" for i in range(1, movie.labels.max() + 1)]
    truth = movie.traces[0]
    assert np.corrcoef(dff["cell_10"], truth)[0, 1] > 0.98

    wrong_size = tmp_path / "small.tif"
    tifffile.imwrite(wrong_size, np.ones((64, 64), np.uint16))
    intensity = tmp_path / "intensity.tif"
    tifffile.imwrite(intensity, np.full((128, 128), 0.5, np.float32))
    for bad, message in ((wrong_size, "masks are 64x64 but the movie's frames are 128x128"),
                         (intensity, "a label image holds whole numbers")):
        # The only movie cannot be analysed: nothing was done (exit code 2, not 1).
        assert main(["analyze", "calcium", str(stack), "--masks", str(bad), "--out", str(tmp_path / "bad")]) == 2
        assert message in capsys.readouterr().err
    assert main(["analyze", "calcium", str(stack), str(stack), "--masks", str(masks), "--out", str(tmp_path / "n")]) == 2
    assert "one label image per movie" in capsys.readouterr().err


def test_bad_config_key_is_named(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("blur_sigma: 2\nnot_a_parameter: 1\n")
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(image)
    assert main(["analyze", "colonies", str(image), "--out", str(tmp_path / "o"), "--config", str(config)]) == 2
    assert "not_a_parameter" in capsys.readouterr().err


def test_models_lists_every_version_with_its_champion(registry, tmp_path, monkeypatch, capsys):
    uri, client = registry
    # Away from the checkout: ZenML, asked for the versions' stages, would otherwise reset this checkout's .zen.
    monkeypatch.chdir(tmp_path)
    champion = str(client.get_model_version_by_alias("cellops-test", "champion").version)
    for family in ([], ["test"], ["cellops-test"]):
        assert main(["models", *family, "--tracking-uri", uri]) == 0
        out = capsys.readouterr().out.splitlines()
        lines = out[out.index("cellops-test"):]  # after what ZenML logs as it creates the test's own store
        assert lines[1].split()[:2] == ["version", "aliases"], lines
        # version, aliases, ZenML stage, promotion metric, its value, data version, git commit
        rows = {line.split()[0]: line.split() for line in lines[2:]}
        assert sorted(rows) == ["1", "2"], lines
        assert rows[champion][1] == "champion" and rows["2"][1] == "-"
        assert rows["1"][3:6] == ["dice", "0.8000", "aaa.dir"] and rows["2"][3:6] == ["dice", "0.7000", "bbb.dir"]
        assert rows["1"][6] == ("c0ffee" * 2)


def test_models_of_an_unknown_name_exits_2_naming_it_and_the_registered_ones(registry, tmp_path, monkeypatch,
                                                                             capsys):
    uri, _ = registry
    monkeypatch.chdir(tmp_path)
    for name in ("nope", "cellops-nope"):
        assert main(["models", name, "--tracking-uri", uri]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert f"cellops models: no registered model {name!r} in this store; registered models: cellops-test" \
            in captured.err
    missing = tmp_path / "elsewhere" / "mlflow.db"
    assert main(["models", "--tracking-uri", f"sqlite:///{missing}"]) == 2
    assert f"no MLflow store at {missing}" in capsys.readouterr().err
