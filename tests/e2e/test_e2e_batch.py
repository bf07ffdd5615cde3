"""The batch inference pipeline end to end: the U-Net champion over a folder of new volumes (a TIFF and a zarr
array), masks equal to the champion's own prediction, each with its out-of-distribution verdict against the
champion's reference, lineage of model and inputs in MLflow, and a rerun that predicts only what is new; under the
refuse policy a volume unlike the training ones fails naming its score. An unknown model is refused naming what
exists."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
import zarr

from cellops.unet.predict import segment
from cellops.unet.specs import UNetServing
from helpers import run_command
from tracking import tags
from tracking.batch import resolve_batch_model, version_on_host

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("unet_trained"), pytest.mark.minutes(4)]
PIPELINE = ["zenml", "pipeline", "run", "pipelines.batch_inference.batch_inference_pipeline", "-c"]


def _config(root, tmp_path, model_uri: str, input_dir, output_dir, ood_policy: str = "flag") -> str:
    config = yaml.safe_load((root / "configs" / "batch_inference.yaml").read_text())
    config["steps"]["resolve_model"]["parameters"]["model_uri"] = model_uri
    config["steps"]["predict_folder"]["parameters"].update(input_dir=str(input_dir), output_dir=str(output_dir),
                                                           patterns=None, slab=3, ood_policy=ood_policy)
    path = tmp_path / f"batch_{len(list(tmp_path.glob('batch_*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_the_champion_predicts_a_folder_with_lineage_and_a_rerun_only_predicts_new_inputs(unet_trained, tmp_path):
    root, env, _ = unet_trained
    volume = tifffile.imread(root / "data" / "em" / "testing.tif")
    inputs, out = tmp_path / "new", tmp_path / "out"
    inputs.mkdir()
    tifffile.imwrite(inputs / "a.tif", volume)
    zarr.create_array(inputs / "b.zarr", shape=volume.shape, chunks=(2, 64, 64), dtype=volume.dtype)[:] = volume[::-1]
    config = _config(root, tmp_path, "models:/cellops-unet@champion", inputs, out)
    run_command([*PIPELINE, config], root, env)

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("cellops-unet", "champion")
    # The champion on the runtime this host chose for it (timed when the pipeline first loaded it, then cached).
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    model, choice = version_on_host(uri, resolve_batch_model(uri, f"models:/cellops-unet/{champion.version}"))
    assert choice.cached and choice.reason in ("fastest here", "no faster runtime")
    assert set(pd.read_csv(out / "batch_summary.csv")["runtime"]) == {choice.runtime}
    expected = segment(model, volume, UNetServing.from_dict(tags.inference_from_tags(champion.tags)))
    assert np.array_equal(tifffile.imread(out / "a_mask.tif") > 0, expected)
    assert 0 < expected.mean() < 0.5  # the champion segments something: an empty mask would pass every comparison
    assert np.array_equal(tifffile.imread(out / "b_mask.tif") > 0, segment(
        model, np.ascontiguousarray(volume[::-1]), UNetServing.from_dict(tags.inference_from_tags(champion.tags))))
    slices = pd.read_csv(out / "a_slices.csv")
    assert np.allclose(slices["foreground_fraction"], expected.mean(axis=(1, 2)), atol=1e-6)
    results = pd.read_csv(out / "batch_summary.csv")
    assert list(results["input"]) == ["a.tif", "b.zarr"] and set(results["status"]) == {"done"}
    # each volume's verdict against the champion's reference (the mean features of 8 of its 10 slices)
    assert np.allclose(results["ood_threshold"], float(champion.tags[tags.OOD_THRESHOLD]), atol=1e-5)
    assert results["ood_score"].notna().all() and set(results["in_distribution"]) <= {True, False}
    assert results["ood_reason"].str.contains("mean features of 8 evenly spaced slices").all()

    experiment = client.get_experiment_by_name("cellops-batch-inference")
    run = client.search_runs([experiment.experiment_id], order_by=["start_time DESC"], max_results=1)[0]
    assert run.data.tags["model.version"] == str(champion.version) and run.data.tags["model.name"] == "cellops-unet"
    assert run.data.tags["model.mlflow_run_id"] == champion.run_id and run.data.tags["model.runtime"] == choice.runtime
    assert len(run.data.tags["input.version"]) == 64 and run.data.metrics["inputs_done"] == 2
    assert run.data.metrics["inputs_in_distribution"] + run.data.metrics["inputs_out_of_distribution"] == 2

    tifffile.imwrite(inputs / "c.tif", volume[:4])
    run_command([*PIPELINE, config], root, env)
    results = pd.read_csv(out / "batch_summary.csv")
    assert dict(zip(results["input"], results["status"])) == {"a.tif": "skipped", "b.zarr": "skipped", "c.tif": "done"}
    assert tifffile.imread(out / "c_mask.tif").shape == (4, *volume.shape[1:])

    # refuse: a smooth ramp is nothing like EM; it fails naming its score and leaves no mask, the rest goes on
    ramp = np.linspace(0, 255, volume.shape[1])[None, :, None] * np.ones((4, 1, volume.shape[2]))
    tifffile.imwrite(inputs / "d.tif", ramp.astype(np.uint8))
    run_command([*PIPELINE, _config(root, tmp_path, "models:/cellops-unet@champion", inputs, out, "refuse")],
                root, env)
    results = pd.read_csv(out / "batch_summary.csv").set_index("input")
    assert results.loc["d.tif", "status"] == "failed" and not (out / "d_mask.tif").exists()
    assert "the image is out of distribution: its OOD score" in results.loc["d.tif", "problem"]
    run = client.search_runs([experiment.experiment_id], order_by=["start_time DESC"], max_results=1)[0]
    assert run.data.metrics["inputs_refused"] >= 1


def test_an_unknown_model_or_alias_is_refused_naming_what_exists(unet_trained):
    """What the pipeline's first step does before anything is read or written (its message ends the run)."""
    root, _, _ = unet_trained
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    with pytest.raises(LookupError, match="cellops-unet has no version with alias 'staging'; its aliases: champion"):
        resolve_batch_model(uri, "models:/cellops-unet@staging")
    with pytest.raises(LookupError, match="registry URI"):
        resolve_batch_model(uri, "cellops-unet")
    record = resolve_batch_model(uri, "models:/cellops-unet@champion")
    assert record["family"] == "unet" and record["model_uri"] == "models:/cellops-unet@champion"
