"""`cellops analyze` on users' files: every readable file analysed, every bad one named; `cellops models` on a real
MLflow store; `cellops predict` of a registered model on the batch engine."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
import test_lineage
import tifffile
from mlflow import MlflowClient
from PIL import Image

from cellops.synthetic.calcium import generate_calcium_movie
from cellops.synthetic.colonies import generate_colony_image
from cellops.batch import SUMMARY
from cellops.synthetic.nuclei import generate_nuclei_image
from cellops.unet.predict import load_for_inference, segment
from cellops.unet.specs import UNetServing
from models.unet import UNet
from tracking import tags
from tracking.registry import register_and_maybe_promote
from tracking.cli import main

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
    tifffile.imwrite(stack, np.zeros((3, 64, 64), np.uint8), photometric="minisblack")  # three grey pages, not RGB
    out = tmp_path / "out"
    code = main(["analyze", "colonies", str(good), str(rgb), str(sixteen), str(corrupt), str(empty), str(stack),
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "corrupt.png: not a readable image" in err
    assert "empty.tif: empty file" in err
    assert "stack.tif: the colony analysis reads one 2-D image, this file has axes ZYX (shape (3, 64, 64))" in err
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
    # Two images per group: a Welch test on replicate means has about one degree of freedom, so 0.05 is the bar.
    assert row.level == "replicate" and row.p_holm < 0.05
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


@pytest.fixture
def unet_registry(tmp_path):
    """A real MLflow SQLite store holding ``cellops-unet`` v1 (champion): a tiny untrained U-Net with its serving
    record, registered as the training pipeline registers one."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("predict", artifact_location=(tmp_path / "artifacts").as_uri())
    settings = UNetServing(tile_size=32, tile_overlap=8, batch_size=4, threshold=0.5)
    model = UNet(base_channels=4, depth=2).eval()
    with mlflow.start_run(experiment_id=experiment) as run:
        logged = mlflow.pytorch.log_model(model, name="model", serialization_format="pickle", pip_requirements=[])
        register_and_maybe_promote(MlflowClient(uri), logged.model_uri, "cellops-unet", {"dice": 0.5},
                                   {**tags.lineage_to_tags({"data_version": "aaa.dir", "git_commit": "c0ffee"}),
                                    **tags.inference_to_tags(settings.as_dict()), tags.MLFLOW_RUN_ID: run.info.run_id},
                                   promotion_metric="dice", alias="champion", min_improvement=0.0)
    yield uri, model, settings
    mlflow.set_tracking_uri(None)


def test_predict_runs_a_registered_model_on_the_batch_engine_and_a_rerun_keeps_what_is_done(unet_registry, tmp_path,
                                                                                            capsys):
    uri, model, settings = unet_registry
    volume = np.random.default_rng(0).integers(0, 255, (5, 40, 48), dtype=np.uint8)
    good, bad = tmp_path / "in" / "a.tif", tmp_path / "in" / "bad.tif"
    good.parent.mkdir()
    tifffile.imwrite(good, volume)
    bad.write_bytes(b"")
    out = tmp_path / "out"
    assert main(["predict", "unet", str(good), str(bad), "--out", str(out), "--slab", "2", "--tracking-uri", uri]) == 1
    captured = capsys.readouterr()
    assert "1 of 2 files predicted with cellops-unet v1" in captured.out and "threshold 0.5" in captured.out
    assert f"failed: {bad}" in captured.err and "some files failed (1 of 2)" in captured.err
    expected = segment(load_for_inference(model), volume, settings)
    assert np.array_equal(tifffile.imread(out / "a_mask.tif") > 0, expected)
    summary = pd.read_csv(out / SUMMARY, dtype=str, keep_default_na=False)
    assert list(summary["status"]) == ["done", "failed"] and summary["outputs"][0] == "a_mask.tif;a_mask.ome.zarr;a_slices.csv"
    assert summary["problem"][1].startswith(f"{bad}: ") and summary["shape"][0] == "5x40x48"

    assert main(["predict", "unet", str(good), "--out", str(out), "--tracking-uri", uri]) == 0
    assert "1 of 1 files predicted (1 unchanged since the last run: kept)" in capsys.readouterr().out
    assert list(pd.read_csv(out / SUMMARY)["status"]) == ["skipped"]

    assert main(["predict", "classifier", str(good), "--out", str(tmp_path / "c"), "--model",
                 "models:/cellops-unet@champion", "--tracking-uri", uri]) == 2
    assert "cellops-unet v1 is a unet model, not a classifier" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        main(["predict", "unet", str(good), "--out", str(tmp_path / "mask.tif"), "--tracking-uri", uri])
    assert refused.value.code == 2 and "is the output folder" in capsys.readouterr().err
