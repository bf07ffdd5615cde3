"""`cellops reproduce` end to end on the session's tiny U-Net: the version the training registered re-runs in a
temporary worktree at its commit, on its DVC data version, with the run config recorded at registration, against
stores of its own, and reproduces its metrics within tolerance; no worktree and no new version stay behind. A version
without lineage is refused naming what is missing. The robustness sweep was recorded with the version."""

from __future__ import annotations

import json
import subprocess

import pytest
from helpers import run_command
from mlflow import MlflowClient

from cellops.reproduction import Tolerances
from tracking import tags
from tracking.registry import resolve_version
from tracking.reproduce import PIPELINE, RUN_CONFIG, NotReproducible, reproduce
from tracking.robustness import load_robustness

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("unet_trained"), pytest.mark.minutes(2)]
NAME = "cellops-unet"


def _client(root) -> MlflowClient:
    return MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")


def _newest(client: MlflowClient) -> str:
    return str(max(int(v.version) for v in client.search_model_versions(f"name='{NAME}'")))


def test_the_tiny_unet_reproduces_within_tolerance(unet_trained):
    root, env, _ = unet_trained
    client = _client(root)
    version = _newest(client)
    record = resolve_version(client, NAME, version)
    # The fixture's training ran on its one commit, unchanged: the version names it, clean.
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    assert record["git_commit"] == head, record["git_commit"]
    assert record[PIPELINE] == "pipelines.unet.training_pipeline" and record[RUN_CONFIG]
    rows = load_robustness(client, NAME, version)
    assert {r["condition"] for r in rows} >= {"gaussian_noise 0.25", "gaussian_blur 1.5", "contrast 0.5"}
    assert {r["metric"] for r in rows} == {"foreground_iou", "dice"}
    assert all(r["clean_value"] == record["metrics"][r["metric"]] for r in rows)
    versions_before = len(client.search_model_versions(f"name='{NAME}'"))

    result = run_command(["cellops", "reproduce", f"{NAME}:{version}", "--json"], root, env, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["verdict"] == "reproduced", report["table"]
    compared = {m["metric"]: m for m in report["metrics"]}
    assert set(compared) == set(record["metrics"]) and "foreground_iou" in compared
    assert all(m["within"] for m in compared.values())
    assert report["commit"] == head and report["config_source"].startswith("recorded")
    # Nothing stays behind: no worktree, no version in the project's registry.
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=root, capture_output=True, text=True).stdout
    assert len(worktrees.strip().splitlines()) == 1, worktrees
    assert len(client.search_model_versions(f"name='{NAME}'")) == versions_before


def test_a_version_without_lineage_is_refused_naming_what_is_missing(project, tmp_path):
    root, env = project
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_registered_model(NAME)
    for lineage in ({"git_commit": "0123abc-dirty", "data_version": "d41d8cd98f00b204e9800998ecf8427e.dir+modified"},
                    {"git_commit": "f" * 40, "data_version": "d41d8cd98f00b204e9800998ecf8427e.dir"}):
        version = client.create_model_version(NAME, str(tmp_path / "nowhere"), tags={
            **tags.lineage_to_tags(lineage), **tags.metrics_to_tags({"foreground_iou": 0.5})}).version

    dirty = run_command(["cellops", "reproduce", f"{NAME}:1", "--tracking-uri", uri], root, env, check=False)
    assert dirty.returncode == 2, dirty.stdout + dirty.stderr
    for named in ("0123abc-dirty", "+modified", "no training configuration"):
        assert named in dirty.stderr, dirty.stderr
    # In-process (the command's path is the same): a commit the fixture's repository does not have, and its commit
    # with another data version than its data.dvc records.
    with pytest.raises(NotReproducible, match=f"git commit {'f' * 40}: this repository .* does not have it"):
        reproduce(uri, f"{NAME}:{version}", Tolerances(0.0, {}), root=root)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    other = client.create_model_version(NAME, str(tmp_path / "nowhere"), tags={**tags.lineage_to_tags(
        {"git_commit": head, "data_version": "0" * 32 + ".dir"}), "zenml_run_id": "gone"}).version
    with pytest.raises(NotReproducible, match=f"data version differs: it was trained on {'0' * 32}.dir, data.dvc at "
                                              f"commit {head} records [0-9a-f]{{32}}.dir"):
        reproduce(uri, f"{NAME}:{other}", Tolerances(0.0, {}), root=root)
