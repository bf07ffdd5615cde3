"""The corrections loop end to end on a project of its own (its data versions and champions change): a tiny U-Net
champion -> `cellops review export` -> corrections saved as an annotator would -> refused corrections change
nothing -> `cellops corrections import --train` (GX, new DVC data version, the champion fine-tuned, the promotion
gate on the same test volume) -> lineage names the parent and the corrections -> importing again adds nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import yaml
from conftest import BIN, build_project
from helpers import run_command
from mlflow import MlflowClient

from cellops.review import ReviewSet
from cellops.synthetic.em import generate_em_volume

pytestmark = [pytest.mark.e2e, pytest.mark.minutes(6)]


@pytest.fixture(scope="module")
def loop_project(tmp_path_factory):
    root, env = build_project(tmp_path_factory)
    run_command(["zenml", "pipeline", "run", "pipelines.unet.training_pipeline", "-c", "tests/configs/unet_tiny.yaml"],
                root, env)
    # New images from the microscope: slices of another volume, with their exact masks (the annotator's answer).
    volume = generate_em_volume((3, 128, 128), seed=11)
    incoming = root / "incoming"
    incoming.mkdir()
    for z in range(3):
        tifffile.imwrite(incoming / f"slice{z}.tif", volume.image[z])
    return root, env, volume


def _dvc_md5(root) -> str:
    return yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]


def test_review_corrections_retraining_and_lineage(loop_project):
    root, env, volume = loop_project
    cellops = str(BIN / "cellops")
    client = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    champion = client.get_model_version_by_alias("cellops-unet", "champion")

    exported = run_command([cellops, "review", "export", "cellops-unet@champion", "incoming/slice0.tif",
                            "incoming/slice1.tif", "incoming/slice2.tif", "--out", "review"], root, env)
    assert f"3 images predicted by cellops-unet:{champion.version}" in exported.stdout
    review = ReviewSet.open(root / "review")
    uncertainties = [review.items[i].uncertainty for i in review.queue]
    assert uncertainties == sorted(uncertainties, reverse=True) and review.family == "unet"
    assert review.read_prediction("slice0").shape == (128, 128)

    # The annotator fixes the most uncertain slice and accepts the next one; the third stays unreviewed.
    first, second = review.queue[:2]
    truth = volume.mask[int(first.removeprefix("slice"))] > 0
    review.save_correction(first, status="corrected", annotator="ana", labels=truth)
    review.save_correction(second, status="accepted", annotator="ana")
    assert run_command([cellops, "review", "status", "review"], root, env).stdout.startswith("review: 2 of 3 reviewed")

    # A correction of another size is refused by name, and nothing changes.
    before = _dvc_md5(root)
    (root / "review" / "corrections" / "bad.json").write_text(json.dumps({"item": "nope"}))
    refused = run_command([cellops, "corrections", "import", "review"], root, env, check=False)
    assert refused.returncode == 2 and "corrections/bad.json" in refused.stderr and "not an image" in refused.stderr
    assert _dvc_md5(root) == before and not (root / "data" / "corrections").exists()
    (root / "review" / "corrections" / "bad.json").unlink()

    trained = run_command([cellops, "corrections", "import", "review", "--train", "--config",
                           "tests/configs/unet_tiny_corrections.yaml"], root, env)
    after = _dvc_md5(root)
    assert after != before  # a new data version
    store = json.loads((root / "data/corrections/cellops-unet/corrections.json").read_text())
    entries = {entry["status"]: entry for entry in store["entries"]}
    assert set(entries) == {"corrected", "accepted"} and entries["accepted"]["agreement"] == 1.0
    assert entries["corrected"]["model"] == f"cellops-unet:{champion.version}" and entries["corrected"]["annotator"] == "ana"
    assert entries["corrected"]["split"] == "train"

    newest = max(client.search_model_versions("name='cellops-unet'"), key=lambda v: int(v.version))
    assert int(newest.version) > int(champion.version), trained.stdout[-2000:]
    assert newest.tags["lineage.parent_model"] == f"cellops-unet:{champion.version}"
    assert newest.tags["lineage.data_version"] == after
    assert newest.tags["lineage.corrections"].startswith("2 corrected images")
    # The gate scored the champion on the candidate's (unchanged) test volume before deciding.
    run = client.get_run(newest.run_id)
    assert run.data.tags["registration_reason"] in ("beats the champion", "does not beat the champion")
    shown = run_command([cellops, "lineage", f"cellops-unet:{newest.version}"], root, env).stdout
    assert f"parent model    cellops-unet:{champion.version}" in shown and "2 corrected images" in shown

    again = run_command([cellops, "corrections", "import", "review"], root, env)
    assert "0 corrections added" in again.stdout and "2 already there" in again.stdout
    assert _dvc_md5(root) == after


def test_corrections_of_the_wrong_shape_or_model_are_refused_naming_the_file(loop_project, tmp_path):
    root, env, volume = loop_project
    cellops = str(BIN / "cellops")
    run_command([cellops, "review", "export", "cellops-unet", "incoming/slice2.tif", "--out", str(tmp_path / "r")],
                root, env)
    review = ReviewSet.open(tmp_path / "r")
    review.save_correction("slice2", status="corrected", annotator="bo", labels=volume.mask[2] > 0)
    from cellops.microscopy import write_ome_tiff

    write_ome_tiff(tmp_path / "r/corrections/slice2_labels.ome.tif", np.zeros((64, 64), np.uint8), axes="YX",
                   overwrite=True)
    before = _dvc_md5(root)
    refused = run_command([cellops, "corrections", "import", str(tmp_path / "r")], root, env, check=False)
    assert refused.returncode == 2 and "corrections/slice2.json" in refused.stderr and "shape (64, 64)" in refused.stderr
    record = json.loads((tmp_path / "r/corrections/slice2.json").read_text())
    record["model"]["version"] = "999"
    (tmp_path / "r/corrections/slice2.json").write_text(json.dumps(record))
    refused = run_command([cellops, "corrections", "import", str(tmp_path / "r")], root, env, check=False)
    assert refused.returncode == 2 and "was made on cellops-unet:999" in refused.stderr
    assert _dvc_md5(root) == before
