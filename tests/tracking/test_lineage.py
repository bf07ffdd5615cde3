"""Where results come from: the data version and git commit of a run, and `cellops lineage` reading a registered
version's chain back from a real MLflow store."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import tifffile
from mlflow import MlflowClient

from tracking.cli import main
from cellops.lineage import DataNotAsRecorded, dvc_data_version, git_commit, require_recorded_data
from tracking import tags
from tracking.registry import register_and_maybe_promote


def test_data_version_is_read_from_the_dvc_file(tmp_path):
    dvc_file = tmp_path / "data.dvc"
    dvc_file.write_text("outs:\n- md5: 0123abcd.dir\n  size: 10\n  nfiles: 4\n  hash: md5\n  path: data\n")
    assert dvc_data_version(dvc_file, check_workspace=False) == ("0123abcd.dir", 4)
    assert dvc_data_version(tmp_path / "missing.dvc") == ("untracked", -1)


@pytest.fixture
def tracked(tmp_path):
    """A git + DVC repository with ``data/`` (two TIFF stacks and a note) added to DVC: what `make data` leaves."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    run = lambda *args: subprocess.run(args, cwd=tmp_path, check=True, capture_output=True, env=env)  # noqa: E731
    run("git", "init", "-q")
    run("dvc", "init", "-q")
    (tmp_path / "data" / "em").mkdir(parents=True)
    for name in ("training.tif", "testing.tif"):
        tifffile.imwrite(tmp_path / "data" / "em" / name, np.arange(4 * 16 * 16, dtype=np.uint16).reshape(4, 16, 16))
    (tmp_path / "data" / "notes.txt").write_text("version 1\n")
    run("dvc", "add", "-q", "data")
    return tmp_path


def test_data_is_checked_file_by_file_against_the_recorded_version(tracked):
    dvc_file = tracked / "data.dvc"
    version = require_recorded_data(dvc_file)
    assert version.endswith(".dir") and dvc_data_version(dvc_file)[0] == version
    stack = tracked / "data" / "em" / "training.tif"
    # One byte changed with the modification time put back: invisible to `dvc status`, not to hashing.
    before = stack.stat()
    data = bytearray(stack.read_bytes())
    data[-1] ^= 0xFF
    stack.write_bytes(bytes(data))
    os.utime(stack, (before.st_atime, before.st_mtime))
    with pytest.raises(DataNotAsRecorded, match=r"(?s)not data version .*1 file\(s\) differ: .*training\.tif"):
        require_recorded_data(dvc_file)
    assert dvc_data_version(dvc_file)[0] == version + "+modified"
    # Deleted and added files are named too.
    (tracked / "data" / "em" / "testing.tif").unlink()
    (tracked / "data" / "extra.png").write_bytes(b"x")
    with pytest.raises(DataNotAsRecorded, match=r"(?s)missing: .*testing\.tif.*not expected: .*extra\.png"):
        require_recorded_data(dvc_file)


def test_git_commit_marks_dirty_trees(tmp_path):
    assert git_commit(tmp_path) == "unknown"
    run = lambda *args: subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    run("init", "-q")
    (tmp_path / "f.txt").write_text("a")
    run("add", "f.txt")
    run("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x")
    clean = git_commit(tmp_path)
    assert len(clean) == 40
    (tmp_path / "f.txt").write_text("b")
    assert git_commit(tmp_path) == clean + "-dirty"


@pytest.fixture
def registry(tmp_path):
    """A real MLflow SQLite store holding ``cellops-test`` v1 (champion) and v2 (worse, not promoted), each with the
    tags registration writes (tracking.registry.register_and_maybe_promote, as steps/registry.py calls it)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=mlflow.create_experiment(
        "lineage", artifact_location=(tmp_path / "artifacts").as_uri()))
    client = MlflowClient(uri)
    (tmp_path / "MLmodel").write_text("flavors: {}\n")  # a registered version needs an artifact, not a real model
    for dice, data_version in ((0.8, "aaa.dir"), (0.7, "bbb.dir")):
        with mlflow.start_run() as run:
            mlflow.log_artifact(str(tmp_path / "MLmodel"), artifact_path="model")
            register_and_maybe_promote(
                client, f"runs:/{run.info.run_id}/model", "cellops-test", {"dice": dice, "foreground_iou": dice - 0.1},
                {**tags.lineage_to_tags({"data_version": data_version, "git_commit": "c0ffee" * 6 + "abcd"}),
                 **tags.inference_to_tags({"tile_size": 64, "threshold": 0.5}),
                 tags.MLFLOW_RUN_ID: run.info.run_id, tags.ZENML_RUN_ID: f"zenml-{data_version}"},
                promotion_metric="dice", alias="champion", min_improvement=0.0,
                rescore=lambda champion: {"dice": 0.8, "foreground_iou": 0.7})
    yield uri, client
    mlflow.set_tracking_uri(None)


def test_lineage_prints_the_champions_chain_and_any_version_as_json(registry, capsys):
    uri, client = registry
    assert main(["lineage", "cellops-test", "--tracking-uri", uri]) == 0
    text = capsys.readouterr().out
    champion = client.get_model_version_by_alias("cellops-test", "champion")
    assert text.startswith("cellops-test version 1 (aliases: champion)")
    for expected in (f"MLflow run      {champion.run_id}", "ZenML run       zenml-aaa.dir",
                     "data version    aaa.dir (DVC hash of the training data)", "git commit      c0ffee",
                     "metrics at registration (promotion metric: dice):", "dice          0.8",
                     "tile_size     64", "threshold     0.5"):
        assert expected in text, expected
    assert main(["lineage", "cellops-test:2", "--json", "--tracking-uri", uri]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["model_version"] == "2" and record["aliases"] == [] and record["data_version"] == "bbb.dir"
    assert record["metrics"] == {"dice": 0.7, "foreground_iou": pytest.approx(0.6)}
    assert record["inference_settings"] == {"tile_size": 64, "threshold": 0.5}
    # Without a champion, the model alone means its latest version.
    client.delete_registered_model_alias("cellops-test", "champion")
    assert main(["lineage", "cellops-test", "--json", "--tracking-uri", uri]) == 0
    assert json.loads(capsys.readouterr().out)["model_version"] == "2"


def test_lineage_of_an_unknown_model_version_or_alias_exits_2_naming_what_exists(registry, tmp_path, capsys):
    uri, _ = registry
    for reference, message in (("cellops-nope", "no registered model 'cellops-nope' in this store; registered "
                                                "models: cellops-test"),
                               ("cellops-test:9", "cellops-test has no version 9; its versions: 1, 2"),
                               ("cellops-test@gold", "no version with alias 'gold'; its aliases: champion (v1)")):
        assert main(["lineage", reference, "--tracking-uri", uri]) == 2
        captured = capsys.readouterr()
        assert message in captured.err and captured.out == ""
    missing = tmp_path / "elsewhere" / "mlflow.db"
    assert main(["lineage", "cellops-test", "--tracking-uri", f"sqlite:///{missing}"]) == 2
    assert f"no MLflow store at {missing}" in capsys.readouterr().err
    assert not missing.exists()  # asking never creates an empty store
