"""The data round trip through the DVC remote: `dvc push` from one clone, a fresh `git clone`, `dvc pull`, and the
files are the recorded version, byte for byte."""

from __future__ import annotations

import configparser
from pathlib import Path

from cellops.data_version import hash_folder
from cellops.lineage import require_recorded_data
from helpers import run_command

ROOT = Path(__file__).resolve().parents[2]


def test_the_default_remote_is_a_folder_outside_the_repository():
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    remote = config["core"]["remote"]
    url = config[f"'remote \"{remote}\"'"]["url"]
    assert not (ROOT / url).resolve().is_relative_to(ROOT)


def test_push_then_pull_in_a_fresh_clone_gives_the_recorded_data(project, tmp_path):
    root, env = project
    storage = tmp_path / "storage"
    # Each user may point the remote elsewhere without touching the committed config.
    run_command(["dvc", "remote", "add", "--local", "-f", "-d", "mine", str(storage)], root, env)
    run_command(["dvc", "push", "-q"], root, env)
    clone = tmp_path / "clone"
    run_command(["git", "clone", "-q", str(root), str(clone)], tmp_path, env)
    assert not (clone / "data").exists()
    run_command(["dvc", "remote", "add", "--local", "-f", "-d", "mine", str(storage)], clone, env)
    run_command(["dvc", "pull", "-q"], clone, env)
    assert hash_folder(clone / "data") == hash_folder(root / "data")
    assert require_recorded_data(clone / "data.dvc") == require_recorded_data(root / "data.dvc")
    run_command(["dvc", "remote", "remove", "--local", "mine"], root, env)
