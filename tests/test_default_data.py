"""`make data` must reproduce the committed data version bit for bit."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from cellops.cli import main
from cellops.telemetry import TELEMETRY_OFF

ROOT = Path(__file__).resolve().parents[1]


def test_generated_default_data_matches_the_committed_dvc_version(tmp_path, monkeypatch):
    shutil.copy(ROOT / "data.dvc", tmp_path / "data.dvc")
    assert main(["generate-data", "--params", str(ROOT / "params.yaml"), "--out", str(tmp_path / "data")]) == 0
    dvc = Path(sys.executable).parent / "dvc"
    env = {**os.environ, **TELEMETRY_OFF}
    subprocess.run([str(dvc), "init", "--no-scm", "-q"], cwd=tmp_path, check=True, env=env)
    status = subprocess.run([str(dvc), "status", "data.dvc"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert status.returncode == 0, status.stderr
    # Same content hash as the committed version; only the (empty) cache of this fresh repo lacks it.
    assert "modified" not in status.stdout and "deleted" not in status.stdout, status.stdout
    subprocess.run([str(dvc), "add", "-q", "data"], cwd=tmp_path, check=True, env=env)
    assert (tmp_path / "data.dvc").read_text() == (ROOT / "data.dvc").read_text()


def test_generate_data_never_overwrites_other_data(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("em: {shape: [2, 32, 32], seed: 0, voxel_nm: 8.0, mitochondria_fraction: 0.1}\n")
    assert main(["generate-data", "--params", str(params), "--out", str(tmp_path / "data")]) == 0
    own = tmp_path / "data" / "em" / "training.tif"
    own.write_bytes(b"a lab's own volume")
    assert main(["generate-data", "--params", str(params), "--out", str(tmp_path / "data")]) == 1
    assert "training.tif already exist" in capsys.readouterr().err
    assert own.read_bytes() == b"a lab's own volume"
    assert main(["generate-data", "--params", str(params), "--out", str(tmp_path / "data"), "--force"]) == 0
    assert own.read_bytes() != b"a lab's own volume"
